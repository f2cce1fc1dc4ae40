"""Reading one HTTP/1.1 request body off a keep-alive connection, exactly once.

A body is delimited by `Content-Length` or by chunked transfer coding; every byte of it must be read
before the response so the next request on the connection starts where the parser expects it.
`BodyReader.drain()` does that for requests whose body the endpoint did not want.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

CHUNK = 1 << 20
_MAX_LINE = 64 * 1024


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...
    def readline(self, size: int, /) -> bytes: ...


class BodyError(Exception):
    """The body is malformed or the connection ended inside it: the connection cannot be reused."""


class BodyReader:
    """The body of one request on `rfile`: `Content-Length` bytes, chunked, or empty when neither."""

    def __init__(self, rfile: Readable, content_length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        self._remaining = content_length or 0
        self._chunked = chunked
        self._done = not chunked and self._remaining == 0

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        """Yield the body in pieces of at most `size` bytes. Raises BodyError if it is cut short."""
        if self._chunked:
            yield from self._dechunk(size)
        else:
            while self._remaining > 0:
                piece = self._rfile.read(min(size, self._remaining))
                if not piece:
                    raise BodyError("connection closed inside the request body")
                self._remaining -= len(piece)
                yield piece
        self._done = True

    def read(self, limit: int) -> bytes:
        """The whole body, or BodyError if it exceeds `limit` bytes (the rest is then drained)."""
        parts: list[bytes] = []
        total = 0
        for piece in self.chunks():
            total += len(piece)
            if total > limit:
                self.drain()
                raise BodyError(f"request body larger than {limit} bytes")
            parts.append(piece)
        return b"".join(parts)

    def drain(self) -> None:
        """Read and discard whatever is left of the body."""
        if not self._done:
            for _ in self.chunks():
                pass

    def _dechunk(self, size: int) -> Iterator[bytes]:
        while True:
            line = self._rfile.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise BodyError("truncated chunk size line")
            try:
                remaining = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BodyError("malformed chunk size") from None
            if remaining < 0:
                raise BodyError("malformed chunk size")
            if remaining == 0:
                self._skip_trailers()
                return
            while remaining > 0:
                piece = self._rfile.read(min(size, remaining))
                if not piece:
                    raise BodyError("connection closed inside a chunk")
                remaining -= len(piece)
                yield piece
            if self._rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
                raise BodyError("chunk not followed by CRLF")

    def _skip_trailers(self) -> None:
        while True:
            line = self._rfile.readline(_MAX_LINE)
            if not line:
                raise BodyError("connection closed inside the chunked trailer")
            if line in (b"\r\n", b"\n"):
                return
