"""A request's bytes as h11 writes them, for `transport`, which keeps h11 to read the answers.

h11 validates every header of every request with regular expressions and runs its state machine and
writer per event: 40-50 us a request (timeit), 10% of a daemon process's interpreter time at 20 ms
(py-spy --gil: `Request.__init__` and `Connection.send`). Here the head is one join, checked by one
search for what would break the framing (CR, LF, NUL: a header or target could otherwise carry a
second request), with Host first as h11 writes it; the body is framed as h11 frames a request's: its
Content-Length counted (h11's own `LocalProtocolError`, "Too much data" / "Too little data", which
`putbody` tells apart), chunked with Transfer-Encoding, none with neither.

h11 still reads the answer, and must know what was sent: `begin` gives its connection a request of the
same method with the headers that change how the answer is read or whether the connection is kept
(Connection, Expect, which `head` picks out as it goes; prebuilt, as h11's events are immutable), and
`end` the request's end, once every
byte went: a request whose body did not all go is never taken as done, so its connection is not used
again. `tests/integration/test_transport.py` checks the bytes against httpx's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

import h11

Headers = Sequence[tuple[bytes, bytes]]
Kept = tuple[tuple[bytes, bytes], ...]   # the headers h11 reads an answer by, names lowercased
_UNSAFE = re.compile(rb"[\x00\r\n]")
_KEPT = (b"connection", b"expect")   # what h11 reads an answer by, besides the method
_EVENTS: dict[tuple[bytes, Kept], h11.Request] = {}
_END = h11.EndOfMessage()


def head(method: bytes, target: bytes, headers: Headers) -> tuple[bytes, int | None, Kept]:
    """The request line and headers, the body's framing (its length, 0 without a body, or None for
    chunked), and the headers for `begin`. Raises h11.LocalProtocolError for what h11 would refuse to frame."""
    if _UNSAFE.search(b"\x01".join([method, target, *(k + b"\x01" + v for k, v in headers)])):
        raise h11.LocalProtocolError("illegal character in the request line or a header")
    length: int | None = 0
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    rest: list[bytes] = []
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lower = name.lower()
        if lower in _KEPT:
            kept.append((lower, value))
        if lower == b"content-length":
            length = int(value)
        elif lower == b"transfer-encoding":
            if value.lower() != b"chunked":
                raise h11.LocalProtocolError("only Transfer-Encoding: chunked is supported")
            length = None
        (parts if lower == b"host" else rest).append(b"%s: %s\r\n" % (name, value))
    return b"".join([*parts, *rest, b"\r\n"]), length, tuple(kept)


def body(chunks: Iterable[bytes], length: int | None) -> Iterator[bytes]:
    """The body's bytes as framed (see `head`); raises as h11 does when they are not `length`."""
    if length is None:
        for chunk in chunks:
            if chunk:
                yield b"%x\r\n" % len(chunk)
                yield chunk
                yield b"\r\n"
        yield b"0\r\n\r\n"
        return
    left = length
    for chunk in chunks:
        left -= len(chunk)
        if left < 0:
            raise h11.LocalProtocolError("Too much data for declared Content-Length")
        if chunk:
            yield chunk
    if left:
        raise h11.LocalProtocolError("Too little data for declared Content-Length")


def begin(conn: h11.Connection, method: bytes, kept: Kept) -> None:
    """Tell h11 a request with `method` and these headers of `head`'s is being sent (before its first byte goes)."""
    event = _EVENTS.get((method, kept))
    if event is None:   # a few kinds: GET, POST, PUT, each with Connection: close or not
        event = h11.Request(method=method, target=b"/", headers=[(b"host", b"-"), *kept])
        _EVENTS[(method, kept)] = event
    conn.send(event)


def end(conn: h11.Connection) -> None:
    """Tell h11 the request's every byte went."""
    conn.send(_END)
