"""h1write: a request's bytes as h11 writes them (h11 is the reference), without its per-header cost."""

from __future__ import annotations

import h11
import pytest

from watcher.cloud import h1write

CASES = [
    (b"GET", b"/v1/applications/app-1", [(b"Host", b"api.example"), (b"Authorization", b"Bearer k")], []),
    (b"POST", b"/v1/x?y=1", [(b"Host", b"h:8"), (b"Content-Length", b"0")], []),
    (b"PUT", b"/u/1?X-Amz-Signature=ab", [(b"User-Agent", b"w"), (b"Host", b"s3"), (b"Content-Length", b"6")],
     [b"abc", b"", b"def"]),
    (b"PUT", b"/u/2", [(b"Host", b"s3"), (b"Transfer-Encoding", b"chunked")], [b"abc", b"", b"defgh"]),
    (b"POST", b"/v1/runs", [(b"Host", b"h"), (b"Connection", b"close"), (b"Content-Length", b"2")], [b"{}"]),
]


def by_h11(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    out = [conn.send(h11.Request(method=method, target=target, headers=headers))]
    out += [conn.send(h11.Data(data=c)) for c in chunks if c]
    out.append(conn.send(h11.EndOfMessage()))
    return b"".join(x for x in out if x)


@pytest.mark.parametrize(("method", "target", "headers", "chunks"), CASES)
def test_the_bytes_are_h11s(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                            chunks: list[bytes]) -> None:
    data, length, _ = h1write.head(method, target, headers)
    assert data + b"".join(h1write.body(chunks, length)) == by_h11(method, target, headers, chunks)


@pytest.mark.parametrize("where", ["value", "name", "target"])
@pytest.mark.parametrize("bad", [b"\r\n", b"\n", b"\x00"])
def test_what_would_break_the_framing_is_refused(where: str, bad: bytes) -> None:
    name, value = b"X-Run" + (bad if where == "name" else b""), b"a" + (bad if where == "value" else b"")
    headers = [(b"Host", b"h"), (name, value)]
    with pytest.raises(h11.LocalProtocolError):
        h1write.head(b"GET", b"/" + (bad + b"GET /admin HTTP/1.1" if where == "target" else b""), headers)


@pytest.mark.parametrize(("chunks", "message"), [([b"abc", b"defg"], "Too much data"), ([b"ab"], "Too little data")])
def test_a_body_not_of_its_content_length_is_h11s_error(chunks: list[bytes], message: str) -> None:
    _, length, _ = h1write.head(b"PUT", b"/u", [(b"Host", b"h"), (b"Content-Length", b"6")])
    with pytest.raises(h11.LocalProtocolError, match=message):
        list(h1write.body(chunks, length))


def test_h11_reads_the_answer_and_keeps_the_connection_only_once_the_request_ended() -> None:
    conn = h11.Connection(h11.CLIENT)
    h1write.begin(conn, b"HEAD", h1write.head(b"HEAD", b"/", [(b"Host", b"h")])[2])
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")   # HEAD: no body follows
    assert isinstance(conn.next_event(), h11.Response)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    assert conn.our_state is h11.SEND_BODY, "the request's end was not sent: not reusable"
    h1write.end(conn)
    assert (conn.our_state, conn.their_state) == (h11.DONE, h11.DONE)

    closing = h11.Connection(h11.CLIENT)
    h1write.begin(closing, b"GET", h1write.head(b"GET", b"/", [(b"Host", b"h"), (b"Connection", b"close")])[2])
    h1write.end(closing)
    closing.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
    closing.next_event()
    closing.next_event()
    assert closing.our_state is h11.MUST_CLOSE
