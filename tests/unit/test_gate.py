"""The gate: pauses (key rejected, application missing, the circuit breaker), probes and resuming, with a
stepped clock and the client on httpx.MockTransport; and that it alone logs the pause events."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import s3bodies
import structlog
from helpers import write_config

import watcher
from watcher.cloud.backoff import Backoff
from watcher.cloud.client import NextmvClient, RequestOutcome
from watcher.config import Config, load_config
from watcher.daemon.gate import GLOBAL, Gate
from watcher.daemon.health import Health
from watcher.daemon.index import FolderIndex
from watcher.daemon.outcomes import Outcomes
from watcher.errors import (
    ApiError,
    AuthError,
    RejectedError,
    TransientError,
    UncertainError,
    UploadFailed,
    UploadRefused,
    UploadTooLarge,
)

KEY = "gate-test-key"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Api:
    """The applications endpoint: answers from `status` (200, 401, 404, 503)."""

    def __init__(self) -> None:
        self.status = 200
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request.url.path)
        if self.status == 200:
            return httpx.Response(200, json={"id": request.url.path.rsplit("/", 1)[-1]})
        return httpx.Response(self.status, json={"error": f"status {self.status}"})


@pytest.fixture
def config(tmp_path: Path) -> Config:
    runs = tmp_path / "runs"
    runs.mkdir()
    return load_config(write_config(tmp_path / "config.yaml", "https://api.test", [(runs, "app-a")],
                                    tmp_path / "state"))


def make(config: Config, clock: Clock, api: Api | None = None, *, threshold: int = 5,
         parked: dict[str, int] | None = None) -> tuple[Gate, list[str]]:
    """A gate whose `unpark` records the scopes it released (and returns `parked[scope]`)."""
    released: list[str] = []
    counts = parked or {}

    def unpark(scope: str) -> int:
        released.append(scope)
        return counts.get(scope, 0)

    client = NextmvClient("https://api.test", KEY, transport=httpx.MockTransport(api or Api()), attempts=1,
                          backoff=Backoff(0.001, 0.001))
    gate = Gate(clock, config=lambda: config, client=client, unpark=unpark, failure_threshold=threshold,
                probe_backoff=Backoff(10.0, 100.0))
    return gate, released


def outcome(error: type[TransientError] | type[RejectedError] | None, status: int | None = 503) -> RequestOutcome:
    return RequestOutcome("create_run", status, 0.01, error)


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == name]


def test_an_open_gate_blocks_nothing_and_a_resume_releases_nothing(config: Config) -> None:
    gate, released = make(config, Clock())
    assert gate.blocked("app-a") is None
    assert not gate.is_paused()
    with structlog.testing.capture_logs() as logs:
        gate.resume(GLOBAL)
    assert released == [] and logs == []


def test_a_rejected_key_pauses_everything_and_is_logged_once(config: Config) -> None:
    gate, _ = make(config, Clock())
    with structlog.testing.capture_logs() as logs:
        gate.key_rejected("API key rejected (HTTP 401)")
        gate.key_rejected("again")
    assert [e["reason"] for e in events(logs, "api_paused")] == ["auth"]
    assert gate.blocked("app-a") == gate.blocked("any") == GLOBAL
    pause = gate.pauses()[GLOBAL]
    assert (pause.reason, pause.message, pause.since) == ("auth", "API key rejected (HTTP 401)", 1000.0)


def test_a_missing_application_pauses_only_that_application(config: Config) -> None:
    gate, _ = make(config, Clock())
    with structlog.testing.capture_logs() as logs:
        gate.application_missing("app-a", "application 'app-a' not found")
    assert [e["application_id"] for e in events(logs, "application_paused")] == ["app-a"]
    assert gate.blocked("app-a") == "app-a"
    assert gate.blocked("app-b") is None


def test_the_breaker_trips_after_threshold_transient_failures_in_a_row(config: Config) -> None:
    gate, _ = make(config, Clock(), threshold=3)
    with structlog.testing.capture_logs() as logs:
        gate.observe(outcome(TransientError))
        gate.observe(outcome(UncertainError))
        gate.observe(outcome(RejectedError, 400))   # not transient: neither counts nor resets
        assert not gate.is_paused()
        gate.observe(outcome(TransientError, None))
        gate.observe(outcome(TransientError))       # already paused: logged once
    assert [e["reason"] for e in events(logs, "api_paused")] == ["unreachable"]
    assert gate.pauses()[GLOBAL].message == "create_run: no response"


def test_a_success_resets_the_breaker(config: Config) -> None:
    gate, _ = make(config, Clock(), threshold=2)
    gate.observe(outcome(TransientError))
    gate.observe(outcome(None, 201))
    gate.observe(outcome(TransientError))
    assert not gate.is_paused()
    gate.observe(outcome(TransientError))
    assert gate.is_paused()


def test_a_probe_that_succeeds_resumes_and_releases_the_parked_folders(config: Config) -> None:
    clock, api = Clock(), Api()
    gate, released = make(config, clock, api, parked={GLOBAL: 8})
    api.status = 503
    gate.observe(outcome(TransientError))
    for _ in range(4):
        gate.observe(outcome(TransientError))
    probe_at = gate.next_probe_at()
    assert probe_at is not None and 1005.0 <= probe_at <= 1010.0   # Backoff(10, 100).delay(1)

    clock.now = 1004.9
    gate.probe()
    assert api.calls == []   # not due yet
    clock.now = probe_at
    gate.probe()
    assert api.calls == ["/v1/applications/app-a"] and gate.is_paused()
    pause = gate.pauses()[GLOBAL]
    assert pause.probes == 1 and pause.probe_at > clock.now   # backing off further

    api.status = 200
    clock.now = pause.probe_at
    with structlog.testing.capture_logs() as logs:
        gate.probe()
    assert not gate.is_paused()
    assert released == [GLOBAL]
    (resumed,) = events(logs, "api_resumed")
    assert (resumed["scope"], resumed["reason"], resumed["folders"]) == ("all", "unreachable", 8)
    assert resumed["paused_for"] == round(clock.now - 1000.0, 1)


def test_a_global_pause_answered_with_404_becomes_a_pause_of_that_application(config: Config) -> None:
    clock, api = Clock(), Api()
    gate, released = make(config, clock, api)
    gate.key_rejected("rejected")
    api.status = 404
    clock.now = gate.pauses()[GLOBAL].probe_at
    with structlog.testing.capture_logs() as logs:
        gate.probe()
    assert released == [GLOBAL]
    assert set(gate.pauses()) == {"app-a"}
    assert [e["event"] for e in logs] == ["api_resumed", "application_paused"]


def test_a_probe_of_a_rejected_key_reads_the_key_again(config: Config, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("new-key\n")
    keyed = load_config(write_config(tmp_path / "keyed.yaml", "https://api.test", [(tmp_path / "runs", "app-a")],
                                     tmp_path / "state", api={"key_file": str(key_file)}))
    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(200, json={"id": "app-a"})

    clock = Clock()
    client = NextmvClient("https://api.test", "old-key", transport=httpx.MockTransport(api), attempts=1)
    gate = Gate(clock, config=lambda: keyed, client=client, unpark=lambda scope: 0)
    gate.key_rejected("rejected")
    clock.now = gate.pauses()[GLOBAL].probe_at
    gate.probe()
    assert seen == ["Bearer new-key"] and not gate.is_paused()


def test_a_reload_drops_the_pauses_of_applications_no_longer_configured(config: Config) -> None:
    gate, _ = make(config, Clock())
    gate.application_missing("gone-app", "not found")
    gate.application_missing("app-a", "not found")
    gate.forget_applications({"app-a"})
    assert set(gate.pauses()) == {"app-a"}


def test_auth_errors_raised_by_the_client_are_not_the_breakers_business(config: Config) -> None:
    gate, _ = make(config, Clock(), threshold=1)
    gate.observe(RequestOutcome("get_application", 401, 0.01, AuthError))
    assert not gate.is_paused()


def test_only_the_gate_logs_the_pause_events() -> None:
    """api_paused, application_paused and api_resumed have one home (issue 9, item 4)."""
    package = Path(watcher.__file__).parent
    pattern = re.compile(r"""["'](api_paused|application_paused|api_resumed)["']""")
    homes = sorted({str(p.relative_to(package)) for p in package.rglob("*.py")
                    if pattern.search(p.read_text(encoding="utf-8"))})
    assert homes == ["daemon/gate.py"]




# --- the uploads' own breaker (issue 10, item 1) -------------------------------------------------------


class Storage:
    """The API's applications and upload-URL endpoints, and the storage's presigned PUT: the PUT answers
    `put` (a status and an S3 body), the rest `api_status`."""

    def __init__(self) -> None:
        self.api_status = 200
        self.put: tuple[int, str] = (403, s3bodies.signature_mismatch())
        self.calls: list[tuple[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path))
        if request.method == "PUT":
            status, body = self.put
            return s3bodies.answer(status, body)
        if self.api_status != 200:
            return httpx.Response(self.api_status, json={"error": f"status {self.api_status}"})
        if request.url.path.endswith("/uploadurl"):
            return httpx.Response(200, json={"upload_id": "u1", "upload_url": "https://bucket.test/u1?X-Amz-Signature=s"})
        return httpx.Response(200, json={"id": "app-a"})


def upload_gate(config: Config, clock: Clock, storage: Storage, threshold: int = 3) -> tuple[Gate, list[str]]:
    released: list[str] = []

    def unpark(scope: str) -> int:
        released.append(scope)
        return 4

    client = NextmvClient("https://api.test", KEY, transport=httpx.MockTransport(storage), attempts=1,
                          backoff=Backoff(0.001, 0.001))
    gate = Gate(clock, config=lambda: config, client=client, unpark=unpark, upload_failure_threshold=threshold,
                probe_backoff=Backoff(10.0, 100.0))
    client.observer = gate.observe
    return gate, released


def put(error: type[ApiError] | None, status: int | None = 403, code: str | None = "SignatureDoesNotMatch"
        ) -> RequestOutcome:
    return RequestOutcome("put", status, 0.01, error, code if error is not None else None)


UPLOADURL_OK = RequestOutcome("uploadurl", 200, 0.01, None)


def test_refused_uploads_pause_work_although_every_upload_url_call_succeeds(config: Config) -> None:
    """Each PUT follows a successful upload-URL call: before, that success reset the count, so refusals
    of every upload never paused anything and used up every folder's attempts."""
    gate, _ = upload_gate(config, Clock(), Storage())
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            gate.observe(UPLOADURL_OK)
            gate.observe(put(UploadRefused))
    (paused,) = events(logs, "api_paused")
    assert (paused["reason"], paused["endpoint"], paused["status"], paused["code"]) == (
        "upload_refused", "put", 403, "SignatureDoesNotMatch")
    assert "clock" in str(paused["hint"]) and "proxy" in str(paused["hint"])
    assert gate.blocked("app-a") == GLOBAL
    pause = gate.pauses()[GLOBAL]
    assert (pause.reason, pause.message) == ("upload_refused", "put: 403 SignatureDoesNotMatch")


def test_uploads_failing_for_other_reasons_pause_as_uploads_failing(config: Config) -> None:
    gate, _ = upload_gate(config, Clock(), Storage())
    gate.observe(put(UploadRefused))
    gate.observe(put(UploadFailed, 400, "RequestTimeout"))
    gate.observe(put(UploadFailed, None, None))
    assert gate.pauses()[GLOBAL].reason == "uploads_failing"
    assert gate.pauses()[GLOBAL].message == "put: no response"


def test_a_good_upload_resets_the_count_and_a_refused_size_is_no_storage_fault(config: Config) -> None:
    gate, _ = upload_gate(config, Clock(), Storage())
    gate.observe(put(UploadFailed, 503, "SlowDown"))
    gate.observe(put(UploadFailed, 503, "SlowDown"))
    gate.observe(put(None, 200))
    gate.observe(put(UploadFailed, 503, "SlowDown"))
    gate.observe(put(UploadTooLarge, 400, None))   # the artifact's problem: neither counts nor resets
    gate.observe(put(UploadFailed, 503, "SlowDown"))
    assert not gate.is_paused()
    gate.observe(put(UploadFailed, 503, "SlowDown"))
    assert gate.is_paused()


def test_uploads_and_api_calls_are_counted_apart(config: Config) -> None:
    gate, _ = make(config, Clock(), threshold=3)
    gate.observe(outcome(TransientError))
    gate.observe(outcome(TransientError))
    gate.observe(put(None, 200))                 # the storage answering says nothing about the API
    gate.observe(put(UploadFailed, 500, "InternalError"))
    assert not gate.is_paused()
    gate.observe(outcome(TransientError))
    assert gate.pauses()[GLOBAL].reason == "unreachable"


def test_an_upload_pause_is_probed_with_a_real_upload(config: Config) -> None:
    clock, storage = Clock(), Storage()
    gate, released = upload_gate(config, clock, storage)
    for _ in range(3):
        gate.observe(put(UploadRefused))
    storage.calls.clear()

    clock.now = gate.pauses()[GLOBAL].probe_at
    gate.probe()
    assert storage.calls == [("POST", "/v1/applications/app-a/runs/uploadurl"), ("PUT", "/u1")]
    pause = gate.pauses()[GLOBAL]
    assert (pause.reason, pause.probes) == ("upload_refused", 1)
    assert pause.message.startswith("put: HTTP 403 SignatureDoesNotMatch")

    storage.api_status = 503   # the upload-URL call fails: uploads were not tested, the reason stays
    clock.now = pause.probe_at
    gate.probe()
    assert gate.pauses()[GLOBAL].reason == "upload_refused"

    storage.api_status, storage.put = 200, (200, "")
    clock.now = gate.pauses()[GLOBAL].probe_at
    with structlog.testing.capture_logs() as logs:
        gate.probe()
    assert not gate.is_paused() and released == [GLOBAL]
    (resumed,) = events(logs, "api_resumed")
    assert (resumed["reason"], resumed["folders"]) == ("upload_refused", 4)


def test_a_probe_upload_failing_otherwise_turns_the_pause_into_uploads_failing(config: Config) -> None:
    clock, storage = Clock(), Storage()
    gate, _ = upload_gate(config, clock, storage)
    for _ in range(3):
        gate.observe(put(UploadRefused))
    storage.put = (503, s3bodies.slow_down())
    clock.now = gate.pauses()[GLOBAL].probe_at
    gate.probe()
    assert gate.pauses()[GLOBAL].reason == "uploads_failing"


def test_health_turns_unhealthy_once_uploads_have_been_paused_too_long(config: Config) -> None:
    clock = Clock()
    gate, _ = upload_gate(config, clock, Storage())
    index = FolderIndex(clock)
    health = Health(config=lambda: config, index=index, gate=gate, outcomes=Outcomes(clock),
                    detectors=None, watching=False, workers=list, state=lambda: "running",  # type: ignore[arg-type]
                    clock=clock)
    for _ in range(3):
        gate.observe(put(UploadRefused))
    assert health.health()[0]
    clock.now += config.metrics.unhealthy_pause_seconds + 1
    healthy, detail = health.health()
    assert not healthy
    assert detail["reasons"] == [f"API paused (upload_refused) for {round(clock.now - 1000.0)} s: *"]


# --- 429 holds (issue 13, item 2) ----------------------------------------------------------------------


def throttled(retry_after: float | None, endpoint: str = "uploadurl", status: int = 429) -> RequestOutcome:
    return RequestOutcome(endpoint, status, 0.01, TransientError, retry_after=retry_after)


def test_a_429_with_retry_after_holds_every_api_call_until_then_without_pausing(config: Config) -> None:
    clock = Clock()
    gate, released = make(config, clock)
    assert gate.held_for() == 0
    with structlog.testing.capture_logs() as logs:
        gate.observe(throttled(3))
        clock.now += 1
        gate.observe(throttled(1))    # ends earlier than the hold: changes nothing
        gate.observe(throttled(4))    # ends later: extends it, without a second event
    assert gate.held_for() == 4
    assert [(e["log_level"], e["seconds"]) for e in events(logs, "api_held")] == [("info", 3)]
    assert not gate.is_paused() and gate.blocked("app-a") is None and gate.blocked("app-b") is None
    clock.now += 4
    assert gate.held_for() == 0
    assert released == []


def test_only_a_429_with_retry_after_holds(config: Config) -> None:
    gate, _ = make(config, Clock())
    gate.observe(throttled(None))
    gate.observe(throttled(5, status=503))
    gate.observe(throttled(5, endpoint="put"))   # the storage's answer, not the API's
    assert gate.held_for() == 0


def test_a_hold_is_capped(config: Config) -> None:
    gate, _ = make(config, Clock())
    gate.observe(throttled(86400))
    assert gate.held_for() == 120


def test_throttling_is_no_outage_and_never_trips_the_breaker(config: Config) -> None:
    """A throttled API answers: 429s in a row (as many folders throttled at once after a burst) hold the
    calls; they do not pause all work as unreachable (an error-level `api_paused`)."""
    gate, _ = make(config, Clock(), threshold=3)
    with structlog.testing.capture_logs() as logs:
        for retry_after in (1, None, 1, None, 1, None):
            gate.observe(throttled(retry_after))
    assert not gate.is_paused()
    assert gate.failing() is None
    assert not events(logs, "api_paused")
