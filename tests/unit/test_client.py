"""NextmvClient over httpx.MockTransport: headers, streamed uploads, and the mapping of failures to our errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest

from watcher.cloud.backoff import Backoff
from watcher.cloud.client import NextmvClient, RequestOutcome, UploadTarget
from watcher.errors import (
    ApiError,
    ApplicationNotFound,
    AuthError,
    RejectedError,
    TransientError,
    UncertainError,
    UploadExpired,
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


def test_a_retried_put_sends_the_whole_file_again(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b'{"x": 1}')
    server = Server(httpx.Response(503), httpx.Response(200))
    client, _ = make_client(server)

    client.put_file(target(), opener(path), 8)

    assert server.bodies == [b'{"x": 1}', b'{"x": 1}']


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
    assert len(server.requests) == 1


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


def test_a_refused_put_is_rejected_not_an_auth_error(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b"{}")
    server = Server(httpx.Response(400, text=f"<Error>bad {SIGNED}</Error>"))
    client, _ = make_client(server)

    with pytest.raises(RejectedError) as excinfo:
        client.put_file(target(), opener(path), 2)

    assert_clean(excinfo.value)


def test_a_failing_put_keeps_the_storage_error_page_out_of_the_message(
        tmp_path: Path, make_client: Callable[..., tuple[NextmvClient, RecordingEvent]]) -> None:
    path = tmp_path / "input.json"
    path.write_bytes(b"{}")
    server = Server(httpx.Response(502, text=f"<html>upstream failed for {SIGNED}</html>"))
    client, _ = make_client(server, attempts=2)

    with pytest.raises(TransientError) as excinfo:
        client.put_file(target(), opener(path), 2)

    assert excinfo.value.status == 502
    assert len(server.requests) == 2
    assert_clean(excinfo.value)


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
