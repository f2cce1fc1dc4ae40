"""watcher.cloud.transport against real sockets on 127.0.0.1: servers that answer as a script says,
byte for byte, so that keep-alive, early answers, closed connections and timeouts are the real thing."""

from __future__ import annotations

import io
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
from helpers import self_signed, wait_for

from watcher.cloud.client import NextmvClient, RequestOutcome, UploadTarget
from watcher.cloud.transport import H11Transport, plain_target
from watcher.errors import TransientError

Handler = Callable[[socket.socket, int], None]   # one accepted connection, and its number (0, 1, ...)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Server:
    """Accepts connections on 127.0.0.1 and runs `handler` on each in its own thread."""

    def __init__(self, handler: Handler, context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.context else 'http'}://{'localhost' if self.context else '127.0.0.1'}:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            number, self.accepted = self.accepted, self.accepted + 1
            threading.Thread(target=self._run, args=(conn, number), daemon=True).start()

    def _run(self, conn: socket.socket, number: int) -> None:
        try:
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            with conn:
                self.handler(conn, number)
        except (OSError, h11.ProtocolError) as exc:
            self.errors.append(exc)

    def close(self) -> None:
        """Stop accepting: shutdown wakes the blocked accept (a close alone would not), then wait for it."""
        self.listener.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self.listener.close()


def read_request(conn: socket.socket, h: h11.Connection) -> tuple[h11.Request, bytes]:
    """One whole request (head and body) from `conn`."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = h.next_event()
        if event is h11.NEED_DATA:
            h.receive_data(conn.recv(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionResetError("client closed")


Seen = list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]]


def recording(seen: Seen, answer: Callable[[bytes], bytes],
              before: Callable[[h11.Request], object] = lambda request: None) -> Handler:
    """Keeps every request (method, target, headers, body) in `seen`; answers 200 with `answer(target)`,
    after `before(request)` returned."""
    def handler(conn: socket.socket, _: int) -> None:
        h = h11.Connection(h11.SERVER)
        while True:
            try:
                request, body = read_request(conn, h)
            except ConnectionResetError:
                return
            before(request)
            seen.append((request.method, request.target, list(request.headers), body))
            data = answer(request.target)
            conn.sendall(h.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(data)))])) +
                         h.send(h11.Data(data=data)) + h.send(h11.EndOfMessage()))
            h.start_next_cycle()
    return handler


def keep_alive(body: bytes = b"ok", targets: list[bytes] | None = None) -> Handler:
    """Answers every request on the connection with 200 and `body` (and notes its target in `targets`),
    until the client closes it."""
    def answer(target: bytes) -> bytes:
        if targets is not None:
            targets.append(target)
        return body
    return recording([], answer)


def answer_once(raw: bytes) -> Handler:
    """Reads one request, sends `raw` as it is, and closes the connection."""
    def handler(conn: socket.socket, _: int) -> None:
        read_request(conn, h11.Connection(h11.SERVER))
        conn.sendall(raw)
    return handler


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(handler: Handler, context: ssl.SSLContext | None = None) -> Server:
        servers.append(Server(handler, context))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def transport() -> Iterator[H11Transport]:
    t = H11Transport(ssl.create_default_context())
    yield t
    t.close()


def send(transport: H11Transport, method: str, url: str, content: bytes | Iterator[bytes] | None = None,
         headers: dict[str, str] | None = None, timeout: float = 5.0) -> httpx.Response:
    request = httpx.Request(method, url, content=content, headers=headers,
                            extensions={"timeout": httpx.Timeout(timeout).as_dict()})
    response = transport.handle_request(request)
    response.read()
    response.close()
    return response


def test_a_connection_is_kept_alive_for_the_next_request(serve, transport):
    server = serve(keep_alive())
    for _ in range(3):
        assert send(transport, "POST", f"{server.url}/v1/x", b"{}").content == b"ok"
    assert server.accepted == 1


def test_an_idle_connection_the_server_closed_is_not_used_again(serve, transport):
    closed = threading.Event()

    def handler(conn: socket.socket, number: int) -> None:
        read_request(conn, h11.Connection(h11.SERVER))
        conn.sendall(OK)
        if number == 0:
            conn.shutdown(socket.SHUT_RDWR)   # as a server closing an idle keep-alive connection
            closed.set()

    server = serve(handler)
    assert send(transport, "GET", f"{server.url}/a").status_code == 200
    assert closed.wait(5)
    # the server's FIN may still be on its way (loopback under load): wait until the kept socket reads it
    kept = next(iter(transport._idle.values()))[0].sock
    wait_for(lambda: select.select([kept], [], [], 0)[0], 5, "the server's close seen by the kept connection")
    assert send(transport, "GET", f"{server.url}/b").status_code == 200
    assert server.accepted == 2


def test_an_answer_with_connection_close_is_not_kept(serve, transport):
    server = serve(answer_once(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"))
    send(transport, "GET", f"{server.url}/a")
    send(transport, "GET", f"{server.url}/b")
    assert server.accepted == 2


def test_an_answer_sent_before_the_body_is_returned_not_the_write_error(serve, transport):
    """S3 answers a slow or oversized upload with its error and closes: the answer is what the caller sees."""
    error = b"<Error><Code>RequestTimeout</Code></Error>"

    def handler(conn: socket.socket, _: int) -> None:
        h = h11.Connection(h11.SERVER)
        while not isinstance(h.next_event(), h11.Request):
            h.receive_data(conn.recv(4096))
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (len(error), error))
        conn.shutdown(socket.SHUT_WR)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset

    server = serve(handler)
    size = 64 << 20
    chunks = (b"x" * (1 << 20) for _ in range(64))
    response = send(transport, "PUT", f"{server.url}/bucket/key?X-Amz-Signature=s", chunks,
                    {"Content-Length": str(size)})
    assert response.status_code == 400
    assert response.content == error


@pytest.fixture(params=["http", "https"])
def scheme_transport(request, serve, tmp_path) -> Iterator[tuple[Callable[[Handler], Server], H11Transport]]:
    """A server starter and a transport for each scheme: a socket's timeouts are the kernel's
    (SO_RCVTIMEO/SO_SNDTIMEO), TLS going through memory buffers (`tlsbio`), and both must end in
    httpx's timeouts."""
    server_ctx, client_ctx = tls_contexts(tmp_path) if request.param == "https" else (None, None)
    t = H11Transport(client_ctx or ssl.create_default_context())
    yield (lambda handler: serve(handler, server_ctx)), t
    t.close()


def test_a_read_timeout_is_httpx_read_timeout_and_the_connection_is_dropped(scheme_transport):
    start, transport = scheme_transport
    release = threading.Event()

    def handler(conn: socket.socket, number: int) -> None:
        read_request(conn, h11.Connection(h11.SERVER))
        if number == 0:
            release.wait(10)
        else:
            conn.sendall(OK)

    server = start(handler)
    with pytest.raises(httpx.ReadTimeout):
        send(transport, "GET", f"{server.url}/slow", timeout=0.2)
    release.set()
    assert send(transport, "GET", f"{server.url}/next").status_code == 200
    assert server.accepted == 2


def test_a_server_that_stops_reading_the_body_is_a_write_timeout(scheme_transport):
    start, transport = scheme_transport
    release = threading.Event()

    def handler(conn: socket.socket, _: int) -> None:
        h = h11.Connection(h11.SERVER)
        while not isinstance(h.next_event(), h11.Request):   # the head, then nothing more is read
            h.receive_data(conn.recv(4096))
        release.wait(10)

    server = start(handler)
    chunks = (b"x" * (1 << 20) for _ in range(256))
    try:
        with pytest.raises(httpx.WriteTimeout):
            send(transport, "PUT", f"{server.url}/bucket/key", chunks, {"Content-Length": str(256 << 20)},
                 timeout=0.3)
    finally:
        release.set()


def test_a_refused_connection_is_connect_error_without_the_url(transport):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(httpx.ConnectError) as caught:
        send(transport, "PUT", f"http://127.0.0.1:{port}/k?X-Amz-Signature=secret", b"{}")
    assert "secret" not in str(caught.value) and str(port) not in str(caught.value)


def test_a_server_that_closes_without_answering_is_a_remote_protocol_error(serve, transport):
    server = serve(answer_once(b""))
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        send(transport, "POST", f"{server.url}/v1/runs", b"{}")


def test_what_the_body_raises_propagates_and_the_connection_is_not_reused(serve, transport):
    server = serve(keep_alive())
    send(transport, "GET", f"{server.url}/warm")

    def body() -> Iterator[bytes]:
        yield b"{"
        raise PermissionError("the file was made unreadable")

    with pytest.raises(PermissionError, match="unreadable"):
        send(transport, "PUT", f"{server.url}/k", body(), {"Content-Length": "2"})
    assert send(transport, "GET", f"{server.url}/after").status_code == 200
    assert server.accepted == 2


def test_a_body_longer_than_its_content_length_is_h11s_local_protocol_error(serve, transport):
    """watcher.cloud.putbody tells a file that grew mid-upload by this error."""
    server = serve(keep_alive())
    with pytest.raises(h11.LocalProtocolError, match="Too much data"):
        send(transport, "PUT", f"{server.url}/k", iter([b"abc"]), {"Content-Length": "2"})


def test_an_answer_read_in_part_drops_its_connection(serve, transport):
    body = b"y" * 100_000
    server = serve(keep_alive(body))
    request = httpx.Request("GET", f"{server.url}/big", extensions={"timeout": httpx.Timeout(5).as_dict()})
    response = transport.handle_request(request)
    first = next(response.iter_raw())
    response.close()
    assert 0 < len(first) < len(body)
    assert send(transport, "GET", f"{server.url}/again").content == body
    assert server.accepted == 2


def test_a_chunked_answer_is_read_whole(serve, transport):
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    server = serve(answer_once(chunked))
    assert send(transport, "GET", f"{server.url}/c").content == b"abcde"


def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for localhost, and a client context trusting it."""
    cert, key = self_signed(tmp_path, "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


def test_https_with_a_trusted_ca_keeps_its_connection_and_an_untrusted_one_is_refused(serve, tmp_path):
    server_ctx, client_ctx = tls_contexts(tmp_path)
    server = serve(keep_alive(), server_ctx)
    trusted = H11Transport(client_ctx)
    try:
        for _ in range(2):
            assert send(trusted, "GET", f"{server.url}/s").content == b"ok"
        assert server.accepted == 1
    finally:
        trusted.close()
    stranger = H11Transport(ssl.create_default_context())
    try:
        with pytest.raises(httpx.ConnectError, match="TLS handshake failed"):
            send(stranger, "GET", f"{server.url}/s")
    finally:
        stranger.close()


def test_a_tls_handshake_left_unanswered_is_a_connect_timeout(serve, tmp_path):
    """The handshake waits with the kernel's timeout (the connect timeout), and ends in httpx's error."""
    _, client_ctx = tls_contexts(tmp_path)
    release = threading.Event()
    server = serve(lambda conn, number: release.wait(10))   # accepts, and never answers the ClientHello
    transport = H11Transport(client_ctx)
    try:
        with pytest.raises(httpx.ConnectTimeout, match="TLS handshake"):
            send(transport, "GET", f"https://localhost:{server.port}/s", timeout=0.3)
    finally:
        release.set()
        transport.close()


def test_a_tls_server_that_closes_without_close_notify_ends_a_body_read_to_the_close(serve, tmp_path):
    """A body framed by the connection's end, which the server ends with a TCP close and no TLS
    close_notify (many do): the body as sent, as an SSLSocket with `suppress_ragged_eofs` reads it."""
    server_ctx, client_ctx = tls_contexts(tmp_path)

    def handler(conn: socket.socket, _: int) -> None:
        read_request(conn, h11.Connection(h11.SERVER))
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end")
        conn.shutdown(socket.SHUT_RDWR)   # an SSLSocket's shutdown is the TCP one: no close_notify

    server = serve(handler, server_ctx)
    transport = H11Transport(client_ctx)
    try:
        assert send(transport, "GET", f"{server.url}/s").content == b"to the end"
    finally:
        transport.close()


def test_the_client_uses_it_and_a_proxy_from_the_environment_still_gets_the_requests(serve, monkeypatch):
    """Without a proxy the API client's requests go straight to the API on one kept connection; with
    HTTP_PROXY set they go to the proxy (httpx's own transport), in absolute form."""
    targets: list[bytes] = []
    handler = keep_alive(b'{"id": "app-1"}', targets)
    api = serve(handler)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    direct = NextmvClient(api.url, "key")
    try:
        assert direct.get_application("app-1") == {"id": "app-1"}
        assert direct.get_application("app-1") == {"id": "app-1"}
    finally:
        direct.close()
    assert targets == [b"/v1/applications/app-1"] * 2 and api.accepted == 1

    proxy = serve(handler)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    proxied = NextmvClient("http://api.example.invalid", "key")
    try:
        assert proxied.get_application("app-1") == {"id": "app-1"}
    finally:
        proxied.close()
    assert targets[-1] == b"http://api.example.invalid/v1/applications/app-1"


def test_the_client_makes_its_tls_context_at_the_first_https_connection_only(serve, tmp_path, monkeypatch):
    """httpx's default context loads certifi's bundle (30-55 ms of every process's start): an API and upload
    URLs on plain HTTP never need it. The first HTTPS connection makes it, once, and it verifies."""
    made: list[ssl.SSLContext] = []
    real = httpx.create_ssl_context

    def recording(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(httpx, "create_ssl_context", recording)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    plain = serve(keep_alive(b'{"id": "app-1"}'))
    server_ctx, _ = tls_contexts(tmp_path)
    secure = serve(keep_alive(b'{"id": "app-1"}'), server_ctx)
    client = NextmvClient(plain.url, "key", attempts=1)
    try:
        assert client.get_application("app-1") == {"id": "app-1"}
        assert made == []
        client.base_url = f"https://localhost:{secure.port}"
        with pytest.raises(TransientError, match="ConnectError"):   # certifi's CAs refuse a self-signed one
            client.get_application("app-1")
        with pytest.raises(TransientError, match="ConnectError"):
            client.get_application("app-1")
        assert len(made) == 1
    finally:
        client.close()


@pytest.mark.parametrize(("method", "content", "headers"), [
    ("GET", None, {}), ("POST", b"", {}), ("PUT", None, {}),
    ("POST", b'{"a": 1}', {"Content-Type": "application/json"}), ("POST", b"xyz", {"Content-Length": "3"}),
    ("PUT", [b"ab", b"c"], {"Content-Length": "3"}), ("PUT", [b"ab", b"c"], {})])
def test_send_frames_a_request_as_httpx_request_does(serve, transport, method, content, headers):
    seen: Seen = []
    server = serve(recording(seen, lambda target: b"ok"))
    url = f"{server.url}/p?q=1"
    timeouts = httpx.Timeout(5.0).as_dict()
    to = plain_target(url)
    assert to is not None
    transport.send(to, method, {"User-Agent": "t", **headers}, iter(content) if isinstance(content, list) else content,
                   timeouts).read()
    request = httpx.Request(method, url, headers={"User-Agent": "t", **headers},
                            content=iter(content) if isinstance(content, list) else content,
                            extensions={"timeout": timeouts})
    transport.handle_request(request).read()

    assert len(seen) == 2
    assert seen[0] == seen[1]


def test_the_client_sends_the_same_bytes_with_or_without_an_httpx_request(serve, monkeypatch):
    """A run's requests (upload URL, PUT, POST) and a look-up, sent once through `plain_target` and
    `H11Transport.send`, and once through httpx.Request (plain_target made to refuse every URL): the
    server receives the same method, target, headers and body each time."""
    seen: Seen = []
    answers = {b"/v1/applications/app-1/runs": b'{"run_id": "r1"}'}
    api = serve(recording(seen, lambda target: answers.get(target, b'{"id": "app-1"}')))
    answers[b"/v1/applications/app-1/runs/uploadurl"] = (
        b'{"upload_id": "u1", "upload_url": "%s/put/u1?X-Amz-Signature=s%%2Fx"}' % api.url.encode())

    def a_run() -> Seen:
        seen.clear()
        client = NextmvClient(api.url, "key")
        try:
            target = client.new_upload("app-1")
            client.put_file(target, lambda: io.BytesIO(b'{"x": 1}'), 8)
            assert client.create_run("app-1", {"upload_id": target.upload_id}, None) == "r1"
            client.get_application("app-1")
        finally:
            client.close()
        return list(seen)

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    without = a_run()
    monkeypatch.setattr("watcher.cloud.client.plain_target", lambda url: None)
    with_httpx = a_run()

    assert [(m, t) for m, t, _, _ in without] == [(b"POST", b"/v1/applications/app-1/runs/uploadurl"),
                                                  (b"PUT", b"/put/u1?X-Amz-Signature=s%2Fx"),
                                                  (b"POST", b"/v1/applications/app-1/runs"),
                                                  (b"GET", b"/v1/applications/app-1")]
    assert without == with_httpx


def test_requests_in_flight_together_are_all_sent_before_any_answer_is_read(serve, monkeypatch):
    """new_uploads and put_files: the server answers none of the requests until both have arrived (on two
    connections), which works only if the client sent both before reading an answer; each is observed."""
    both = {b"POST": threading.Barrier(2, timeout=5), b"PUT": threading.Barrier(2, timeout=5)}
    seen: Seen = []
    urls = iter(range(2))

    def answer(target: bytes) -> bytes:
        if target.endswith(b"/uploadurl"):
            return b'{"upload_id": "u%d", "upload_url": "%s/put/%d?sig=x"}' % (next(urls), api.url.encode(), 7)
        return b""

    api = serve(recording(seen, answer, before=lambda request: both[request.method].wait()))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    outcomes: list[RequestOutcome] = []
    holds: list[int] = []
    client = NextmvClient(api.url, "key", observer=outcomes.append, hold=lambda: holds.append(1) or 0.0)
    try:
        targets = client.new_uploads("app-1", 2)
        assert sorted(t.upload_id for t in targets if isinstance(t, UploadTarget)) == ["u0", "u1"]
        bodies = [b'{"a": 1}', b'{"b": 22}']
        failed = client.put_files([(t, lambda b=b: io.BytesIO(b), len(b), "x")  # type: ignore[misc]
                                   for t, b in zip(targets, bodies, strict=True)])
    finally:
        client.close()
    assert failed == [None, None]
    assert sorted(body for method, _, _, body in seen if method == b"PUT") == bodies
    assert [(o.endpoint, o.status, o.error) for o in outcomes] == [("uploadurl", 200, None)] * 2 + \
        [("put", 200, None)] * 2
    assert api.accepted == 2, "two connections, each used for an upload URL and then a PUT"
    assert len(holds) == 2, "each API call waited for its turn (a token of the pace), the PUTs none"


def test_an_error_among_requests_in_flight_together_stands_in_its_place(serve, monkeypatch):
    def handler(conn: socket.socket, number: int) -> None:
        read_request(conn, h11.Connection(h11.SERVER))
        if number == 0:
            data = b'{"upload_id": "u0", "upload_url": "http://127.0.0.1:9/put?sig=x"}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
        else:
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    api = serve(handler)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    client = NextmvClient(api.url, "key")
    try:
        first, second = client.new_uploads("app-1", 2)
    finally:
        client.close()
    assert isinstance(first, UploadTarget) and first.upload_id == "u0"
    assert isinstance(second, TransientError) and second.status == 503
