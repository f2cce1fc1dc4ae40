"""TLS over a blocking socket with the kernel's timeouts: the socket's bytes go through `ssl.MemoryBIO`s.

An `ssl.SSLSocket` with a timeout polls before every send and, after a read that found nothing, before
reading again: three system calls, each a release of the interpreter's lock, where a plain socket that
blocks with the kernel's timeouts (`SO_RCVTIMEO`/`SO_SNDTIMEO`) makes one. An SSLSocket cannot block
with the kernel's timeouts: on a blocking socket the ssl module retries a read that timed out for ever.
Here the TLS object (`SSLContext.wrap_bio`) only encrypts and decrypts; every byte it wants sent is sent
with `sendall`, and every byte it needs is read with `recv`, on the blocking socket, so a timeout is the
kernel's: `BlockingIOError` (EAGAIN), as on a plain socket.

`BioSocket` offers what `transport._Connection` uses of a socket (`sendall`, `recv`, `fileno`,
`setsockopt`, `close`) and reads as an SSLSocket with `suppress_ragged_eofs` does: a server that closes
without TLS's close_notify ends the stream (b""), as httpcore takes it too.

`ContextOnce` makes the SSL context when a TLS connection first needs it.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

READ_SIZE = 64 * 1024


class ContextOnce:
    """The SSL context `make()` gives, made once, when a TLS connection first asks for it (any thread).
    httpx's default one loads certifi's bundle, and a CA bundle is loaded with the system's: 30-55 ms of
    every process's start, for nothing while the API and its upload URLs are plain HTTP."""

    def __init__(self, make: Callable[[], ssl.SSLContext]) -> None:
        self._make = make
        self._context: ssl.SSLContext | None = None
        self._lock = threading.Lock()

    def __call__(self) -> ssl.SSLContext:
        context = self._context
        if context is None:
            with self._lock:   # make() is the ssl module's: it calls nothing of ours
                if self._context is None:
                    self._context = self._make()
                context = self._context
        return context


class BioSocket:
    """A TLS connection over `sock`, which blocks (its timeouts are the kernel's, set by the caller)."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)

    def handshake(self) -> None:
        """The TLS handshake (the certificate checked as the context says). Raises ssl.SSLError, OSError
        (BlockingIOError: the kernel's timeout)."""
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    raise ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "closed by the server in the handshake") from None
        self._flush()

    def sendall(self, data: bytes) -> None:
        self._tls.write(data)   # without partial writes (the ssl module's default): all of it, encrypted
        self._flush()

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes of the stream; b"" at its end."""
        while True:
            try:
                return self._tls.read(size)
            except ssl.SSLWantReadError:
                self._flush()   # what the TLS object has to say first (a key update's answer)
                if not self._fill():
                    return b""   # closed without close_notify: the end (suppress_ragged_eofs)
            except ssl.SSLZeroReturnError:
                return b""   # close_notify

    def _fill(self) -> bool:
        """The socket's next bytes for the TLS object; False at the socket's end."""
        data = self.sock.recv(READ_SIZE)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self.sock.sendall(data)

    def buffered(self) -> bool:
        """Bytes read from the socket and not yet read from the stream (for an idle connection: unasked)."""
        return self._incoming.pending > 0 or self._tls.pending() > 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        self.sock.setsockopt(level, option, value)

    def close(self) -> None:
        self.sock.close()
