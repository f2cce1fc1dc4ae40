"""The HTTP layer: a threading HTTP/1.1 server whose handler parses, injects faults and answers.

Per request: route, then (except for /_fake/*) a hold (holds.py), latency, a `before` fault (status
or reset, request not processed), the endpoint, then an `after` fault (status or reset replacing the
real answer). Injected answers on the presigned PUT are S3's XML errors (s3errors.py), elsewhere JSON.
The body is read before answering so keep-alive connections stay in sync, except for an answer
marked `unread_body` (S3 refusing an upload by its declared length): it is sent first, then the
connection is closed after discarding what the client still sends (a lingering close, so that the
client reads the answer instead of a reset). A reset closes the socket with SO_LINGER 0, which
makes the kernel send RST instead of FIN.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast
from urllib.parse import parse_qsl

from watcher.fakecloud import s3errors
from watcher.fakecloud.api import Api, route
from watcher.fakecloud.body import BodyError, BodyReader
from watcher.fakecloud.control import handle_control
from watcher.fakecloud.faults import ENDPOINTS, Decision, Injected
from watcher.fakecloud.messages import Request, Response, error_response
from watcher.fakecloud.presigned import view
from watcher.fakecloud.records import RequestRecord

_LINGER_RESET = struct.pack("ii", 1, 0)
_NO_FAULT = Decision()
# A lingering close discards at most this long, each read waiting at most _LINGER_READ_SECONDS.
_LINGER_SECONDS = 5.0
_LINGER_READ_SECONDS = 1.0


class Server(ThreadingHTTPServer):
    """Serves `api` on `address`, over TLS when `ssl_context` is given; one daemon thread per connection."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # benchmarks open many connections at once; the default backlog is 5

    def __init__(self, address: tuple[str, int], api: Api, ssl_context: ssl.SSLContext | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.api = api
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, Handler)
        if ssl_context is not None:
            # The handshake happens in the connection's own thread (Handler.handle), not in the accept loop.
            self.socket = ssl_context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def track(self, conn: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            if is_open:
                self._open.add(conn)
            else:
                self._open.discard(conn)

    def close_connections(self) -> None:
        """Shut down every open connection so idle keep-alive handler threads end now."""
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients dropping connections (OSError, including TLS errors) are normal; anything else is
        # a bug in the emulator, kept for tests to assert on instead of printed to stderr.
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, OSError):
            self.api.log.internal_error(f"{type(exc).__name__}: {exc}")


class Handler(BaseHTTPRequestHandler):
    """One connection; `handle_one_request` calls `_dispatch` for each request on it."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-nextmv"
    sys_version = ""
    disable_nagle_algorithm = True
    # Buffered writes: status line, headers and body leave in one segment, flushed by the base class
    # after each request.
    wbufsize = 1 << 16

    def setup(self) -> None:
        super().setup()
        cloud = cast(Server, self.server)
        cloud.track(self.connection, True)
        cloud.api.log.connection_opened()

    def handle(self) -> None:
        # Here rather than in setup() so that finish() runs (and untracks the socket) if it fails.
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()
        super().handle()

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            cast(Server, self.server).track(self.connection, False)

    def log_message(self, format: str, *args: object) -> None:
        """Silent: benchmarks push thousands of requests, and lines could carry signed URLs."""

    def handle_expect_100(self) -> bool:
        accepted = super().handle_expect_100()
        self.wfile.flush()  # the buffered "100 Continue" must go out before we wait for the body
        return accepted

    def _dispatch(self) -> None:
        api = cast(Server, self.server).api
        path, _, query_string = self.path.partition("?")
        endpoint, params = route(self.command, path)
        headers = self.headers
        transfer = headers.get("Transfer-Encoding")
        chunked = transfer is not None and "chunked" in transfer.lower()
        content_length = _content_length(headers.get("Content-Length"))
        record = _Recorder(
            self,
            RequestRecord(
                endpoint=endpoint,
                method=self.command,
                path=path,
                status=None,
                has_authorization=headers.get("Authorization") is not None,
                content_length=None if content_length == -1 else content_length,
                chunked=chunked,
                content_type=headers.get("Content-Type"),
            ),
        )
        if content_length == -1 or (transfer is not None and not chunked):
            record.send(_framing_error(endpoint, bad_length=content_length == -1), close=True)
            return
        body = BodyReader(self.rfile, content_length, chunked)
        request = Request(
            method=self.command,
            path=path,
            endpoint=endpoint,
            params=params,
            query=dict(parse_qsl(query_string, keep_blank_values=True)),
            authorization=headers.get("Authorization"),
            content_length=None if chunked else content_length,
            chunked=chunked,
            body=body,
            host=headers.get("Host", ""),
        )
        try:
            if endpoint == "control":
                record.send(handle_control(api, self.command, path, body))
                return
            if endpoint in ENDPOINTS:
                api.holds.wait(endpoint, None if chunked else content_length)
            # Unknown paths are never faulted: their 404 is the answer under test.
            decision = api.faults.decide(endpoint) if endpoint in ENDPOINTS else _NO_FAULT
            if decision.latency > 0:
                time.sleep(decision.latency)
            if decision.before is not None:
                record.inject(decision.before, request)
                return
            response = api.handle(request)
            if response.unread_body:
                record.send(response, close=True)
                self.linger(body)
                return
            body.drain()
            if decision.after is not None:
                record.inject(decision.after, request)
            else:
                record.send(response)
        except (BodyError, OSError):
            record.abort()  # the client went away or sent garbage: nothing sensible can be answered
        except Exception as exc:  # noqa: BLE001 - an emulator bug must reach the test as a 500, not kill the thread
            api.log.internal_error(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(BodyError, OSError):
                body.drain()
                failed = s3errors.s3_error(500, "InternalError") if endpoint == "put" else \
                    error_response(500, "internal emulator error")
                record.send(failed, close=True)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def send_complete(self, response: Response, close: bool) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        if close:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        self.wfile.write(response.body)

    def linger(self, body: BodyReader) -> None:
        """After an answer sent before the body: discard what the client still sends (bounded in time),
        so that closing sends FIN rather than RST and the client gets to read the answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.settimeout(_LINGER_READ_SECONDS)
        deadline = time.monotonic() + _LINGER_SECONDS
        with contextlib.suppress(BodyError, OSError):
            for _ in body.chunks():
                if time.monotonic() > deadline:
                    break

    def reset(self) -> None:
        """Close the connection with RST and no response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        # The fd really closes (RST) when finish() closes rfile/wfile, which hold references to it.
        self.connection.close()


class _Recorder:
    """Sends or withholds the response for one request and records what happened."""

    def __init__(self, handler: Handler, template: RequestRecord) -> None:
        self._handler = handler
        self._template = template  # everything but the status
        self._done = False

    def _record(self, status: int | None, s3_code: str | None = None) -> None:
        if not self._done:
            self._done = True
            record = dataclasses.replace(self._template, status=status, s3_code=s3_code)
            cast(Server, self._handler.server).api.log.add(record)

    def send(self, response: Response, close: bool = False) -> None:
        self._record(response.status, response.s3_code)
        self._handler.send_complete(response, close)

    def inject(self, injected: Injected, request: Request) -> None:
        if injected.status is None:
            self._record(None)
            self._handler.reset()
            return
        request.body.drain()
        headers: tuple[tuple[str, str], ...] = ()
        if injected.retry_after is not None:
            headers = (("Retry-After", _seconds(injected.retry_after)),)
        status = injected.status
        if request.endpoint == "put":
            api = cast(Server, self._handler.server).api
            response = s3errors.injected(status, injected.code, view(request), api.signer)
            response = dataclasses.replace(response, headers=(*response.headers, *headers))
            # S3 closes the connection it gave up reading.
            self.send(response, close=injected.code == "RequestTimeout")
            return
        message = "rate limit exceeded" if status == 429 else f"injected fault: HTTP {status}"
        self.send(error_response(status, message, headers))

    def abort(self) -> None:
        self._record(None)
        self._handler.close_connection = True


def _framing_error(endpoint: str, *, bad_length: bool) -> Response:
    if endpoint != "put":
        return error_response(400, "malformed Content-Length or Transfer-Encoding")
    if bad_length:
        return s3errors.s3_error(400, "BadRequest", message="An error occurred when parsing the HTTP request.")
    return s3errors.chunked_refused()  # a transfer coding S3 does not implement


def _content_length(value: str | None) -> int | None:
    """The declared length, None when absent, -1 when malformed."""
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or not value.isascii():
        return -1
    return int(value)


def _seconds(value: float) -> str:
    """Retry-After value: whole seconds as an integer (as servers send it), else a decimal."""
    if math.isclose(value, round(value)):
        return str(round(value))
    return f"{value:.3f}".rstrip("0")
