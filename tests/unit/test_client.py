"""NextmvClient over httpx.MockTransport: headers, streamed uploads, and the mapping of failures to our errors."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import h11
import httpx
import pytest
import s3bodies

from watcher.cloud.backoff import Backoff
from watcher.cloud.client import NextmvClient, RequestOutcome, UploadTarget
from watcher.errors import (
    ApiError,
    ApplicationNotFound,
    AuthError,
    FolderChanged,
    RejectedError,
    TransientError,
    UncertainError,
    UploadExpired,
    UploadFailed,
    UploadRefused,
    UploadTooLarge,
)

BASE = "https://api.test"
KEY = "sk-very-secret-key-123"
SIGNED = "https://bucket.test/upload/u1?X-Amz-Signature=deadbeefsig&X-Amz-Expires=900"
QUERY = "X-Amz-Signature=deadbeefsig"

Handler = Callable[[httpx.Request], httpx.Response]


class RecordingEvent(threading.Event):
    """A cancel event that records each retry wait instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        return self.is_set()


class Server:
    """A scripted API: each request gets the next answer (a response, or an exception to raise)."""

    def __init__(self, *answers: httpx.Response | Exception | Handler) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.read())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer


def opener(path: Path) -> Callable[[], BinaryIO]:
    """What the client reads a PUT body from: a fresh reader of `path` (the caller closes it)."""
    return lambda: path.open("rb")


@pytest.fixture
def outcomes() -> list[RequestOutcome]:
    return []


@pytest.fixture
def make_client(outcomes: list[RequestOutcome]) -> Iterator[Callable[..., tuple[NextmvClient, RecordingEvent]]]:
    made: list[NextmvClient] = []

    def make(server: Server, attempts: int = 4) -> tuple[NextmvClient, RecordingEvent]:
        cancel = RecordingEvent()
        client = NextmvClient(BASE, KEY, transport=httpx.MockTransport(server), attempts=attempts,
                              backoff=Backoff(0.001, 0.002), cancel=cancel, observer=outcomes.append,
                              clock=lambda: 5000.0)
        made.append(client)
        return client, cancel

    yield make
    for c in made:
        c.close()


def ok(data: object, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=data)


def error(status: int, message: str = "nope", headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": message}, headers=headers)


def target() -> UploadTarget:
    return UploadTarget("u1", SIGNED, 5000.0)


def assert_clean(err: BaseException) -> None:
    text = f"{err} {err!r}"
    assert KEY not in text
    assert QUERY not in text


# --- headers and bodies --------------------------------------------------------------------------


def test_api_calls_carry_the_bearer_key_and_a_json_body(make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]
                                                        ) -> None:
    server = Server(ok({"run_id": "run-1"}))
    client, _ = make_client(server)

    run_id = client.create_run("my app", {"upload_id": "u-in", "result": {"status": "succeeded"}}, "inst-1")

    assert run_id == "run-1"
    (request,) = server.requests
    assert request.method == "POST"
    assert request.url.raw_path == b"/v1/applications/my%20app/runs?instance_id=inst-1"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("nextmv-watcher/")
    assert json.loads(server.bodies[0]) == {"upload_id": "u-in", "result": {"status": "succeeded"}}


def test_new_upload_posts_an_empty_body_and_returns_the_target(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(ok({"upload_id": "u1", "upload_url": SIGNED}))
    client, _ = make_client(server)

    assert client.new_upload("app") == UploadTarget("u1", SIGNED, 5000.0)
    (request,) = server.requests
    assert (request.method, request.url.path) == ("POST", "/v1/applications/app/runs/uploadurl")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"   # as the docs' curl sends it (issue 10, item 6)
    assert request.headers["Content-Length"] == "0"
    assert server.bodies == [b""]


def test_an_upload_url_answer_without_its_fields_is_transient(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    client, _ = make_client(Server(ok({"upload_id": "u1"})))

    with pytest.raises(TransientError, match="lacks upload_id/upload_url"):
        client.new_upload("app")


def test_put_streams_the_file_with_a_length_and_without_the_key(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    content = bytes(range(256)) * (10 * 1024) + b"tail"  # 2.5 MiB and a bit: several chunks
    path = tmp_path / "input.bin"
    path.write_bytes(content)
    server = Server(httpx.Response(200))
    client, _ = make_client(server)
    progress: list[int] = []

    client.put_file(target(), opener(path), len(content), progress=progress.append)

    (request,) = server.requests
    assert request.method == "PUT"
    assert str(request.url) == SIGNED
    assert "Authorization" not in request.headers
    assert "Content-Type" not in request.headers
    assert request.headers["Content-Length"] == str(len(content))
    assert "Transfer-Encoding" not in request.headers
    assert server.bodies[0] == content
    assert sum(progress) == len(content)
    assert len(progress) > 1


def test_a_failed_put_is_never_tried_again_on_the_same_url(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    """The caller uploads again with a fresh URL (the tracker); the client tries each URL once."""
    path = tmp_path / "input.json"
    path.write_bytes(b'{"x": 1}')
    server = Server(httpx.Response(503), httpx.Response(200))
    client, cancel = make_client(server)

    with pytest.raises(UploadFailed):
        client.put_file(target(), opener(path), 8)

    assert server.bodies == [b'{"x": 1}']
    assert cancel.waits == []


# --- status mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_an_auth_error(status: int, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]
                                        ) -> None:
    server = Server(error(status, "invalid api key"))
    client, _ = make_client(server)

    with pytest.raises(AuthError, match="invalid api key") as excinfo:
        client.get_application("app")

    assert excinfo.value.status == status
    assert len(server.requests) == 1
    assert_clean(excinfo.value)


def test_404_on_an_application_is_application_not_found(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(error(404))
    client, _ = make_client(server)

    with pytest.raises(ApplicationNotFound) as excinfo:
        client.list_runs("missing-app")

    assert excinfo.value.application_id == "missing-app"
    assert [(r.method, r.url.path) for r in server.requests] == [
        ("GET", "/v1/applications/missing-app/runs"), ("GET", "/v1/applications/missing-app")]


@pytest.mark.parametrize("status", [400, 409, 413, 422])
def test_a_refused_run_is_rejected_with_the_apis_message_and_not_retried(
        status: int, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(error(status, "result.status must be succeeded or failed"))
    client, cancel = make_client(server)

    with pytest.raises(RejectedError) as excinfo:
        client.create_run("app", {"upload_id": "u"}, None)

    assert excinfo.value.status == status
    assert "result.status must be succeeded or failed" in str(excinfo.value)
    assert len(server.requests) == 1
    assert cancel.waits == []


def test_429_honours_retry_after(make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(error(429, "slow down", {"Retry-After": "7"}), ok({"id": "app"}))
    client, cancel = make_client(server)

    assert client.get_application("app") == {"id": "app"}
    assert len(server.requests) == 2
    assert cancel.waits == [7.0]


def test_a_huge_retry_after_is_capped(make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(error(503, "maintenance", {"Retry-After": "86400"}), ok({"id": "app"}))
    client, cancel = make_client(server)

    client.get_application("app")

    assert cancel.waits == [120.0]


def test_5xx_is_retried_with_backoff_then_transient(make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]
                                                    ) -> None:
    server = Server(error(502, "bad gateway"))
    client, cancel = make_client(server, attempts=3)

    with pytest.raises(TransientError) as excinfo:
        client.list_runs("app")

    assert type(excinfo.value) is TransientError
    assert excinfo.value.status == 502
    assert len(server.requests) == 3
    assert len(cancel.waits) == 2
    assert all(0.0005 <= w <= 0.002 for w in cancel.waits)


def test_a_per_call_attempt_limit_overrides_the_clients(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(error(500))
    client, _ = make_client(server, attempts=5)

    with pytest.raises(TransientError):
        client.get_application("app", attempts=1)

    assert len(server.requests) == 1


def test_a_set_cancel_event_stops_retrying(make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(error(503))
    client, cancel = make_client(server)
    cancel.set()

    with pytest.raises(TransientError):
        client.get_application("app")

    assert len(server.requests) == 1
    assert cancel.waits == []


def test_cancel_interrupts_a_retry_wait(outcomes: list[RequestOutcome]) -> None:
    """With a real Event: a long Retry-After wait ends as soon as cancel is set."""
    cancel = threading.Event()
    first_seen = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        first_seen.set()
        return error(429, "slow down", {"Retry-After": "100"})

    client = NextmvClient(BASE, KEY, transport=httpx.MockTransport(handler), cancel=cancel,
                          backoff=Backoff(0.001, 0.002))
    raised: list[BaseException] = []

    def call() -> None:
        try:
            client.get_application("app")
        except ApiError as exc:
            raised.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert first_seen.wait(timeout=5)
    cancel.set()
    caller.join(timeout=5)
    client.close()

    assert not caller.is_alive()
    assert len(raised) == 1
    assert isinstance(raised[0], TransientError)
    assert raised[0].status == 429


def test_an_expired_upload_url_is_upload_expired_and_not_retried(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b"{}")
    server = Server(httpx.Response(403, text=f"<Error>Request has expired; {SIGNED}</Error>"))
    client, _ = make_client(server)

    with pytest.raises(UploadExpired) as excinfo:
        client.put_file(target(), opener(path), 2)

    assert len(server.requests) == 1
    assert_clean(excinfo.value)


def test_a_failing_put_keeps_the_storage_error_page_out_of_the_message(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b"{}")
    server = Server(httpx.Response(502, text=f"<html>upstream failed for {SIGNED}</html>"))
    client, _ = make_client(server, attempts=2)

    with pytest.raises(UploadFailed) as excinfo:
        client.put_file(target(), opener(path), 2)

    assert excinfo.value.status == 502
    assert (str(excinfo.value), excinfo.value.code) == ("put: HTTP 502", None)
    assert len(server.requests) == 1
    assert_clean(excinfo.value)


@pytest.mark.parametrize(("answer", "kind", "code"), [
    (s3bodies.answer(400, s3bodies.request_timeout()), UploadFailed, "RequestTimeout"),
    (s3bodies.answer(503, s3bodies.slow_down(), {"Retry-After": "2"}), UploadFailed, "SlowDown"),
    (s3bodies.answer(404, s3bodies.no_such_upload()), UploadFailed, "NoSuchUpload"),
    (s3bodies.answer(411, s3bodies.missing_content_length()), UploadFailed, "MissingContentLength"),
    (s3bodies.answer(501, s3bodies.not_implemented()), UploadFailed, "NotImplemented"),
    (httpx.ReadTimeout("timed out"), UploadFailed, None),
    (httpx.RemoteProtocolError("connection reset"), UploadFailed, None),
    (s3bodies.answer(403, s3bodies.request_expired()), UploadExpired, "AccessDenied"),
    (s3bodies.answer(403, s3bodies.signature_mismatch()), UploadRefused, "SignatureDoesNotMatch"),
    (s3bodies.answer(400, s3bodies.entity_too_large(3)), UploadTooLarge, None),
])
def test_a_failed_put_is_tried_once_and_named_by_its_s3_code(
        answer: httpx.Response | Exception, kind: type[Exception], code: str | None, tmp_path: Path,
        outcomes: list[RequestOutcome], make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    """Issue 10, item 1: a 400 on a PUT is no rejection; the caller gets a fresh URL and uploads again."""
    path = tmp_path / "input.json"
    path.write_bytes(b"{}")
    server = Server(answer, httpx.Response(200))
    client, cancel = make_client(server)

    with pytest.raises(kind) as excinfo:
        client.put_file(target(), opener(path), 2)

    assert type(excinfo.value) is kind
    assert len(server.requests) == 1 and cancel.waits == []
    assert getattr(excinfo.value, "code", None) == code
    assert [(o.endpoint, o.error, o.code) for o in outcomes] == [("put", kind, code)]
    if code is not None:
        assert f" {code}" in str(excinfo.value)
    assert_clean(excinfo.value)


def test_s3_signing_material_stays_out_of_the_error_and_the_outcome(
        tmp_path: Path, outcomes: list[RequestOutcome],
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b"{}")
    client, _ = make_client(Server(s3bodies.answer(403, s3bodies.signature_mismatch())))

    with pytest.raises(UploadRefused) as excinfo:
        client.put_file(target(), opener(path), 2)

    text = f"{excinfo.value} {excinfo.value!r} {outcomes}"
    assert str(excinfo.value).startswith("put: HTTP 403 SignatureDoesNotMatch: The request signature we calculated")
    for secret in s3bodies.SECRETS:
        assert secret not in text
    assert_clean(excinfo.value)


def test_only_the_head_of_a_put_error_body_is_read(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b"{}")
    served: list[int] = []

    def endless() -> Iterator[bytes]:
        yield s3bodies.internal_error().encode()
        for _ in range(10_000):   # 10 MB more, were it all read
            served.append(1024)
            yield b" " * 1024

    server = Server(lambda request: httpx.Response(500, content=endless()))
    client, _ = make_client(server)

    with pytest.raises(UploadFailed, match="put: HTTP 500 InternalError"):
        client.put_file(target(), opener(path), 2)

    assert sum(served) <= 8 * 1024


def test_a_compressed_api_answer_is_decoded(make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    body = gzip.compress(json.dumps({"upload_id": "u1", "upload_url": SIGNED}).encode())
    server = Server(lambda request: httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=iter([body])))
    client, _ = make_client(server)

    assert client.new_upload("app") == UploadTarget("u1", SIGNED, 5000.0)


def test_a_compressed_put_error_body_is_not_decoded(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b"{}")
    garbage = iter([b"\x1f\x8b\x08 not really gzip"])
    server = Server(lambda request: httpx.Response(503, headers={"Content-Encoding": "gzip"}, content=garbage))
    client, _ = make_client(server)

    with pytest.raises(UploadFailed) as excinfo:
        client.put_file(target(), opener(path), 2)

    assert (str(excinfo.value), excinfo.value.code) == ("put: HTTP 503", None)


def test_try_upload_puts_a_tiny_body_with_a_fresh_url(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(ok({"upload_id": "u1", "upload_url": SIGNED}), httpx.Response(200))
    client, _ = make_client(server)

    client.try_upload("app")

    post, put = server.requests
    assert (post.method, post.url.path, put.method, str(put.url)) == (
        "POST", "/v1/applications/app/runs/uploadurl", "PUT", SIGNED)
    assert server.bodies[1] == b"{}"
    assert "Authorization" not in put.headers and "Content-Type" not in put.headers


# --- 404 means what it says ----------------------------------------------------------------------


@pytest.mark.parametrize(("confirmation", "kind"), [
    (ok({"id": "app"}), RejectedError),
    (error(404, "application not found"), ApplicationNotFound),
    (error(503, "unavailable"), TransientError),
    (httpx.ConnectError("refused"), TransientError),
    (error(401, "invalid api key"), AuthError),
])
def test_a_404_on_post_runs_is_confirmed_with_the_application(
        confirmation: httpx.Response | Exception, kind: type[ApiError],
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    """Issue 10, item 4: an unknown instance fails that folder only; a missing application pauses it."""
    server = Server(error(404, "instance not found"), confirmation)
    client, _ = make_client(server)

    with pytest.raises(ApiError) as excinfo:
        client.create_run("app", {"upload_id": "u"}, "no-such-instance")

    assert type(excinfo.value) is kind
    assert [(r.method, r.url.path) for r in server.requests] == [
        ("POST", "/v1/applications/app/runs"), ("GET", "/v1/applications/app")], "one confirmation, no retry"
    if kind is RejectedError:
        assert excinfo.value.status == 404
        assert str(excinfo.value) == "create_run: HTTP 404: instance not found"


@pytest.mark.parametrize("endpoint", ["uploadurl", "list_runs"])
def test_a_404_elsewhere_with_the_application_present_is_transient(
        endpoint: str, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(error(404, "not found"), ok({"id": "app"}))
    client, _ = make_client(server)

    with pytest.raises(TransientError) as excinfo:
        client.new_upload("app") if endpoint == "uploadurl" else client.list_runs("app")

    assert type(excinfo.value) is TransientError and excinfo.value.status == 404
    assert len(server.requests) == 2


@pytest.mark.parametrize(("endpoint", "status"), [
    ("uploadurl", 400), ("uploadurl", 409), ("list_runs", 400), ("list_runs", 422),
    ("create_run", 405), ("create_run", 302),
])
def test_other_refusals_fail_no_folder_and_are_not_repeated_at_once(
        endpoint: str, status: int, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    """Only POST .../runs answered 400/409/413/422 (or a confirmed 404) rejects a folder."""
    server = Server(error(status, "bad page token"))
    client, cancel = make_client(server)
    calls = {"uploadurl": lambda: client.new_upload("app"), "list_runs": lambda: client.list_runs("app", "t"),
             "create_run": lambda: client.create_run("app", {"upload_id": "u"}, None)}

    with pytest.raises(TransientError) as excinfo:
        calls[endpoint]()

    assert type(excinfo.value) is TransientError and excinfo.value.status == status
    assert len(server.requests) == 1 and cancel.waits == []


def test_every_post_to_the_api_says_json_and_no_get_needs_to(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(ok({"upload_id": "u1", "upload_url": SIGNED, "run_id": "r", "runs": [], "id": "app"}))
    client, _ = make_client(server)

    client.new_upload("app")
    client.create_run("app", {"upload_id": "u1"}, None)
    client.list_runs("app")
    client.get_application("app")

    assert [(r.method, r.headers.get("Content-Type")) for r in server.requests] == [
        ("POST", "application/json"), ("POST", "application/json"), ("GET", None), ("GET", None)]


# --- create_run: never posted twice blindly ------------------------------------------------------


@pytest.mark.parametrize("failure", [
    httpx.ReadTimeout("timed out"),
    httpx.RemoteProtocolError("server disconnected"),
    httpx.WriteTimeout("timed out"),
    error(500, "internal"),
    error(504, "gateway timeout"),
    error(408, "request timeout"),
])
def test_create_run_cut_off_after_sending_is_uncertain_and_not_retried(
        failure: httpx.Response | Exception, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(failure, ok({"run_id": "dup"}))
    client, cancel = make_client(server)

    with pytest.raises(UncertainError):
        client.create_run("app", {"upload_id": "u"}, None)

    assert len(server.requests) == 1
    assert cancel.waits == []


@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"), httpx.ConnectTimeout("timed out")])
def test_create_run_that_never_reached_the_server_is_retried(
        failure: Exception, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(failure, ok({"run_id": "run-1"}))
    client, cancel = make_client(server)

    assert client.create_run("app", {"upload_id": "u"}, None) == "run-1"
    assert len(server.requests) == 2
    assert len(cancel.waits) == 1


@pytest.mark.parametrize("answer", [
    httpx.Response(201, text="<html>created</html>"),
    ok(["run-1"]),
    ok({"id": "run-1"}),
])
def test_create_run_with_an_unreadable_success_answer_is_uncertain(
        answer: httpx.Response, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    """A 2xx means the run was created: it must be looked up, never posted again."""
    server = Server(answer)
    client, _ = make_client(server)

    with pytest.raises(UncertainError):
        client.create_run("app", {"upload_id": "u"}, None)

    assert len(server.requests) == 1


def test_other_requests_are_retried_after_a_read_timeout(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(httpx.ReadTimeout("timed out"), ok({"upload_id": "u1", "upload_url": SIGNED}))
    client, _ = make_client(server)

    assert client.new_upload("app").upload_id == "u1"
    assert len(server.requests) == 2


# --- secrets stay out of error messages -----------------------------------------------------------


def test_network_errors_do_not_leak_the_url_or_the_key(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b"{}")

    def leaky(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url} with {request.headers.get('Authorization')}")

    client, _ = make_client(Server(leaky), attempts=2)

    with pytest.raises(TransientError) as put_error:
        client.put_file(target(), opener(path), 2)
    with pytest.raises(TransientError) as api_error:
        client.get_application("app")

    assert "ConnectError" in str(put_error.value)
    assert_clean(put_error.value)
    assert_clean(api_error.value)


def test_an_uncertain_create_run_does_not_leak_the_key(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    client, _ = make_client(Server(httpx.ReadTimeout(f"read timed out, Authorization: Bearer {KEY}")))

    with pytest.raises(UncertainError) as excinfo:
        client.create_run("app", {"upload_id": "u"}, None)

    assert_clean(excinfo.value)


# --- list_runs -----------------------------------------------------------------------------------


def test_list_runs_pages_with_pagereturn_and_pagetoken(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(ok({"runs": [{"id": "r2"}, {"id": "r1"}, "junk"], "next_page_token": "t2"}),
                    ok({"runs": [{"id": "r0"}], "next_page_token": ""}))
    client, _ = make_client(server)

    first = client.list_runs("app")
    second = client.list_runs("app", "t2")

    assert first == ([{"id": "r2"}, {"id": "r1"}], "t2")
    assert second == ([{"id": "r0"}], None)
    assert [dict(r.url.params) for r in server.requests] == [
        {"pagereturn": "true"}, {"pagereturn": "true", "pagetoken": "t2"}]
    assert {r.url.path for r in server.requests} == {"/v1/applications/app/runs"}


def test_list_runs_of_an_unexpected_shape_is_transient(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    client, _ = make_client(Server(ok({"runs": {"id": "r"}})))

    with pytest.raises(TransientError, match="unexpected response shape"):
        client.list_runs("app")


# --- observer ------------------------------------------------------------------------------------


def test_the_observer_sees_every_attempt(
        outcomes: list[RequestOutcome], make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    server = Server(httpx.ConnectError("refused"), error(503), ok({"id": "app"}))
    client, _ = make_client(server)
    client.get_application("app")
    server.answers = [error(401)]
    with pytest.raises(AuthError):
        client.get_application("app")

    assert [(o.endpoint, o.status, o.error) for o in outcomes] == [
        ("get_application", None, TransientError),
        ("get_application", 503, TransientError),
        ("get_application", 200, None),
        ("get_application", 401, AuthError),
    ]
    assert all(o.seconds >= 0 for o in outcomes)


def test_outcomes_carry_a_put_s_size_and_a_429_s_retry_after(
        tmp_path: Path, outcomes: list[RequestOutcome],
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    """What the concurrency limit judges PUTs by (seconds per MiB) and what the gate holds for."""
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3000)
    server = Server(httpx.Response(429, json={"error": "slow down"}, headers={"Retry-After": "7"}),
                    ok({"id": "app"}))
    client, _ = make_client(server)
    client.get_application("app")
    server.answers = [httpx.Response(200)]
    client.put_file(target(), opener(path), 3000)

    assert [(o.endpoint, o.status, o.size, o.retry_after) for o in outcomes] == [
        ("get_application", 429, 0, 7.0), ("get_application", 200, 0, None), ("put", 200, 3000, None)]


def test_api_calls_wait_out_the_hold_and_uploads_do_not(
        tmp_path: Path, outcomes: list[RequestOutcome]) -> None:
    """A 429's Retry-After holds every API call (the gate's hold, asked before each one); a presigned PUT
    goes to the storage and never asks."""
    path = tmp_path / "f"
    path.write_bytes(b"{}")
    holds = [3.0, 1.0, 0.0]   # what the hold says each time it is asked
    asked: list[str] = []
    server = Server(ok({"id": "app"}))
    cancel = RecordingEvent()

    def hold() -> float:
        asked.append(f"hold {holds[0]}")
        return holds.pop(0) if len(holds) > 1 else holds[0]

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"sent {request.method}")
        return server(request)

    client = NextmvClient(BASE, KEY, transport=httpx.MockTransport(handler), cancel=cancel,
                          observer=outcomes.append, hold=hold)
    client.get_application("app")
    client.put_file(target(), opener(path), 2)
    client.close()

    assert asked == ["hold 3.0", "hold 1.0", "hold 0.0", "sent GET", "sent PUT"]
    assert cancel.waits == [3.0, 1.0]


# --- every read bounded ----------------------------------------------------------------------------


def streamed(head: bytes, megabytes: int, served: list[int]) -> Iterator[bytes]:
    """`head`, then `megabytes` MiB of spaces, counting in `served` what the client pulled."""
    yield head
    for _ in range(megabytes * 1024):
        served.append(1024)
        yield b" " * 1024


def test_only_the_head_of_an_api_error_body_is_read(
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    """A proxy's error page, or a misbehaving API, never makes the client read an error body in full."""
    served: list[int] = []
    server = Server(lambda request: httpx.Response(502, content=streamed(b'{"error": "bad gateway"}', 64, served)))
    client, _ = make_client(server, attempts=1)

    with pytest.raises(TransientError, match="get_application: HTTP 502") as excinfo:
        client.get_application("app")

    assert sum(served) <= 64 * 1024
    assert len(str(excinfo.value)) < 600


@pytest.mark.parametrize(("call", "expected"), [
    (lambda c: c.list_runs("app"), TransientError),
    (lambda c: c.create_run("app", {"upload_id": "u"}, None), UncertainError),   # the run may exist
])
def test_an_api_answer_larger_than_the_bound_is_not_read_in_full(
        call: Callable[[NextmvClient], object], expected: type[ApiError],
        make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    served: list[int] = []
    server = Server(lambda request: httpx.Response(200, content=streamed(b'{"runs": [], "run_id": "r"', 64, served)))
    client, cancel = make_client(server)

    with pytest.raises(expected, match="larger than") as excinfo:
        call(client)

    assert type(excinfo.value) is expected
    assert sum(served) <= 9 * 2**20
    assert len(server.requests) == 1 and cancel.waits == []


# --- a source that changed while it was uploaded --------------------------------------------------


@pytest.mark.parametrize(("on_disk", "declared", "what"), [(b"0123456789ab", 10, "grew"), (b"0123", 10, "shrank")])
def test_a_put_source_of_another_length_than_declared_is_a_changed_folder(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]], on_disk: bytes,
        declared: int, what: str) -> None:
    path = tmp_path / "output.json"
    path.write_bytes(on_disk)
    server = Server(httpx.Response(200))
    client, _ = make_client(server)

    with pytest.raises(FolderChanged) as caught:
        client.put_file(target(), opener(path), declared, folder="/runs/r1", label="output output.json")

    assert caught.value.folder == "/runs/r1"
    assert caught.value.problem == (f"output output.json {what} while being uploaded "
                                    f"({declared:,} bytes declared, {len(on_disk):,} now)")
    assert all(len(body) <= declared for body in server.bodies), "never a byte more than declared"


def test_the_http_librarys_length_mismatch_is_a_changed_folder_when_the_file_changed(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    """Whichever layer notices: h11's own error (httpx lets it through untranslated) checked by fstat."""
    path = tmp_path / "output.json"
    path.write_bytes(b"0123456789")

    def grows_meanwhile(request: httpx.Request) -> httpx.Response:
        path.write_bytes(b"0123456789abc")
        raise h11.LocalProtocolError("Too much data for declared Content-Length")

    client, _ = make_client(Server(grows_meanwhile))
    with pytest.raises(FolderChanged, match=r"output.json grew while being uploaded \(10 bytes declared, 13 now\)"):
        client.put_file(target(), opener(path), 10, folder="/runs/r1", label="output.json")

    # The same error with the file as declared is no change: a bug, raised as it is (with its trace).
    client, _ = make_client(Server(h11.LocalProtocolError("Too little data for declared Content-Length")))
    with pytest.raises(h11.LocalProtocolError):
        client.put_file(target(), opener(path), 13, folder="/runs/r1", label="output.json")
