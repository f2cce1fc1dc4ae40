"""S3's upload faults, in-process: a real Service against the emulator on loopback, behind a transport
that answers presigned PUTs with S3's own error bodies (issue 10, item 1): passing faults
(`400 RequestTimeout`, `503 SlowDown`) on a share of them, or refusals of every one (403
SignatureDoesNotMatch, full of signing material) until told to let them through."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import s3bodies
import structlog
from helpers import API_KEY, FAILED, marker, wait_for, write_config, write_folder

from watcher.config import load_config
from watcher.daemon.gate import GLOBAL
from watcher.daemon.service import Service
from watcher.fakecloud import FakeCloud
from watcher.runfolder.markers import StateStore

FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1]}', "output.json": b'{"solution": 7}'}
MAX_ATTEMPTS = 10   # write_config's retry.max_attempts


class RefusingStorage(httpx.BaseTransport):
    """Every PUT answered 403 SignatureDoesNotMatch while `refusing` is set; everything else (and PUTs
    afterwards) goes to the emulator."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.refusing = threading.Event()
        self.refusing.set()
        self.refused = 0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and self.refusing.is_set():
            request.read()
            with self._lock:
                self.refused += 1
            return s3bodies.answer(403, s3bodies.signature_mismatch(request.url.path))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def storage() -> Iterator[RefusingStorage]:
    s = RefusingStorage()
    yield s
    s.close()


def test_refusals_of_every_upload_pause_work_and_a_test_upload_resumes_it(
        cloud: FakeCloud, watched: Path, tmp_path: Path, storage: RefusingStorage) -> None:
    config = load_config(write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state"))
    service = Service(config, API_KEY, transport=storage)
    service.start()
    try:
        folders = [write_folder(watched, f"run-{i}", FILES) for i in range(3)]
        wait_for(lambda: service.gate.blocked("app-1") is not None, 30, "the uploads' breaker opened")
        pause = service.gate.pauses()[GLOBAL]
        assert pause.reason == "upload_refused"
        assert pause.message.startswith("put: ")
        for secret in s3bodies.SECRETS:
            assert secret not in pause.message
        wait_for(lambda: len(service.index) == 0 and not service.index.in_flight(), 30, "every folder parked")
        store = StateStore(tmp_path / "state")
        assert all(marker(f, FAILED) is None for f in folders)
        assert max(store.journal(f).attempts for f in folders) < MAX_ATTEMPTS
        assert cloud.runs() == []
        assert service.status()["paused"]["*"]["reason"] == "upload_refused"

        storage.refusing.clear()   # the proxy is fixed: the next probe's test upload goes through
        assert service.run_until_idle(timeout=60)
        assert all(marker(f) is not None for f in folders)
        assert all(marker(f, FAILED) is None for f in folders)
        assert sorted(r.body["name"] for r in cloud.runs("app-1")) == ["run-0", "run-1", "run-2"]
        assert not service.gate.is_paused()
    finally:
        service.shutdown()


class FlakyStorage(httpx.BaseTransport):
    """30% of PUTs answered 400 RequestTimeout and 10% 503 SlowDown (seeded), before the emulator sees them."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.rng = random.Random(10)
        self.answered: Counter[str] = Counter()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            with self._lock:
                draw = self.rng.random()
                code = "RequestTimeout" if draw < 0.3 else "SlowDown" if draw < 0.4 else "ok"
                self.answered[code] += 1
            if code == "RequestTimeout":
                request.read()
                return s3bodies.answer(400, s3bodies.request_timeout())
            if code == "SlowDown":
                request.read()
                return s3bodies.answer(503, s3bodies.slow_down())
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_passing_s3_faults_leave_a_batch_tracked_exactly_once(
        cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    storage = FlakyStorage()
    config = load_config(write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state"))
    service = Service(config, API_KEY, transport=storage)
    # Written before start: the start-up scan queues them all, and run_until_idle waits for that scan (folders
    # written after start could still be on their way from inotify when it looks, and it would find nothing).
    folders = [write_folder(watched, f"run-{i:02d}", FILES) for i in range(16)]
    try:
        with structlog.testing.capture_logs() as logs:
            service.start()
            assert service.run_until_idle(timeout=90)
    finally:
        service.shutdown()
        storage.close()
    assert all(marker(f) is not None for f in folders)
    assert all(marker(f, FAILED) is None for f in folders)
    assert Counter(r.body["name"] for r in cloud.runs("app-1")) == Counter(f.name for f in folders)
    assert storage.answered["RequestTimeout"] > 0 and storage.answered["SlowDown"] > 0
    codes = {e["code"] for e in logs if e["event"] == "upload_retrying"}
    # Both codes are named; on a loaded machine a read timeout may add a retry without a code.
    assert {"RequestTimeout", "SlowDown"} <= codes <= {"RequestTimeout", "SlowDown", None}
    assert "X-Amz" not in json.dumps(logs, default=str) and "signature=" not in json.dumps(logs, default=str)
