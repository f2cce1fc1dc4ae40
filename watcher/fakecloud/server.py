"""The HTTP layer: a threading HTTP/1.1 server whose handler parses, injects faults and answers.

Per request: route, then (except for /_fake/*) a hold (holds.py), latency, a `before` fault (status
or reset, request not processed), the endpoint, then an `after` fault (status or reset replacing the
real answer).
The body is always fully read before answering so keep-alive connections stay in sync; a reset
closes the socket with SO_LINGER 0, which makes the kernel send RST instead of FIN.
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

from watcher.fakecloud.api import Api, Request, Response, error_response, route
from watcher.fakecloud.body import BodyError, BodyReader
from watcher.fakecloud.control import handle_control
from watcher.fakecloud.faults import ENDPOINTS, Decision, Injected
from watcher.fakecloud.records import RequestRecord

_LINGER_RESET = struct.pack("ii", 1, 0)
_NO_FAULT = Decision()


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
            record.send(error_response(400, "malformed Content-Length or Transfer-Encoding"), close=True)
            return
        body = BodyReader(self.rfile, content_length, chunked)
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
                record.inject(decision.before, body)
                return
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
            )
            response = api.handle(request)
            body.drain()
            if decision.after is not None:
                record.inject(decision.after, body)
            else:
                record.send(response)
        except (BodyError, OSError):
            record.abort()  # the client went away or sent garbage: nothing sensible can be answered
        except Exception as exc:  # noqa: BLE001 - an emulator bug must reach the test as a 500, not kill the thread
            api.log.internal_error(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(BodyError, OSError):
                body.drain()
                record.send(error_response(500, "internal emulator error"), close=True)

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

    def _record(self, status: int | None) -> None:
        if not self._done:
            self._done = True
            record = dataclasses.replace(self._template, status=status)
            cast(Server, self._handler.server).api.log.add(record)

    def send(self, response: Response, close: bool = False) -> None:
        self._record(response.status)
        self._handler.send_complete(response, close)

    def inject(self, injected: Injected, body: BodyReader) -> None:
        if injected.status is None:
            self._record(None)
            self._handler.reset()
            return
        body.drain()
        headers: tuple[tuple[str, str], ...] = ()
        if injected.retry_after is not None:
            headers = (("Retry-After", _seconds(injected.retry_after)),)
        status = injected.status
        message = "rate limit exceeded" if status == 429 else f"injected fault: HTTP {status}"
        self.send(error_response(status, message, headers))

    def abort(self) -> None:
        self._record(None)
        self._handler.close_connection = True


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
