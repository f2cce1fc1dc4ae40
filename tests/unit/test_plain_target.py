"""transport.plain_target: a URL sent without an httpx.Request goes out exactly as httpx would send it."""

from __future__ import annotations

import random

import httpx
import pytest

from watcher.cloud.transport import plain_target

SIGNED = ("https://nextmv-runs.s3.us-east-1.amazonaws.com/uploads/7f3c2a9e-1b2c?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=ASIA%2F20261204%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261204T133000Z"
          "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=0123456789abcdef")
PLAIN = [SIGNED, "https://api.cloud.nextmv.io/v1/applications/my-app/runs/uploadurl",
         "http://127.0.0.1:8080/_uploads/upload-1?sig=a%2Fb", "https://api.example.com:443/v1/x",
         "http://api.example.com:80/v1/x", "https://h:8443/", "https://h/a/b.c/d..e/.f?x=1&y=2/3?z",
         "https://h/v1/applications/a%20b/runs", "http://h/p?", "https://h/~user/(x)!$&'*+,;=:@"]
NOT_PLAIN = ["https://API.example.com/v1", "HTTPS://h/", "https://h", "https://h/a/../b", "https://h/./b",
             "https://h/a/.", "https://h/a b", "https://h/a%zz", "https://h/ü", "https://user:pw@h/",
             "https://[::1]:8080/", "https://h/a#frag", "ftp://h/a", "https://h:0/", "https://h:99999/",
             "https://h/a\r\nX: y", "https://h/a|b", "https://h/a\"b"]


def httpx_sends(url: str) -> tuple[tuple[bytes, bytes, int], bytes, bytes]:
    r = httpx.Request("GET", url)
    scheme = r.url.raw_scheme
    origin = (scheme, r.url.raw_host, r.url.port or (443 if scheme == b"https" else 80))
    return origin, r.url.raw_path, r.headers["Host"].encode()


@pytest.mark.parametrize("url", PLAIN)
def test_a_plain_url_goes_where_and_as_httpx_sends_it(url: str) -> None:
    to = plain_target(url)

    assert to is not None
    assert (to.origin, to.target, to.host) == httpx_sends(url)


@pytest.mark.parametrize("url", NOT_PLAIN)
def test_a_url_httpx_would_rewrite_or_refuse_is_left_to_httpx(url: str) -> None:
    assert plain_target(url) is None


def test_every_random_url_it_accepts_is_sent_as_httpx_sends_it() -> None:
    """10,000 URLs from the characters that matter (dots, slashes, escapes, case, ports): wherever
    `plain_target` takes one, httpx sends the same target to the same origin with the same Host."""
    rng = random.Random(13)
    alphabet = ["a", "Z", "0", ".", "..", "/", "%2F", "%zz", "%", "?", "&", "=", "~", "-", "_", " ", "#", ":",
                "@", "!", "[", "é"]
    accepted = 0
    for _ in range(10_000):
        host = rng.choice(["h", "api.example.com", "127.0.0.1", "H", "x-y.z"])
        port = rng.choice(["", ":80", ":443", ":8080", ":0"])
        path = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        url = f"{rng.choice(['http', 'https'])}://{host}{port}/{path}"
        to = plain_target(url)
        if to is None:
            continue
        accepted += 1
        assert (to.origin, to.target, to.host) == httpx_sends(url), url
    assert accepted > 1000   # the comparison ran on many
