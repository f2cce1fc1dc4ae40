"""The real Nextmv API and S3 as they are (issue 10): the real daemon process against the emulator
switched to each behaviour the real services show beyond the happy path (S3's passing faults, a list
oldest first, name and description limits, 404s for unknown instances, the 500 MB upload limit)."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import API_KEY, FAILED, Daemon, marker, wait_for, write_config, write_folder

from watcher.cloud.client import NextmvClient
from watcher.config import RUN_TOKEN_PREFIX
from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.e2e
FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1, 2]}', "output.json": b'{"value": 3}',
                                 "logs.txt": b"solved\n"}
MakeDaemon = Callable[..., Daemon]
TOKEN_LINE = re.compile(r"\n\n" + re.escape(RUN_TOKEN_PREFIX) + r"[0-9a-f]{32}$")


def exactly_once(cloud: FakeCloud, folders: list[Path]) -> None:
    """Every folder tracked, each by exactly one run at the emulator, the one its marker names."""
    runs = cloud.runs()
    by_name: dict[str, list[str]] = {}
    for r in runs:
        by_name.setdefault(r.body["name"], []).append(r.run_id)
    dupes = sum(len(ids) - 1 for ids in by_name.values())
    lost = [f.name for f in folders if f.name not in by_name]
    assert (dupes, lost) == (0, []), f"dupes={dupes} lost={lost}"
    for f in folders:
        tracked = marker(f)
        assert tracked is not None and [tracked["run_id"]] == by_name[f.name], f.name


def events(daemon: Daemon, name: str) -> list[dict[str, object]]:
    return [e for e in daemon.events() if e.get("event") == name]


def test_s3s_passing_faults_never_fail_a_folder(daemon_factory: MakeDaemon, cloud: FakeCloud, watched: Path) -> None:
    cloud.set_faults(put_request_timeout_rate=0.3, put_slow_down_rate=0.1, seed=10)
    daemon = daemon_factory([(watched, "app-1")]).start()
    try:
        daemon.wait_ready()
        folders = [write_folder(watched, f"run-{i:02}", FILES) for i in range(20)]
        wait_for(lambda: all(marker(f) or marker(f, FAILED) for f in folders), 120, "every folder finished")
    finally:
        assert daemon.stop() == 0
    assert [f.name for f in folders if marker(f, FAILED)] == []
    exactly_once(cloud, folders)
    codes = {e.get("code") for e in events(daemon, "upload_retrying")}
    assert {"RequestTimeout", "SlowDown"} <= codes, codes
    assert cloud.stats()["s3_codes"].keys() >= {"RequestTimeout", "SlowDown"}
    # Requests as the docs show them: JSON on every API POST, nothing but the bytes on presigned PUTs.
    requests = cloud.requests()
    posts = [r for r in requests if r.endpoint in ("uploadurl", "create_run")]
    puts = [r for r in requests if r.endpoint == "put"]
    assert posts and all(r.content_type == "application/json" and r.has_authorization for r in posts)
    assert puts and all(r.content_type is None and not r.has_authorization for r in puts)


def older_runs(cloud: FakeCloud, application_id: str, n: int) -> None:
    """`n` runs created before the daemon starts, as another producer's history."""
    client = NextmvClient(cloud.url, API_KEY)
    try:
        for i in range(n):
            target = client.new_upload(application_id)
            client.put_file(target, lambda: io.BytesIO(b"{}"), 2)
            client.create_run(application_id, {"upload_id": target.upload_id, "name": f"older-{i}",
                                               "result": {"status": "succeeded"}}, None)
    finally:
        client.close()


def test_a_list_oldest_first_with_lost_post_answers_makes_no_duplicate(daemon_factory: MakeDaemon, cloud: FakeCloud,
                                                                        watched: Path) -> None:
    cloud.set_behaviour(list_order="oldest")
    older_runs(cloud, "app-1", 200)
    # Every POST is recorded at once but answered after the client gave up waiting: each run must be
    # found by its token at the end of a list that is oldest first.
    cloud.set_faults(post_delay_seconds=2.0)
    daemon = daemon_factory([(watched, "app-1")], api={"url": cloud.url, "read_timeout_seconds": 1,
                                                       "connect_timeout_seconds": 2}).start()
    try:
        daemon.wait_ready()
        folders = [write_folder(watched, f"run-{i}", FILES) for i in range(6)]
        wait_for(lambda: all(marker(f) or marker(f, FAILED) for f in folders), 120, "every folder finished")
    finally:
        assert daemon.stop() == 0
    assert [f.name for f in folders if marker(f, FAILED)] == []
    exactly_once(cloud, folders)
    assert len(events(daemon, "run_adopted")) == len(folders), "every run was adopted, none re-posted"


def test_a_long_name_and_description_fit_the_limits_and_keep_the_token(daemon_factory: MakeDaemon, cloud: FakeCloud,
                                                                        watched: Path) -> None:
    name = "n" * 200
    files = {**FILES, "status.json": '{"description": "' + "d" * 300 + '"}'}
    # The answer to the first POST is lost after the run was created (the emulator refuses names over
    # 128 and descriptions over 256 characters by default).
    cloud.fail_next("create_run", None, after_processing=True)
    daemon = daemon_factory([(watched, "app-1")]).start()
    try:
        daemon.wait_ready()
        folder = write_folder(watched, name, files)
        wait_for(lambda: marker(folder) or marker(folder, FAILED), 60, "the folder finished")
    finally:
        assert daemon.stop() == 0
    assert marker(folder, FAILED) is None
    (run,) = cloud.runs()
    assert run.body["name"] == "n" * 128
    assert len(run.body["description"]) == 256 and run.body["description"].startswith("d" * 207)
    assert TOKEN_LINE.search(run.body["description"]), "the token line is whole, last"
    tracked = marker(folder)
    assert tracked is not None and tracked["run_id"] == run.run_id
    assert [e.get("run_id") for e in events(daemon, "run_adopted")] == [run.run_id], "adopted, not re-posted"
    assert [e.get("length") for e in events(daemon, "run_name_truncated")] == [200]


def test_an_unknown_instance_fails_its_folder_only(daemon_factory: MakeDaemon, cloud: FakeCloud, watched: Path,
                                                   tmp_path: Path) -> None:
    cloud.set_behaviour(instances=["prod"])
    daemon = daemon_factory([(watched, "app-1")]).start()
    try:
        daemon.wait_ready()
        bad = write_folder(watched, "bad-instance", {**FILES, "status.json": '{"instance_id": "nope"}'})
        good = [write_folder(watched, f"run-{i}", {**FILES, "status.json": '{"instance_id": "prod"}'})
                for i in range(10)]
        wait_for(lambda: all(marker(f) for f in good) and marker(bad, FAILED), 60, "all finished")
    finally:
        assert daemon.stop() == 0
    failed = marker(bad, FAILED)
    assert failed is not None and failed["reason"] == "rejected"
    assert "instance not found" in failed["error"] and "nope" in failed["error"]
    exactly_once(cloud, good)
    assert events(daemon, "application_paused") == [] and events(daemon, "api_paused") == []


def test_a_missing_application_pauses_only_its_own_folders(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "runs", tmp_path / "ghost-runs"
    mine.mkdir()
    theirs.mkdir()
    with FakeCloud(api_keys=[API_KEY], applications=["app-1"]) as cloud:
        config = write_config(tmp_path / "config.yaml", cloud.url, [(mine, "app-1"), (theirs, "ghost")],
                              tmp_path / "state")
        daemon = Daemon(config, tmp_path / "daemon.log").start()
        try:
            daemon.wait_ready()
            orphans = [write_folder(theirs, f"run-{i}", FILES) for i in range(3)]
            folders = [write_folder(mine, f"run-{i}", FILES) for i in range(5)]
            wait_for(lambda: all(marker(f) for f in folders), 60, "app-1's folders tracked")
            wait_for(lambda: events(daemon, "application_paused"), 20, "the ghost application paused")
        finally:
            assert daemon.stop() == 0
        exactly_once(cloud, folders)
    assert all(marker(f) is None and marker(f, FAILED) is None for f in orphans), "parked, not failed"
    assert [e.get("application_id") for e in events(daemon, "application_paused")] == ["ghost"]
    assert events(daemon, "api_paused") == []


def test_an_artifact_over_the_upload_limit_fails_at_once_uploading_nothing(daemon_factory: MakeDaemon, cloud: FakeCloud,
                                                                            watched: Path) -> None:
    daemon = daemon_factory([(watched, "app-1")]).start()
    try:
        daemon.wait_ready()
        big = watched / ".tmp-big"
        big.mkdir()
        (big / "input.json").write_bytes(b"{}")
        with (big / "output.json").open("wb") as f:
            f.truncate(501_000_000)   # sparse: 501 MB to the daemon, nothing on disk
        (big / "DONE").touch()
        big = big.rename(watched / "big")
        others = [write_folder(watched, f"run-{i}", FILES) for i in range(3)]
        wait_for(lambda: marker(big, FAILED) and all(marker(f) for f in others), 60, "all finished")
    finally:
        assert daemon.stop() == 0
    failed = marker(big, FAILED)
    assert failed is not None and failed["reason"] == "invalid" and failed["attempts"] == 1
    assert "501000000 bytes" in failed["error"].replace(",", "") and "500000000" in failed["error"].replace(",", "")
    exactly_once(cloud, others)
    assert all(u.size < 1000 for u in cloud.uploads()), "none of the big folder's bytes were uploaded"
    assert len(cloud.uploads()) == 3 * len(others), "not even the big folder's input"
