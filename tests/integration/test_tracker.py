"""Tracker.track() in-process against the emulator: a real client, real state files, a real pool.

The clock is a parameter: `Clock` runs on wall time plus an offset that a test moves forward
(upload URLs carry wall-clock times from the client, so the tracker's clock must not drift
backwards from them), which is how grace periods and upload ages are crossed without sleeping.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import API_KEY, TRACKED, marker, wait_for, write_config, write_folder

from watcher.cloud.backoff import Backoff
from watcher.cloud.client import NextmvClient
from watcher.cloud.lookup import RunLookup
from watcher.cloud.tracker import TOGETHER_BYTES, UPLOAD_TRIES, Limits, Tracker
from watcher.config import FilesConfig, FormatConfig, load_config
from watcher.errors import (
    ClaimLost,
    FolderChanged,
    LookupInconclusive,
    RejectedError,
    RetryLater,
    StateError,
    UploadExpired,
)
from watcher.fakecloud import FakeCloud
from watcher.runfolder.folder import RunFolder, inspect_folder
from watcher.runfolder.markers import JOURNAL, Intent, Journal, StateStore

APP = "app-1"
INPUT = b'{"stops": [1, 2, 3]}'
OUTPUT = b'{"solution": 7}'
FILES = FilesConfig()
TOKEN_LINE = re.compile(r"nextmv-watcher:([0-9a-f]{32})$")


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Env:
    cloud: FakeCloud
    client: NextmvClient
    store: StateStore
    spool: Path
    pool: ThreadPoolExecutor
    clock: Clock
    root: Path

    def tracker(self, *, grace_seconds: float = 30.0, progress: Callable[[int], None] | None = None,
                max_pages: int | Callable[[], int] = 2000) -> Tracker:
        lookup = RunLookup(self.client, clock=self.clock, max_pages=max_pages)
        return Tracker(self.client, self.store, self.spool, executor=self.pool, lookup=lookup,
                       clock=self.clock, limits=Limits(grace_seconds=grace_seconds), progress=progress)

    def folder(self, name: str = "run-1", files: dict[str, str | bytes] | None = None) -> RunFolder:
        path = write_folder(self.root, name, files or {"input.json": INPUT, "output.json": OUTPUT}, marker=None)
        return inspect_folder(path, FILES, FormatConfig())

    def count(self, endpoint: str) -> int:
        return sum(1 for r in self.cloud.requests() if r.endpoint == endpoint)


@pytest.fixture
def env(cloud: FakeCloud, tmp_path: Path, watched: Path) -> Iterator[Env]:
    client = NextmvClient(cloud.url, API_KEY, connect_timeout=2, read_timeout=5, backoff=Backoff(0.01, 0.05))
    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True)
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-upload")
    try:
        yield Env(cloud, client, StateStore(tmp_path / "state"), spool, pool, Clock(), watched)
    finally:
        pool.shutdown(wait=True)
        client.close()


def token_of(description: str) -> str:
    match = TOKEN_LINE.search(description)
    assert match is not None, description
    return match.group(1)


def test_happy_path_tracks_the_run_writes_the_marker_and_clears_the_journal(env: Env) -> None:
    run = env.folder()
    outcome = env.tracker().track(run, APP, None)

    [recorded] = env.cloud.runs(APP)
    assert outcome.run_id == recorded.run_id
    assert not outcome.adopted
    assert recorded.artifact("input").data == INPUT  # type: ignore[union-attr]
    assert recorded.artifact("output_upload_id").data == OUTPUT  # type: ignore[union-attr]
    assert recorded.body["name"] == "run-1"
    tracked = marker(run.path)
    assert tracked is not None
    assert tracked["run_id"] == recorded.run_id
    assert tracked["application_id"] == APP
    assert tracked["adopted"] is False
    assert tracked["token"] == token_of(recorded.body["description"])
    assert not (run.path / JOURNAL).exists()
    assert list(env.spool.iterdir()) == []


class NoUploadThreads(ThreadPoolExecutor):
    """An upload pool that refuses work: what the calling thread does alone."""

    def submit(self, *args: object, **kwargs: object) -> Future[Any]:  # type: ignore[override]
        raise AssertionError("an upload thread was asked for")


def tracker_without_threads(env: Env, limits: Limits | None = None) -> Tracker:
    return Tracker(env.client, env.store, env.spool, executor=NoUploadThreads(max_workers=1),
                   lookup=RunLookup(env.client, clock=env.clock), clock=env.clock, limits=limits or Limits())


def test_small_artifacts_are_uploaded_together_by_the_calling_thread(env: Env) -> None:
    """Both URLs asked for at once and both PUTs sent at once, from the tracking thread (no upload
    thread to hand the second artifact to); each artifact uploaded once."""
    run = env.folder()
    outcome = tracker_without_threads(env).track(run, APP, None)

    [recorded] = env.cloud.runs(APP)
    assert outcome.run_id == recorded.run_id
    assert recorded.artifact("input").data == INPUT  # type: ignore[union-attr]
    assert recorded.artifact("output_upload_id").data == OUTPUT  # type: ignore[union-attr]
    assert (env.count("uploadurl"), env.count("put")) == (2, 2)


@pytest.mark.parametrize(("endpoint", "status"), [("uploadurl", 503), ("put", 500), ("put", 403), ("uploadurl", None)])
def test_what_failed_among_uploads_made_together_is_done_the_usual_way(env: Env, endpoint: str,
                                                                        status: int | None) -> None:
    """One request of the pair fails (an answer, or a reset for None): that artifact gets a fresh URL
    and its PUT the usual way, on the same thread; the other is not uploaded twice."""
    env.cloud.fail_next(endpoint, status)
    run = env.folder()
    tracker_without_threads(env).track(run, APP, None)

    [recorded] = env.cloud.runs(APP)
    assert recorded.artifact("input").data == INPUT  # type: ignore[union-attr]
    assert recorded.artifact("output_upload_id").data == OUTPUT  # type: ignore[union-attr]
    assert (env.count("uploadurl"), env.count("put")) == (3, 3 if endpoint == "put" else 2)
    assert marker(run.path) is not None


def test_while_the_api_paces_the_calls_small_artifacts_go_in_threads_again(env: Env) -> None:
    """Once a rate limit was met (the daemon's pace is not unlimited), each call goes the moment it has
    its turn, from a thread of its own, as before."""
    paced = Limits.of(load_config(write_config(env.root.parent / "c.yaml", env.cloud.url, [(env.root, APP)],
                                               env.root.parent / "state")), paced=True)
    assert paced.together_bytes == 0
    with pytest.raises(AssertionError, match="an upload thread was asked for"):
        tracker_without_threads(env, paced).track(env.folder(), APP, None)


def test_large_artifacts_still_go_in_parallel_threads(env: Env) -> None:
    big = b'{"x": "' + b"y" * (TOGETHER_BYTES + 1) + b'"}'
    run = env.folder(files={"input.json": INPUT, "output.json": big})
    with pytest.raises(AssertionError, match="an upload thread was asked for"):
        tracker_without_threads(env).track(run, APP, None)
    env.tracker().track(run, APP, None)
    [recorded] = env.cloud.runs(APP)
    assert recorded.artifact("output_upload_id").data == big  # type: ignore[union-attr]


def test_the_instance_id_goes_on_the_query(env: Env) -> None:
    env.tracker().track(env.folder(), APP, "inst-9")
    [recorded] = env.cloud.runs(APP)
    assert recorded.query == {"instance_id": "inst-9"}


def test_an_expired_upload_url_is_replaced(env: Env) -> None:
    env.cloud.fail_next("put", 403)
    run = env.folder()
    outcome = env.tracker().track(run, APP, None)

    [recorded] = env.cloud.runs(APP)
    assert outcome.run_id == recorded.run_id
    assert recorded.artifact("input").data == INPUT  # type: ignore[union-attr]
    assert recorded.artifact("output_upload_id").data == OUTPUT  # type: ignore[union-attr]
    assert env.count("uploadurl") == 3      # two artifacts, one of them twice
    assert [r.status for r in env.cloud.requests() if r.endpoint == "put"].count(403) == 1
    assert marker(run.path) is not None


def test_urls_that_keep_expiring_give_up_after_a_few_and_post_nothing(env: Env) -> None:
    env.cloud.set_faults(url_lifetime_seconds=0)
    run = env.folder("run-1", {"input.json": INPUT})
    with pytest.raises(UploadExpired):
        env.tracker().track(run, APP, None)
    assert env.count("uploadurl") == UPLOAD_TRIES
    assert env.count("create_run") == 0
    assert env.store.journal(run.path).intents == []
    assert marker(run.path) is None


@pytest.mark.parametrize("status", [500, None], ids=["500", "reset"])
def test_a_post_answered_badly_after_the_run_was_recorded_is_adopted(env: Env, status: int | None) -> None:
    env.cloud.fail_next("create_run", status, after_processing=True)
    run = env.folder()
    outcome = env.tracker().track(run, APP, None)

    [recorded] = env.cloud.runs(APP)     # exactly one run: nothing was posted twice
    assert env.count("create_run") == 1
    assert outcome.adopted
    assert outcome.run_id == recorded.run_id
    tracked = marker(run.path)
    assert tracked is not None
    assert tracked["run_id"] == recorded.run_id
    assert tracked["adopted"] is True
    assert tracked["token"] == token_of(recorded.body["description"])
    assert not (run.path / JOURNAL).exists()


@pytest.mark.parametrize("status", [None, 503], ids=["reset", "503"])
def test_a_post_cut_off_before_processing_waits_for_the_grace_period_then_posts_once(
        env: Env, status: int | None) -> None:
    env.cloud.fail_next("create_run", status)
    tracker = env.tracker(grace_seconds=5)
    run = env.folder()

    with pytest.raises(RetryLater) as exc:
        tracker.track(run, APP, None)
    journal = env.store.journal(run.path)
    assert len(journal.intents) == 1
    assert exc.value.at == pytest.approx(journal.intents[0].created_at + 5)
    assert env.cloud.runs() == []

    # Within the grace period: looked up again, still not posted.
    with pytest.raises(RetryLater):
        tracker.track(run, APP, None)
    assert env.count("create_run") == 1
    assert env.store.journal(run.path).intents == journal.intents

    env.clock.advance(6)
    outcome = tracker.track(run, APP, None)
    [recorded] = env.cloud.runs(APP)
    assert env.count("create_run") == 2
    assert outcome.run_id == recorded.run_id
    assert not outcome.adopted
    assert token_of(recorded.body["description"]) != journal.intents[0].token
    assert marker(run.path)["run_id"] == recorded.run_id  # type: ignore[index]
    assert not (run.path / JOURNAL).exists()


def test_a_journal_left_by_a_crash_is_adopted_without_posting_again(env: Env) -> None:
    run = env.folder()
    before = env.clock()
    first = env.tracker().track(run, APP, None)
    tracked = marker(run.path)
    assert tracked is not None
    # The crash: the POST went out and the run exists, but neither the marker nor the journal's removal
    # reached the disk.
    (run.path / TRACKED).unlink()
    env.store.save_journal(run.path, Journal(intents=[Intent(token=tracked["token"], created_at=before)]))
    requests_before = {e: env.count(e) for e in ("uploadurl", "put", "create_run")}

    outcome = env.tracker().track(run, APP, None)
    assert outcome.adopted
    assert outcome.run_id == first.run_id
    assert len(env.cloud.runs()) == 1
    assert {e: env.count(e) for e in requests_before} == requests_before
    assert marker(run.path)["adopted"] is True  # type: ignore[index]
    assert not (run.path / JOURNAL).exists()


def _journal_with_uploads(env: Env, tracker: Tracker, run: RunFolder) -> Journal:
    """Leave a journal holding finished uploads and one open intent (a POST cut off before processing)."""
    env.cloud.fail_next("create_run", None)
    with pytest.raises(RetryLater):
        tracker.track(run, APP, None)
    journal = env.store.journal(run.path)
    assert set(journal.uploads) == {"input", "output"}
    return journal


def test_fresh_journaled_uploads_with_unchanged_files_are_reused(env: Env) -> None:
    tracker = env.tracker(grace_seconds=1)
    run = env.folder()
    journal = _journal_with_uploads(env, tracker, run)
    uploads_before = (env.count("uploadurl"), env.count("put"))

    env.clock.advance(2)
    tracker.track(run, APP, None)
    assert (env.count("uploadurl"), env.count("put")) == uploads_before
    [recorded] = env.cloud.runs(APP)
    assert recorded.body["upload_id"] == journal.uploads["input"].upload_id
    assert recorded.body["result"]["output_upload_id"] == journal.uploads["output"].upload_id


def test_journaled_uploads_older_than_twelve_minutes_are_redone(env: Env) -> None:
    tracker = env.tracker(grace_seconds=1)
    run = env.folder()
    journal = _journal_with_uploads(env, tracker, run)
    uploads_before = env.count("uploadurl")

    env.clock.advance(12 * 60 + 1)
    tracker.track(run, APP, None)
    assert env.count("uploadurl") == uploads_before + 2
    [recorded] = env.cloud.runs(APP)
    assert recorded.body["upload_id"] != journal.uploads["input"].upload_id
    assert recorded.artifact("input").data == INPUT  # type: ignore[union-attr]


def test_only_the_artifact_whose_file_changed_is_uploaded_again(env: Env) -> None:
    tracker = env.tracker(grace_seconds=1)
    run = env.folder()
    journal = _journal_with_uploads(env, tracker, run)
    uploads_before = env.count("uploadurl")

    (run.path / "output.json").write_bytes(b'{"solution": 8, "changed": true}')
    run = inspect_folder(run.path, FILES, FormatConfig())
    env.clock.advance(2)
    tracker.track(run, APP, None)
    assert env.count("uploadurl") == uploads_before + 1
    [recorded] = env.cloud.runs(APP)
    assert recorded.body["upload_id"] == journal.uploads["input"].upload_id
    assert recorded.body["result"]["output_upload_id"] != journal.uploads["output"].upload_id
    assert recorded.artifact("output_upload_id").data == b'{"solution": 8, "changed": true}'  # type: ignore[union-attr]


def test_a_file_changed_during_upload_raises_folder_changed_and_posts_nothing(env: Env) -> None:
    run = env.folder()
    target = run.path / "input.json"
    touched: list[bool] = []

    def touch_once(nbytes: int) -> None:
        # Called from the upload while bytes stream: the producer rewrites a file under us.
        if not touched:
            touched.append(True)
            st = target.stat()
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    with pytest.raises(FolderChanged) as exc:
        env.tracker(progress=touch_once).track(run, APP, None)
    # Seen either when the file is opened for its own upload or when the folder is checked after them.
    assert re.fullmatch(r"input.json changed (during upload|since it was inspected)", exc.value.problem)
    assert touched
    assert env.count("create_run") == 0
    assert env.store.journal(run.path).intents == []
    assert marker(run.path) is None


def test_a_lost_claim_stops_before_the_post(env: Env) -> None:
    def lost() -> None:
        raise ClaimLost("taken over")

    run = env.folder()
    with pytest.raises(ClaimLost):
        env.tracker().track(run, APP, None, lost)
    assert env.count("create_run") == 0
    assert env.store.journal(run.path).intents == []
    assert marker(run.path) is None


@pytest.mark.parametrize("status", [400, 409, 413, 422])
def test_a_rejected_post_raises_and_drops_the_intent(env: Env, status: int) -> None:
    env.cloud.fail_next("create_run", status)
    run = env.folder()
    with pytest.raises(RejectedError) as exc:
        env.tracker().track(run, APP, None)
    assert exc.value.status == status
    assert env.count("create_run") == 1
    assert env.cloud.runs() == []
    assert env.store.journal(run.path).intents == []
    assert marker(run.path) is None
    assert json.loads((run.path / JOURNAL).read_text())["intents"] == []


def test_a_large_upload_is_journaled_when_it_finishes_and_survives_a_changed_folder(env: Env) -> None:
    big = b'{"pad": "' + b"x" * (1 << 20) + b'"}'     # over the 1 MiB journaling threshold
    run = env.folder("run-big", {"input.json": big, "output.json": OUTPUT})
    output = run.path / "output.json"
    touched: list[bool] = []

    def touch_output_once(nbytes: int) -> None:
        if not touched:
            touched.append(True)
            st = output.stat()
            os.utime(output, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    tracker = env.tracker(progress=touch_output_once)
    with pytest.raises(FolderChanged):
        tracker.track(run, APP, None)
    journal = env.store.journal(run.path)
    assert "input" in journal.uploads, "the large upload was not journaled when it finished"
    assert env.count("create_run") == 0
    uploads_before = env.count("uploadurl")

    run = inspect_folder(run.path, FILES, FormatConfig())
    env.tracker().track(run, APP, None)
    assert env.count("uploadurl") == uploads_before + 1      # the changed output only
    [recorded] = env.cloud.runs(APP)
    assert recorded.body["upload_id"] == journal.uploads["input"].upload_id
    assert recorded.artifact("input").data == big  # type: ignore[union-attr]


def test_a_run_that_shows_up_late_in_the_listing_is_adopted_not_posted_again(env: Env) -> None:
    env.cloud.set_faults(list_lag_seconds=0.5)
    env.cloud.fail_next("create_run", None, after_processing=True)
    tracker = env.tracker(grace_seconds=30)
    run = env.folder()
    with pytest.raises(RetryLater):
        tracker.track(run, APP, None)      # the run exists but is not listed yet

    def track_or_wait() -> bool:
        try:
            tracker.track(run, APP, None)
        except RetryLater:
            return False
        return True

    wait_for(track_or_wait, 10, "the run to be listed and adopted")
    [recorded] = env.cloud.runs(APP)
    assert env.count("create_run") == 1
    tracked = marker(run.path)
    assert tracked is not None
    assert tracked["run_id"] == recorded.run_id
    assert tracked["adopted"] is True


# --- the API's limits, and look-ups that cannot see the whole list ----------------------------------------


def test_a_long_name_and_description_are_cut_the_token_kept_and_a_lost_answer_adopted(env: Env) -> None:
    """A 200-character folder name and a 300-character description: the POST fits 128/256 characters with
    the token line whole, so the run a lost answer left behind is found by its token, not posted again."""
    env.cloud.fail_next("create_run", None, after_processing=True)
    run = env.folder("f" * 200, {"input.json": INPUT, "output.json": OUTPUT,
                                 "status.json": json.dumps({"description": "d" * 300})})
    with structlog.testing.capture_logs() as events:
        outcome = env.tracker().track(run, APP, None)

    [recorded] = env.cloud.runs(APP)
    assert env.count("create_run") == 1
    assert outcome.adopted and outcome.run_id == recorded.run_id
    assert recorded.body["name"] == "f" * 128
    description = recorded.body["description"]
    assert len(description) <= 256
    assert description.startswith("d" * 207 + "\n\n")
    tracked = marker(run.path)
    assert tracked is not None
    assert tracked["token"] == token_of(description)
    assert tracked["name"] == "f" * 128, "the marker records the name sent"
    [cut] = [e for e in events if e["event"] == "run_name_truncated"]
    assert (cut["log_level"], cut["folder"], cut["length"], cut["limit"]) == ("warning", str(run.path), 200, 128)
    assert [e["length"] for e in events if e["event"] == "run_description_truncated"] == [300]


def seed_runs(env: Env, count: int) -> None:
    """`count` runs in the application that are none of ours (as many pages' worth as it takes)."""
    for i in range(count):
        target = env.client.new_upload(APP)
        env.client.put_file(target, lambda: io.BytesIO(b"{}"), 2)
        env.client.create_run(APP, {"upload_id": target.upload_id, "name": f"someone else's {i}",
                                    "result": {"status": "failed"}}, None)


def test_an_inconclusive_look_up_never_posts_again_even_past_the_grace_period(env: Env) -> None:
    """The run list is longer than the look-up may read: it cannot tell whether the run exists, so it
    never posts again, however long ago the intent was; a look-up that sees the whole list can."""
    seed_runs(env, 60)   # two pages, all within the intent's clock-skew margin
    seeded = env.count("create_run")
    limit = [1]
    tracker = env.tracker(grace_seconds=5, max_pages=lambda: limit[0])
    env.cloud.fail_next("create_run", None)   # cut off before processing: no run was created
    run = env.folder()

    with pytest.raises(LookupInconclusive) as exc:
        tracker.track(run, APP, None)
    assert exc.value.cause == "page_limit"
    [intent] = env.store.journal(run.path).intents
    for _ in range(3):
        env.clock.advance(3600)   # far past the grace period
        with pytest.raises(LookupInconclusive):
            tracker.track(run, APP, None)
    assert env.count("create_run") == seeded + 1
    assert env.store.journal(run.path).intents == [intent]
    assert marker(run.path) is None

    limit[0] = 2   # now the whole list is seen, and the run is not in it: posted again, once
    outcome = tracker.track(run, APP, None)
    assert env.count("create_run") == seeded + 2
    assert not outcome.adopted
    assert [r.run_id for r in env.cloud.runs(APP)][-1] == outcome.run_id
    assert len(env.cloud.runs(APP)) == 61


def test_a_page_the_api_fails_to_serve_makes_the_look_up_inconclusive_never_a_new_post(env: Env) -> None:
    env.cloud.fail_next("create_run", None)
    tracker = env.tracker(grace_seconds=0)
    run = env.folder()
    env.cloud.fail_next("list_runs", 503, count=40)   # more than the client's retries of a request
    with pytest.raises(LookupInconclusive) as exc:
        tracker.track(run, APP, None)
    assert exc.value.cause == "page_error"
    assert "HTTP 503" in str(exc.value)
    env.clock.advance(600)
    with pytest.raises(LookupInconclusive):
        tracker.track(run, APP, None)
    assert env.count("create_run") == 1
    assert env.cloud.runs() == []


@pytest.mark.parametrize("declared", [5, 50])
def test_a_put_body_of_another_length_than_declared_is_a_changed_folder_over_http(env: Env, tmp_path: Path,
                                                                                 declared: int) -> None:
    """Over the real HTTP stack (h11 would raise its own LocalProtocolError "Too much data" / "Too little
    data for declared Content-Length", a traceback in the daemon's log): the folder changed, retried later."""
    path = tmp_path / "spooled.tar.gz"
    path.write_bytes(b"x" * 20)
    target = env.client.new_upload("app-1")

    with pytest.raises(FolderChanged, match="while being uploaded"):
        env.client.put_file(target, lambda: path.open("rb"), declared, folder=str(path.parent), label="input")

    assert env.cloud.upload(target.upload_id) is None, "nothing stored"


def test_an_intent_that_cannot_be_written_is_not_kept_and_nothing_is_posted(env: Env, tmp_path: Path) -> None:
    class FullWhenPosting(StateStore):
        def save_journal(self, folder: object, journal: Journal) -> None:
            if journal.intents:
                raise StateError(f"{folder}: cannot write {JOURNAL}: No space left on device")
            super().save_journal(folder, journal)  # type: ignore[arg-type]

    env.store = FullWhenPosting(tmp_path / "state")
    run = env.folder()
    journal = Journal()

    with pytest.raises(StateError, match="No space left on device"):
        env.tracker().track(run, "app-1", None, journal=journal)

    assert journal.intents == [], "a worker saving this journal later must not find an intent never posted"
    assert env.count("create_run") == 0
