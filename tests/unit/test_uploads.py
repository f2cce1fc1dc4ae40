"""The tracker's upload path against S3 as it behaves (issue 10, items 1, 4, 5, 6): a real client over
httpx.MockTransport answering presigned PUTs with S3's own error bodies, real folders, state and spool
files, and a cancel event that records waits instead of sleeping."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import s3bodies
import structlog
from helpers import marker, write_folder

from watcher.cloud.backoff import Backoff
from watcher.cloud.client import NextmvClient
from watcher.cloud.lookup import RunLookup
from watcher.cloud.tracker import UPLOAD_TRIES, Limits, Tracker
from watcher.config import FilesConfig, FormatConfig
from watcher.errors import InvalidFolder, RejectedError, UploadFailed, UploadRefused
from watcher.runfolder.folder import RunFolder, inspect_folder
from watcher.runfolder.markers import StateStore

BASE = "https://api.test"
KEY = "sk-uploads-test-key"
APP = "app-1"
FILES = {"input.json": b'{"stops": [1, 2, 3]}', "output.json": b'{"solution": 7}'}


class RecordingEvent(threading.Event):
    """The client's cancel event: records each wait instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        return self.is_set()


class Cloud:
    """The API's upload-URL, runs and application endpoints, and the storage's presigned PUT. PUTs take
    their answers from `put_answers` (then 200); `runs_answer` answers `POST .../runs` when set."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[httpx.Request] = []
        self.put_answers: list[httpx.Response] = []
        self.runs_answer: httpx.Response | None = None
        self.stored: dict[str, bytes] = {}
        self.posted: list[dict[str, object]] = []
        self.issued = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        with self.lock:
            self.requests.append(request)
            if request.method == "PUT":
                if self.put_answers:
                    return self.put_answers.pop(0)
                self.stored[request.url.path.rsplit("/", 1)[-1]] = body
                return httpx.Response(200)
            if request.url.path.endswith("/runs/uploadurl"):
                self.issued += 1
                upload = f"u{self.issued}"
                url = (f"https://bucket.test/uploads/{upload}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                       f"&X-Amz-Security-Token={s3bodies.SECURITY_TOKEN}&X-Amz-Signature=sig{self.issued}")
                return httpx.Response(200, json={"upload_id": upload, "upload_url": url})
            if request.url.path.endswith("/runs"):
                if self.runs_answer is not None:
                    return self.runs_answer
                self.posted.append(json.loads(body))
                return httpx.Response(200, json={"run_id": f"run-{len(self.posted)}"})
            return httpx.Response(200, json={"id": APP})

    def count(self, method: str, suffix: str = "") -> int:
        return sum(1 for r in self.requests if r.method == method and r.url.path.endswith(suffix))

    def put_urls(self) -> list[str]:
        return [str(r.url) for r in self.requests if r.method == "PUT"]


@pytest.fixture
def cloud() -> Cloud:
    return Cloud()


@pytest.fixture
def cancel() -> RecordingEvent:
    return RecordingEvent()


@pytest.fixture
def client(cloud: Cloud, cancel: RecordingEvent) -> Iterator[NextmvClient]:
    c = NextmvClient(BASE, KEY, transport=httpx.MockTransport(cloud), backoff=Backoff(0.5, 10.0), cancel=cancel)
    yield c
    c.close()


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as p:
        yield p


def tracker(client: NextmvClient, store: StateStore, pool: ThreadPoolExecutor, tmp_path: Path,
            limits: Limits | None = None) -> Tracker:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return Tracker(client, store, spool, executor=pool, lookup=RunLookup(client), limits=limits or Limits())


def folder(root: Path, files: dict[str, str | bytes] | None = None, name: str = "run-1") -> RunFolder:
    path = write_folder(root, name, dict(files or FILES), marker=None)
    return inspect_folder(path, FilesConfig(), FormatConfig())


def log_text(logs: list[dict[str, object]]) -> str:
    return json.dumps(logs, default=str)


# --- S3's passing faults: a fresh URL, uploaded again ------------------------------------------------


def test_passing_s3_faults_are_uploaded_again_with_fresh_urls(
        cloud: Cloud, client: NextmvClient, cancel: RecordingEvent, store: StateStore, pool: ThreadPoolExecutor,
        tmp_path: Path, watched: Path) -> None:
    """Before: one `400 RequestTimeout` failed the folder for good as "rejected by the API: put: HTTP 400"."""
    cloud.put_answers = [s3bodies.answer(400, s3bodies.request_timeout()),
                         s3bodies.answer(503, s3bodies.slow_down())]
    run = folder(watched, {"input.json": FILES["input.json"]})
    with structlog.testing.capture_logs() as logs:
        outcome = tracker(client, store, pool, tmp_path).track(run, APP, None)

    assert outcome.run_id == "run-1" and marker(run.path) is not None
    urls = cloud.put_urls()
    assert len(urls) == 3 and len(set(urls)) == 3, "never the same URL twice"
    assert cloud.count("POST", "/uploadurl") == 3
    assert cloud.stored == {"u3": FILES["input.json"]}
    retrying = [e for e in logs if e["event"] == "upload_retrying"]
    assert [(e["code"], e["status"], e["log_level"]) for e in retrying] == [
        ("RequestTimeout", 400, "info"), ("SlowDown", 503, "info")]
    assert str(retrying[0]["error"]).startswith("put: HTTP 400 RequestTimeout: Your socket connection")
    assert len(cancel.waits) == 2 and all(0.25 <= w <= 1.0 for w in cancel.waits), "jittered backoff"
    assert "X-Amz" not in log_text(logs) and "bucket.test" not in log_text(logs)


def test_an_upload_that_keeps_failing_gives_up_after_a_few_urls_and_posts_nothing(
        cloud: Cloud, client: NextmvClient, store: StateStore, pool: ThreadPoolExecutor, tmp_path: Path,
        watched: Path) -> None:
    cloud.put_answers = [s3bodies.answer(400, s3bodies.request_timeout()) for _ in range(UPLOAD_TRIES)]
    run = folder(watched, {"input.json": FILES["input.json"]})
    with pytest.raises(UploadFailed) as excinfo:
        tracker(client, store, pool, tmp_path).track(run, APP, None)

    assert str(excinfo.value).startswith("put: HTTP 400 RequestTimeout: ")
    assert cloud.count("POST", "/uploadurl") == UPLOAD_TRIES == len(set(cloud.put_urls()))
    assert cloud.count("POST", "/runs") == 0
    assert store.journal(run.path).intents == [] and marker(run.path) is None


def test_an_expired_url_is_replaced_at_once(
        cloud: Cloud, client: NextmvClient, cancel: RecordingEvent, store: StateStore, pool: ThreadPoolExecutor,
        tmp_path: Path, watched: Path) -> None:
    cloud.put_answers = [s3bodies.answer(403, s3bodies.request_expired())]
    run = folder(watched, {"input.json": FILES["input.json"]})
    with structlog.testing.capture_logs() as logs:
        tracker(client, store, pool, tmp_path).track(run, APP, None)
    assert [e["event"] for e in logs if e["event"].startswith("upload_")] == ["upload_url_expired"]
    assert cancel.waits == []
    assert marker(run.path) is not None


def test_a_drain_stops_uploading_again(
        cloud: Cloud, client: NextmvClient, cancel: RecordingEvent, store: StateStore, pool: ThreadPoolExecutor,
        tmp_path: Path, watched: Path) -> None:
    cancel.set()
    cloud.put_answers = [s3bodies.answer(500, s3bodies.internal_error())]
    run = folder(watched, {"input.json": FILES["input.json"]})
    with pytest.raises(UploadFailed, match="InternalError"):
        tracker(client, store, pool, tmp_path).track(run, APP, None)
    assert len(cloud.put_urls()) == 1 and cancel.waits == []


# --- refused uploads: upload_refused, and no signing material anywhere --------------------------------


def test_a_refused_upload_is_logged_with_its_code_and_a_hint_and_leaks_no_signing_material(
        cloud: Cloud, client: NextmvClient, store: StateStore, pool: ThreadPoolExecutor, tmp_path: Path,
        watched: Path) -> None:
    cloud.put_answers = [s3bodies.answer(403, s3bodies.signature_mismatch()) for _ in range(UPLOAD_TRIES)]
    run = folder(watched, {"input.json": FILES["input.json"]})
    with structlog.testing.capture_logs() as logs, pytest.raises(UploadRefused) as excinfo:
        tracker(client, store, pool, tmp_path).track(run, APP, None)

    refused = [e for e in logs if e["event"] == "upload_refused"]
    assert len(refused) == UPLOAD_TRIES
    assert {(e["log_level"], e["code"], e["status"]) for e in refused} == {("warning", "SignatureDoesNotMatch", 403)}
    assert "clock" in str(refused[0]["hint"]) and "proxy" in str(refused[0]["hint"])
    text = f"{excinfo.value} {excinfo.value!r} {log_text(logs)}"
    assert str(excinfo.value).startswith("put: HTTP 403 SignatureDoesNotMatch: ")
    for secret in (*s3bodies.SECRETS, "X-Amz-Signature", "sig1", "bucket.test", KEY):
        assert secret not in text, secret


# --- the artifact's size: invalid at once, nothing of it uploaded ----------------------------------


def test_entity_too_large_fails_the_folder_naming_the_artifact_and_its_size(
        cloud: Cloud, client: NextmvClient, store: StateStore, pool: ThreadPoolExecutor, tmp_path: Path,
        watched: Path) -> None:
    cloud.put_answers = [s3bodies.answer(400, s3bodies.entity_too_large(20))]
    run = folder(watched, {"input.json": FILES["input.json"]})
    with pytest.raises(InvalidFolder) as excinfo:
        tracker(client, store, pool, tmp_path).track(run, APP, None)
    size = len(FILES["input.json"])
    assert excinfo.value.problem.startswith(f"input input.json ({size} bytes) refused by the storage as too large "
                                            f"(put: HTTP 400 EntityTooLarge")
    assert len(cloud.put_urls()) == 1 and cloud.count("POST", "/runs") == 0


def test_an_artifact_over_the_upload_limit_fails_the_folder_before_any_upload(
        cloud: Cloud, client: NextmvClient, store: StateStore, pool: ThreadPoolExecutor, tmp_path: Path,
        watched: Path) -> None:
    limit = len(FILES["input.json"])   # the input fits exactly; the output does not
    run = folder(watched, {"input.json": FILES["input.json"], "output.json": b'{"solution": 7, "pad": 1}'})
    with pytest.raises(InvalidFolder) as excinfo:
        tracker(client, store, pool, tmp_path, Limits(max_upload_bytes=limit)).track(run, APP, None)
    assert excinfo.value.problem == (f"output output.json is 25 bytes, over the upload limit of {limit} bytes "
                                     f"(api.max_upload_bytes)")
    assert cloud.requests == [], "not even the input was uploaded"
    assert list((tmp_path / "spool").iterdir()) == []


def test_an_archive_is_held_to_the_limit_as_spooled(
        cloud: Cloud, client: NextmvClient, store: StateStore, pool: ThreadPoolExecutor, tmp_path: Path,
        watched: Path) -> None:
    run = folder(watched, {"input.json": "{}", "output/a.txt": "a" * 100, "output/b.txt": "b"})
    with pytest.raises(InvalidFolder, match=r"^.*output output \(as an archive\) is [\d,]+ bytes, over the upload "
                                            r"limit of 64 bytes"):
        tracker(client, store, pool, tmp_path, Limits(max_upload_bytes=64)).track(run, APP, None)
    assert cloud.requests == []


# --- 404 on POST .../runs, and the headers of every request ------------------------------------------


def test_an_unknown_instance_rejects_the_folder_and_drops_its_intent(
        cloud: Cloud, client: NextmvClient, store: StateStore, pool: ThreadPoolExecutor, tmp_path: Path,
        watched: Path) -> None:
    cloud.runs_answer = httpx.Response(404, json={"error": "instance not found"})
    run = folder(watched)
    with pytest.raises(RejectedError) as excinfo:
        tracker(client, store, pool, tmp_path).track(run, APP, "no-such-instance")
    assert str(excinfo.value) == "create_run: HTTP 404: instance not found"
    assert cloud.count("GET", f"/applications/{APP}") == 1, "the application was confirmed present"
    assert store.journal(run.path).intents == [], "a POST answered 404 created nothing"


def test_api_posts_say_json_and_uploads_carry_neither_content_type_nor_authorization(
        cloud: Cloud, client: NextmvClient, store: StateStore, pool: ThreadPoolExecutor, tmp_path: Path,
        watched: Path) -> None:
    tracker(client, store, pool, tmp_path).track(folder(watched), APP, None)
    posts = [r for r in cloud.requests if r.method == "POST"]
    puts = [r for r in cloud.requests if r.method == "PUT"]
    assert len(posts) == 3 and len(puts) == 2
    assert all(r.headers["Content-Type"] == "application/json" and r.headers["Authorization"] == f"Bearer {KEY}"
               for r in posts)
    assert not any("Content-Type" in r.headers or "Authorization" in r.headers for r in puts)
