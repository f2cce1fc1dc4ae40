"""The emulator's presigned PUT answers as S3 does: XML errors with codes, in S3's order of checks,
and the PUT fault switches. Over real loopback HTTP with httpx (and raw sockets where a client
library would hide what is under test)."""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx
import pytest

from watcher.fakecloud import FakeCloud

KEY = "test-key"
APP = "app"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud(api_keys=[KEY], applications=[APP]) as running:
        yield running
        assert running.stats()["internal_errors"] == []


@pytest.fixture
def api(cloud: FakeCloud) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cloud.url, headers=AUTH, timeout=5) as client:
        yield client


@pytest.fixture
def raw(cloud: FakeCloud) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as client:
        yield client


def slot(api: httpx.Client) -> dict[str, str]:
    response = api.post(f"/v1/applications/{APP}/runs/uploadurl")
    assert response.status_code == 200
    answer: dict[str, str] = response.json()
    return answer


def s3_error(response: httpx.Response) -> dict[str, str]:
    """The elements of an S3 XML error body, after checking its shape."""
    assert response.headers["Content-Type"] == "application/xml"
    assert response.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>')
    root = ET.fromstring(response.content)
    assert root.tag == "Error"
    elements = {child.tag: child.text or "" for child in root}
    assert list(elements)[:2] == ["Code", "Message"]
    assert list(elements)[-2:] == ["RequestId", "HostId"]
    assert re.fullmatch(r"[0-9A-F]{16}", elements["RequestId"])
    assert response.headers["x-amz-request-id"] == elements["RequestId"]
    return elements


def put_records(cloud: FakeCloud) -> list[tuple[int | None, str | None]]:
    return [(r.status, r.s3_code) for r in cloud.requests() if r.endpoint == "put"]


# --- natural answers, in S3's order of checks -----------------------------------------------------


def test_chunked_is_501_not_implemented_and_a_missing_length_411(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    url = slot(api)["upload_url"]
    chunked = raw.put(url, content=iter([b"ab", b"cd"]))
    assert chunked.status_code == 501
    error = s3_error(chunked)
    assert (error["Code"], error["Header"]) == ("NotImplemented", "Transfer-Encoding")

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, body = read_response(sock)
    assert status == 411
    assert headers["content-type"] == "application/xml"
    assert b"<Code>MissingContentLength</Code><Message>You must provide the Content-Length HTTP header." in body
    assert put_records(cloud) == [(501, "NotImplemented"), (411, "MissingContentLength")]


def test_a_put_with_authorization_is_refused_echoing_the_header_as_s3_does(api: httpx.Client) -> None:
    refused = api.put(slot(api)["upload_url"], content=b"x")  # the API client sends its key
    assert refused.status_code == 400
    error = s3_error(refused)
    assert error["Code"] == "InvalidArgument"
    assert error["Message"].startswith("Only one auth mechanism allowed")
    assert (error["ArgumentName"], error["ArgumentValue"]) == ("Authorization", f"Bearer {KEY}")


def test_entity_too_large_is_answered_before_the_body_is_read() -> None:
    with FakeCloud(max_upload_bytes=10) as cloud, httpx.Client(base_url=cloud.url, headers=AUTH) as api:
        target = slot(api)
        parts = urlsplit(target["upload_url"])
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
            head = f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
            sock.sendall(head.encode())  # and not one byte of the body
            status, headers, body = read_response(sock)
            assert (status, headers["connection"]) == (400, "close")
            root = ET.fromstring(body)
            assert [root.findtext(t) for t in ("Code", "ProposedSize", "MaxSizeAllowed")] == [
                "EntityTooLarge", "1000", "10"]
            assert root.findtext("Message") == "Your proposed upload exceeds the maximum allowed size"
            assert sock.recv(1) == b""  # then the server closes the connection
        assert cloud.upload(target["upload_id"]) is None

        with httpx.Client() as raw:
            too_large = raw.put(target["upload_url"], content=b"x" * 11)
            assert (too_large.status_code, s3_error(too_large)["Code"]) == (400, "EntityTooLarge")
            assert raw.put(target["upload_url"], content=b"x" * 10).status_code == 200
        assert put_records(cloud) == [(400, "EntityTooLarge"), (400, "EntityTooLarge"), (200, None)]


def test_the_default_upload_limit_is_nextmvs_500_mb() -> None:
    assert FakeCloud().behaviour.max_upload_bytes == 500_000_000


def test_an_expired_url_is_access_denied_with_expires_and_server_time(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    cloud.set_faults(url_lifetime_seconds=-5)
    expired = raw.put(slot(api)["upload_url"], content=b"x")
    assert expired.status_code == 403
    error = s3_error(expired)
    assert (error["Code"], error["Message"]) == ("AccessDenied", "Request has expired")
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert re.fullmatch(stamp, error["Expires"])
    assert re.fullmatch(stamp, error["ServerTime"])
    assert error["Expires"] < error["ServerTime"]


def test_a_bad_signature_answers_signature_does_not_match_with_s3s_details(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    url = slot(api)["upload_url"]
    query = dict(parse_qsl(urlsplit(url).query))
    token, signature = query["X-Amz-Security-Token"], query["signature"]
    # The token holds characters a URL must percent-encode, as real temporary credentials do.
    assert {"%2B", "%2F", "%3D"} <= set(re.findall(r"%[0-9A-F]{2}", url))

    forged = url.replace(f"signature={signature}", f"signature={'0' * len(signature)}")
    refused = raw.put(forged, content=b"x")
    assert refused.status_code == 403
    error = s3_error(refused)
    assert error["Code"] == "SignatureDoesNotMatch"
    assert error["Message"].startswith("The request signature we calculated does not match")
    assert error["AWSAccessKeyId"].startswith("ASIA")
    assert error["SignatureProvided"] == "0" * len(signature)
    assert error["StringToSign"].startswith("AWS4-HMAC-SHA256\n")
    assert bytes.fromhex(error["StringToSignBytes"].replace(" ", "")).decode() == error["StringToSign"]
    canonical = error["CanonicalRequest"]
    assert canonical.startswith(f"PUT\n{urlsplit(url).path}\n")
    assert f"X-Amz-Security-Token={quote(token, safe='')}" in canonical  # the signed query, token included
    assert bytes.fromhex(error["CanonicalRequestBytes"].replace(" ", "")).decode() == canonical
    assert put_records(cloud) == [(403, "SignatureDoesNotMatch")]

    edited_token = url.replace("X-Amz-Security-Token=", "X-Amz-Security-Token=A")
    assert s3_error(raw.put(edited_token, content=b"x"))["Code"] == "SignatureDoesNotMatch"
    # Decoded query values are what is signed: a client that re-encodes the URL differently passes.
    reencoded = url.replace(quote(token, safe=""), quote(unquote(quote(token, safe="")), safe="/"))
    assert reencoded != url
    assert raw.put(reencoded, content=b"x").status_code == 200


def test_api_errors_stay_json(cloud: FakeCloud, raw: httpx.Client) -> None:
    refused = raw.get(f"{cloud.url}/v1/applications/{APP}")
    assert refused.status_code == 401
    assert refused.headers["Content-Type"] == "application/json"
    assert "error" in refused.json()


# --- the PUT fault switches -----------------------------------------------------------------------


def test_request_timeout_rate_answers_400_request_timeout_and_stores_nothing(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    cloud.set_faults(put_request_timeout_rate=1.0)
    target = slot(api)  # the API endpoints are not hit by the put_* rates
    refused = raw.put(target["upload_url"], content=b"{}")
    assert (refused.status_code, refused.headers["Connection"]) == (400, "close")
    error = s3_error(refused)
    assert error["Code"] == "RequestTimeout"
    assert error["Message"].startswith("Your socket connection to the server was not read from or written to "
                                       "within the timeout period.")
    assert cloud.upload(target["upload_id"]) is None


def test_slow_down_and_signature_mismatch_rates(cloud: FakeCloud, api: httpx.Client, raw: httpx.Client) -> None:
    url = slot(api)["upload_url"]
    cloud.set_faults(put_slow_down_rate=1.0)
    slow = raw.put(url, content=b"x")
    assert slow.status_code == 503
    assert [s3_error(slow)[k] for k in ("Code", "Message")] == ["SlowDown", "Please reduce your request rate."]

    cloud.set_faults(put_slow_down_rate=0.0, put_signature_mismatch_rate=1.0)
    mismatch = raw.put(url, content=b"x")  # a valid URL, as if a proxy rewrote the request
    assert mismatch.status_code == 403
    error = s3_error(mismatch)
    assert error["Code"] == "SignatureDoesNotMatch"
    assert "X-Amz-Security-Token=" in error["CanonicalRequest"]
    assert error["SignatureProvided"] == dict(parse_qsl(urlsplit(url).query))["signature"]
    assert cloud.uploads() == []


def test_put_rates_share_one_draw_after_the_generic_ones(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    url = slot(api)["upload_url"]
    cloud.set_faults(put_request_timeout_rate=0.5, put_slow_down_rate=0.5, seed=3)
    codes = Counter(s3_error(raw.put(url, content=b"x"))["Code"] for _ in range(40))
    assert set(codes) == {"RequestTimeout", "SlowDown"}  # together they cover every draw
    cloud.set_faults(error_rate=1.0, endpoints=frozenset({"put"}))
    statuses = {raw.put(url, content=b"x").status_code for _ in range(20)}
    assert statuses <= {500, 502, 503, 504}  # error_rate comes first
    assert cloud.uploads() == []


def test_error_rate_on_put_answers_s3_codes_or_a_gateways_page(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    url = slot(api)["upload_url"]
    cloud.set_faults(error_rate=1.0, endpoints=frozenset({"put"}))
    seen: dict[int, httpx.Response] = {}
    for _ in range(60):
        response = raw.put(url, content=b"x")
        seen.setdefault(response.status_code, response)
    assert set(seen) == {500, 502, 503, 504}
    assert s3_error(seen[500])["Code"] == "InternalError"
    assert s3_error(seen[503])["Code"] == "SlowDown"
    for gateway in (502, 504):
        assert seen[gateway].headers["Content-Type"] == "text/html"
        assert f"<h1>{gateway} ".encode() in seen[gateway].content
    assert api.get(f"/v1/applications/{APP}").status_code == 200

    cloud.set_faults(error_rate=0.0, throttle_rate=1.0)
    throttled = raw.put(url, content=b"x")
    assert (throttled.status_code, s3_error(throttled)["Code"]) == (503, "SlowDown")  # S3 never sends 429


def test_fail_next_on_put_answers_the_named_code(cloud: FakeCloud, api: httpx.Client, raw: httpx.Client) -> None:
    target = slot(api)
    url = target["upload_url"]
    token = dict(parse_qsl(urlsplit(url).query))["X-Amz-Security-Token"]
    cloud.fail_next("put", 400, code="ExpiredToken")
    expired = s3_error(raw.put(url, content=b"x"))
    assert (expired["Code"], expired["Message"], expired["Token-0"]) == (
        "ExpiredToken", "The provided token has expired.", token)

    defaults = {400: "InvalidRequest", 403: "AccessDenied", 404: "NoSuchBucket", 500: "InternalError",
                503: "SlowDown"}
    for status, code in defaults.items():
        cloud.fail_next("put", status)
        answer = raw.put(url, content=b"x")
        assert (answer.status_code, s3_error(answer)["Code"]) == (status, code)
    cloud.fail_next("put", 502)
    assert raw.put(url, content=b"x").headers["Content-Type"] == "text/html"
    assert cloud.upload(target["upload_id"]) is None

    cloud.fail_next("put", 500, after_processing=True, code="InternalError")
    assert raw.put(url, content=b"kept").status_code == 500
    stored = cloud.upload(target["upload_id"])
    assert stored is not None
    assert stored.data == b"kept"

    shot = {"endpoint": "put", "status": 400, "code": "RequestTimeout"}
    control = raw.post(f"{cloud.url}/_fake/fail_next", json=shot)
    assert control.status_code == 200
    assert s3_error(raw.put(url, content=b"x"))["Code"] == "RequestTimeout"
    with pytest.raises(ValueError, match="put"):
        cloud.fail_next("create_run", 400, code="InvalidRequest")
    with pytest.raises(ValueError, match="S3 error code"):
        cloud.fail_next("put", 400, code="no such <code>")
    assert raw.post(f"{cloud.url}/_fake/fail_next", json={"endpoint": "uploadurl", "code": "X"}).status_code == 400


def test_records_name_the_s3_code_and_the_content_type_but_no_secret(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    url = api.post(f"/v1/applications/{APP}/runs/uploadurl", headers={"Content-Type": "application/json"}).json()[
        "upload_url"]
    cloud.fail_next("put", 503)
    raw.put(url, content=b"x")
    raw.put(url, content=b"x")
    raw.put(url.replace("signature=", "signature=f"), content=b"x")
    assert put_records(cloud) == [(503, "SlowDown"), (200, None), (403, "SignatureDoesNotMatch")]
    assert cloud.stats()["s3_codes"] == {"SignatureDoesNotMatch": 1, "SlowDown": 1}
    [upload_url_call] = [r for r in cloud.requests() if r.endpoint == "uploadurl"]
    assert upload_url_call.content_type == "application/json"
    query = dict(parse_qsl(urlsplit(url).query))
    seen = repr(cloud.requests()) + repr(cloud.stats())
    for secret in (query["signature"], query["X-Amz-Security-Token"], quote(query["X-Amz-Security-Token"])):
        assert secret not in seen


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response headers"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return int(lines[0].split()[1]), headers, body
