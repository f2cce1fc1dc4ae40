"""Reading an answer's body, always with a bound: the API's and a presigned PUT's.

An API answer is read decoded, up to `MAX_ANSWER_BYTES` for a success (a page of 50 runs is tens of
KB; `AnswerTooLarge` beyond, the rest unread) and `MAX_ERROR_BYTES` for anything else (only its
message is used). A presigned PUT's answer is read only up to the caller's limit, as it came, never
decoded (a compressed S3 error body yields no code). What is not read is dropped with the connection.
Each function closes the response and returns an in-memory copy with the headers that still apply.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

MAX_ANSWER_BYTES = 8 << 20
MAX_ERROR_BYTES = 4096
# Headers that described the body as it came; the copy holds it decoded.
_BODY_FRAMING = (b"content-encoding", b"content-length", b"transfer-encoding")


class AnswerTooLarge(Exception):
    """An API success answer longer than MAX_ANSWER_BYTES (the client turns it into its error)."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: the answer is larger than {MAX_ANSWER_BYTES} bytes; not read")


def read_answer(response: httpx.Response) -> httpx.Response:
    """The API's `response`, its body read (decoded) up to its bound. Raises AnswerTooLarge for a
    success beyond MAX_ANSWER_BYTES, and what reading raises (httpx's transport errors)."""
    status = response.status_code
    limit = MAX_ANSWER_BYTES if 200 <= status < 300 else MAX_ERROR_BYTES
    encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
    body = _upto(response.iter_bytes() if encoded else _raw(response), limit + 1, response)
    if len(body) > limit and 200 <= status < 300:
        raise AnswerTooLarge(status)
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _BODY_FRAMING]   # raw: as bytes
    return _in_memory(status, headers, body[:limit])

def read_bounded(response: httpx.Response, head_limit: int | None) -> httpx.Response:
    """`read_answer` (an API answer), or with `head_limit` `read_head` (a presigned PUT's)."""
    return read_answer(response) if head_limit is None else read_head(response, head_limit)


def read_head(response: httpx.Response, limit: int) -> httpx.Response:
    """A presigned PUT's `response` with only the first `limit` bytes of its body, as they came, and the
    one header used (Retry-After)."""
    head = _upto(_raw(response), limit, response)
    retry_after = response.headers.get("Retry-After")
    return _in_memory(response.status_code, [] if retry_after is None else [("Retry-After", retry_after)], head)


def _raw(response: httpx.Response) -> Iterator[bytes]:
    """The body's bytes as they came: the stream's own (httpx's `iter_raw` re-chunks them, a few times
    the cost of this module's work for a short answer), or the content of an answer made in memory."""
    stream = response.stream
    if isinstance(stream, httpx.SyncByteStream):
        yield from stream
    else:
        yield response.content


def _in_memory(status: int, headers: list[tuple[Any, Any]], body: bytes) -> httpx.Response:
    """A response holding `body`, read. (`content=` costs 20 us: it frames the body as a request's and
    reads it back through the decoders; the body is in memory already, as `read()` would leave it.)"""
    response = httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))
    response._content = body
    response.is_stream_consumed = response.is_closed = True
    return response


def _upto(chunks: Iterator[bytes], limit: int, response: httpx.Response) -> bytes:
    """At least `limit` bytes of `chunks` (all when shorter, a chunk more at most), then the response closed."""
    got = bytearray()
    try:
        for chunk in chunks:
            got += chunk
            if len(got) >= limit:
                break   # the rest is never read; closing drops the connection
    finally:
        response.close()
    return bytes(got)
