"""HTTP/1.1 for one thread: an httpx transport on h11 (the parser httpcore uses) and blocking sockets.

httpx's default transport, httpcore's connection pool, costs more Python per request than the request
itself: on this machine a run's five requests cost 3.8 ms of CPU through it from one thread and 5.6-8.8
ms from 32-64 threads, against 1.4-1.6 ms when each thread speaks h11 on its own keep-alive sockets
(issue 13; `bench/floor.py`). Every worker and upload thread already has its own client (`pools`),
so this transport serves one thread: no pool lock, no connection sharing, nothing to wait for.

What it keeps of httpcore's behaviour: a keep-alive connection is reused only while it is idle, quiet
(not readable: a server that closed it, or sent something unasked, makes it unusable) and younger than
`keepalive_expiry`; a request body is streamed from its iterator in the calling thread, so what reading
it raises propagates unchanged (`putbody`), and h11's `LocalProtocolError` on a body longer or shorter
than its Content-Length too; when the server answers before the body is all sent and closes (S3's 400
RequestTimeout, EntityTooLarge), that answer is returned, not the write's error; a response is read
lazily, so that the caller's bound (`answers`) holds; a connection whose exchange did not end cleanly
is closed, never reused. A socket blocks with the kernel's timeouts, since Python's poll before every
send and receive (a system call and a GIL release each, 10 per run over HTTP); TLS goes through memory
buffers over it (`tlsbio`: an SSLSocket would retry a kernel timeout for ever; measured over HTTPS, 19
system calls fewer per run, 35,117 -> 24,606 for 550 runs of one client with the emulator, `strace -c
-f`). Failures are httpx's: ConnectTimeout,
ConnectError (TLS included), WriteTimeout, WriteError, ReadTimeout, ReadError, RemoteProtocolError,
with messages that never name a URL.
A proxy named in the environment (HTTPS_PROXY and the like) is httpx's to apply, which it does only
for a client without a transport of its own: `for_thread` then leaves the client to httpx's transport.
"""

from __future__ import annotations

import re
import select
import socket
import ssl
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import h11
import httpx

from watcher.cloud import h1write
from watcher.cloud.tlsbio import BioSocket

READ_SIZE = 64 * 1024
SEND_BUFFER = 64 * 1024      # request bytes gathered before a send: a small request goes in one
KEEPALIVE_EXPIRY = 5.0       # seconds an idle connection is kept (httpcore's default)
MAX_IDLE_PER_ORIGIN = 4      # a thread's requests are sequential: one or two per origin are used

Origin = tuple[bytes, bytes, int]
Timeouts = Mapping[str, float | None]
# A URL that httpx would send exactly as written, so that it needs no httpx.URL (whose parsing costs
# 40-100 us, a presigned URL's the most): lowercase http(s) scheme and host name, a port, a path of
# unreserved characters, sub-delimiters and well-formed %-escapes, without dot segments, and such a query.
_PLAIN = re.compile(r"(https?)://([a-z0-9.-]+)(?::([0-9]{1,5}))?(/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*)", re.ASCII)
_REWRITTEN = re.compile(r"%(?![0-9A-Fa-f]{2})|/\.\.?(?:/|\?|$)")   # a bad %-escape, a dot segment
_DEFAULT_PORTS = {b"http": 80, b"https": 443}


class Target(NamedTuple):
    """Where a plain URL's request goes: its origin, its request target and its Host header."""

    origin: Origin
    target: bytes
    host: bytes


def plain_target(url: str) -> Target | None:
    """The `Target` of `url` when httpx would send it exactly as written (see `_PLAIN`), else None."""
    m = _PLAIN.fullmatch(url)
    if m is None or _REWRITTEN.search(m.group(4)):
        return None
    scheme, host = m.group(1).encode(), m.group(2).encode()
    default = _DEFAULT_PORTS[scheme]
    port = int(m.group(3)) if m.group(3) else default
    if not 0 < port < 65536 or not host:
        return None
    return Target((scheme, host, port), m.group(4).encode(), host if port == default else b"%s:%d" % (host, port))


class _Out(NamedTuple):
    """A request as it goes out; `request` is httpx's when there is one (for the errors raised)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: Iterable[bytes]
    request: httpx.Request | None


def build_verify(ca_bundle: Path | None) -> ssl.SSLContext | bool:
    """System CAs, plus `ca_bundle` when given (for TLS-intercepting proxies and tests)."""
    if ca_bundle is None:
        return True
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=str(ca_bundle))
    return ctx


def for_thread(context: ssl.SSLContext | Callable[[], ssl.SSLContext]) -> httpx.BaseTransport | None:
    """A thread's transport: its own `H11Transport`, or None (httpx's, with the environment's proxies)
    when the environment names a proxy."""
    proxies = {scheme for scheme in urllib.request.getproxies() if scheme != "no"}
    return None if proxies else H11Transport(context)


class H11Transport(httpx.BaseTransport):
    """One thread's connections. `close` may come from another thread (shutdown): it closes the idle ones."""

    def __init__(self, ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext], *,
                 keepalive_expiry: float = KEEPALIVE_EXPIRY) -> None:
        self._ssl = ssl_context if callable(ssl_context) else lambda: ssl_context   # asked for at TLS's first use
        self._expiry = keepalive_expiry
        self._idle: dict[Origin, list[_Connection]] = {}
        self._lock = threading.Lock()   # the idle lists: taken by this thread, and by `close`
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin: Origin = (url.raw_scheme, url.raw_host, url.port or _DEFAULT_PORTS.get(url.raw_scheme, 80))
        out = _Out(request.method.encode(), url.raw_path, request.headers.raw, request.stream, request)  # type: ignore[arg-type]
        return self._begin(origin, out, request.extensions.get("timeout", {})).finish()

    def send(self, to: Target, method: str, headers: Mapping[str, str], content: bytes | Iterable[bytes] | None,
             timeouts: Timeouts) -> httpx.Response:
        """`handle_request` without an httpx.Request, for a URL `plain_target` parsed."""
        return self.start(to, method, headers, content, timeouts).finish()

    def start(self, to: Target, method: str, headers: Mapping[str, str], content: bytes | Iterable[bytes] | None,
              timeouts: Timeouts) -> Exchange:
        """`send`'s first half: the request goes out on a connection of its own, and `Exchange.finish` reads
        its answer, so that a thread can have several requests in flight (their answers read in turn).
        The same bytes go out as httpx's: Host first, a POST's or PUT's empty body framed there too,
        `headers`, then the framing of a body (Content-Length in memory, chunked from an iterator)."""
        framed = any(k.lower() in ("content-length", "transfer-encoding") for k in headers)
        raw, framing = [(b"Host", to.host)], []
        if isinstance(content, bytes):
            if content and not framed:
                framing.append((b"Content-Length", b"%d" % len(content)))
            content = (content,) if content else ()
        elif content is not None and not framed:
            framing.append((b"Transfer-Encoding", b"chunked"))
        if not (framed or framing) and method in ("POST", "PUT", "PATCH"):
            raw.append((b"Content-Length", b"0"))
        raw += [(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
        out = _Out(method.encode("ascii"), to.target, raw + framing, content or (), None)
        return self._begin(to.origin, out, timeouts)

    def _begin(self, origin: Origin, out: _Out, timeouts: Timeouts) -> Exchange:
        conn = self._reuse(origin) or _Connection.open(origin, self._ssl, timeouts.get("connect"), out.request)
        try:
            failed = conn.send_request(out, timeouts)
        except BaseException:
            conn.close()
            raise
        return Exchange(self, conn, out, timeouts, failed)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _reuse(self, origin: Origin) -> _Connection | None:
        now = time.monotonic()
        while True:
            with self._lock:
                conns = self._idle.get(origin)
                conn = conns.pop() if conns else None
            if conn is None:
                return None
            if now - conn.idle_since < self._expiry and conn.quiet():
                return conn
            conn.close()

    def _release(self, conn: _Connection) -> None:
        """A connection whose exchange ended cleanly goes back to the idle ones (or is closed)."""
        if conn.h.our_state is h11.DONE and conn.h.their_state is h11.DONE:
            conn.h.start_next_cycle()
            conn.idle_since = time.monotonic()
            with self._lock:
                conns = self._idle.setdefault(conn.origin, [])
                if not self._closed and len(conns) < MAX_IDLE_PER_ORIGIN:
                    conns.append(conn)
                    return
        conn.close()


class Exchange:
    """A request sent (or whose sending failed: the server may have answered before it closed), its
    answer not read yet."""

    def __init__(self, transport: H11Transport, conn: _Connection, out: _Out, timeouts: Timeouts,
                 failed: _SendFailed | None) -> None:
        self._transport, self._conn, self._out, self._timeouts, self._failed = transport, conn, out, timeouts, failed

    def finish(self) -> httpx.Response:
        """The answer, its body read as the caller iterates (see `_Body`). Raises httpx's errors."""
        conn = self._conn
        try:
            event = conn.answer(self._out, self._timeouts, self._failed)
        except BaseException:
            conn.close()
            raise
        return httpx.Response(status_code=event.status_code, headers=event.headers,
                              stream=_Body(self._transport, conn, self._out.request, self._timeouts.get("read")),
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": event.reason})


class _Connection:
    def __init__(self, origin: Origin, sock: socket.socket | BioSocket, timeout: float | None) -> None:
        self.origin = origin
        self.sock = sock   # blocking, with the kernel's timeouts, `timeout` now (`open`)
        self.h = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self._poll: select.poll | None = None   # made on the first reuse, kept for the next ones
        self._timeout = timeout

    @classmethod
    def open(cls, origin: Origin, context: Callable[[], ssl.SSLContext], timeout: float | None,
             request: httpx.Request | None) -> _Connection:
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host.decode("ascii"), port), timeout=timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect: {_reason(exc)}", request=request) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The socket blocks, with the kernel's timeouts: Python's own poll before every send and
            # receive, one more system call (and GIL release) each.
            sock.settimeout(None)
            _set_kernel(sock, timeout)
            if scheme == b"https":
                tls = BioSocket(sock, context(), host.decode("ascii"))
                tls.handshake()
                return cls(origin, tls, timeout)
        except (TimeoutError, BlockingIOError):   # BlockingIOError: the kernel's timeout
            sock.close()
            raise httpx.ConnectTimeout("timed out in the TLS handshake", request=request) from None
        except OSError as exc:   # ssl.SSLError included: a certificate refused
            sock.close()
            raise httpx.ConnectError(f"TLS handshake failed: {_reason(exc)}", request=request) from None
        return cls(origin, sock, timeout)

    def quiet(self) -> bool:
        """Idle and nothing to read: a readable idle connection was closed by the server (or is broken)."""
        if isinstance(self.sock, BioSocket) and self.sock.buffered():
            return False
        try:
            if self._poll is None:
                self._poll = select.poll()
                self._poll.register(self.sock, select.POLLIN)
            return not self._poll.poll(0)
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        self.sock.close()

    def send_request(self, out: _Out, timeouts: Timeouts) -> _SendFailed | None:
        """Send the request, its body streamed from its iterator (what reading it raises propagates as it
        is); the socket's refusal is returned, for `answer`."""
        self.timeout(timeouts.get("write"))
        try:
            self._send(out)
        except _SendFailed as failed:
            return failed
        return None

    def answer(self, out: _Out, timeouts: Timeouts, failed: _SendFailed | None) -> h11.Response:
        """The response's head, once the request was sent (or its sending `failed`)."""
        request = out.request
        if failed is not None:
            if isinstance(failed.error, (TimeoutError, BlockingIOError)):
                raise httpx.WriteTimeout("timed out sending the request", request=request) from None
            # The server may have answered before closing (S3 ends a slow or oversized upload so).
            try:
                return self.head(request, timeouts.get("read"))
            except httpx.TransportError:
                raise httpx.WriteError(f"sending failed: {_reason(failed.error)}", request=request) from None
        return self.head(request, timeouts.get("read"))

    def _send(self, out: _Out) -> None:
        data, length, kept = h1write.head(out.method, out.target, out.headers)
        h1write.begin(self.h, out.method, kept)
        pending, size = [data], len(data)
        for chunk in h1write.body(out.body, length):
            pending.append(chunk)
            size += len(chunk)
            if size >= SEND_BUFFER:
                self._sendall(b"".join(pending))
                pending, size = [], 0
        self._sendall(b"".join(pending))
        h1write.end(self.h)

    def _sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:   # TimeoutError included
            raise _SendFailed(exc) from None

    def head(self, request: httpx.Request | None, timeout: float | None) -> h11.Response:
        while True:
            event = self.next_event(request, timeout)
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):   # 100 Continue and the like are skipped
                raise httpx.RemoteProtocolError("unexpected answer before the response", request=request)

    def timeout(self, seconds: float | None) -> None:
        """Set only when it changes: each change is two system calls (and GIL releases)."""
        if seconds != self._timeout:
            self._timeout = seconds
            _set_kernel(self.sock, seconds)

    def next_event(self, request: httpx.Request | None, timeout: float | None) -> Any:
        self.timeout(timeout)
        while True:
            try:
                event = self.h.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(f"malformed answer: {exc}", request=request) from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = self.sock.recv(READ_SIZE)
            except (TimeoutError, BlockingIOError):   # BlockingIOError: the kernel's timeout
                raise httpx.ReadTimeout("timed out reading the response", request=request) from None
            except OSError as exc:
                raise httpx.ReadError(f"reading failed: {_reason(exc)}", request=request) from None
            if not data and self.h.their_state is h11.SEND_RESPONSE:
                raise httpx.RemoteProtocolError("server disconnected without sending a response",
                                                request=request)
            self.h.receive_data(data)


class _SendFailed(Exception):
    """The socket refused the request's bytes (`error`): told apart from what the body's reading raises."""

    def __init__(self, error: OSError) -> None:
        self.error = error


class _Body(httpx.SyncByteStream):
    """A response's body, read as the caller iterates; the connection goes back when it was read to its end."""

    def __init__(self, transport: H11Transport, conn: _Connection, request: httpx.Request | None,
                 timeout: float | None) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._request = request
        self._timeout = timeout

    def __iter__(self) -> Iterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while True:
            event = conn.next_event(self._request, self._timeout)
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._conn = None
                self._transport._release(conn)
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("connection closed in the response", request=self._request)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:   # not read to its end: the connection is in the middle of an exchange
            conn.close()


def _set_kernel(sock: socket.socket | BioSocket, seconds: float | None) -> None:
    """The kernel's timeouts of a blocking socket: a receive or send that waits longer fails with EAGAIN."""
    micro = 0 if seconds is None else max(1, round(seconds * 1e6))   # 0: no timeout
    value = struct.pack("ll", micro // 1_000_000, micro % 1_000_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _reason(exc: OSError) -> str:
    """What went wrong, without the address (an OSError's text can carry it)."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    return exc.strerror or type(exc).__name__
