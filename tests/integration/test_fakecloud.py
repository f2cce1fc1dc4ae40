"""The emulator of the Nextmv runs API, exercised over real loopback HTTP with httpx."""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import self_signed

from watcher.fakecloud import FakeCloud, Faults, State

KEY = "test-key"
APP = "app"
AUTH = {"Authorization": f"Bearer {KEY}"}


@functools.cache
def _plain_tls() -> ssl.SSLContext:
    # Building an SSL context costs ~50 ms; plain-HTTP clients share one instead of each making its own.
    return ssl.create_default_context()


def new_client(**options: Any) -> httpx.Client:
    options.setdefault("verify", _plain_tls())
    return httpx.Client(timeout=5, **options)


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud(api_keys=[KEY], applications=[APP]) as running:
        yield running
        assert running.stats()["internal_errors"] == []


@pytest.fixture
def api(cloud: FakeCloud) -> Iterator[httpx.Client]:
    """An API client: base URL and bearer key set."""
    with new_client(base_url=cloud.url, headers=AUTH) as api_client:
        yield api_client


@pytest.fixture
def raw(cloud: FakeCloud) -> Iterator[httpx.Client]:
    """A client without credentials, as presigned uploads and control calls use."""
    with new_client() as raw_client:
        yield raw_client


def upload_url(api: httpx.Client) -> dict[str, str]:
    response = api.post(f"/v1/applications/{APP}/runs/uploadurl")
    assert response.status_code == 200
    result: dict[str, str] = response.json()
    return result


def upload(api: httpx.Client, raw: httpx.Client, data: bytes) -> str:
    slot = upload_url(api)
    assert raw.put(slot["upload_url"], content=data).status_code == 200
    return slot["upload_id"]


def create_run(api: httpx.Client, body: dict[str, Any], **params: str) -> httpx.Response:
    return api.post(f"/v1/applications/{APP}/runs", json=body, params=params)


def simple_run(api: httpx.Client, input_id: str, name: str = "") -> str:
    response = create_run(api, {"upload_id": input_id, "name": name, "result": {"status": "succeeded"}})
    assert response.status_code == 200, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def last_record(cloud: FakeCloud, endpoint: str) -> Any:
    return [r for r in cloud.requests() if r.endpoint == endpoint][-1]


# --- the happy path -------------------------------------------------------------------------------


def test_full_sequence_records_run_with_the_uploaded_bytes(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    assert api.get(f"/v1/applications/{APP}").json() == {"id": APP, "name": APP}
    payloads = {"input": b'{"stops": [1, 2]}', "output": b'{"solution": 42}', "logs": "solved ✓\n".encode()}
    ids = {name: upload(api, raw, data) for name, data in payloads.items()}
    body = {
        "upload_id": ids["input"],
        "name": "nightly",
        "description": "token-123",
        "options": {"solve.duration": "1s"},
        "configuration": {"format": {"input": {"type": "json"}, "output": {"type": "multi-file"}}},
        "result": {
            "status": "succeeded",
            "execution_duration": 1234,
            "output_upload_id": ids["output"],
            "error_upload_id": ids["logs"],
        },
    }
    response = create_run(api, body, instance_id="latest")
    assert response.status_code == 200
    run_id = response.json()["run_id"]
    assert re.fullmatch(r"run-[0-9a-f]{12}", run_id)

    [run] = cloud.runs(APP)
    assert (run.run_id, run.application_id, run.body, run.query) == (
        run_id,
        APP,
        body,
        {"instance_id": "latest"},
    )
    assert run.created_at.tzinfo is UTC
    for field, name in [("input", "input"), ("output_upload_id", "output"), ("error_upload_id", "logs")]:
        artifact = run.artifact(field)
        assert artifact is not None
        assert artifact.data == payloads[name]
        assert artifact.sha256 == hashlib.sha256(payloads[name]).hexdigest()
    assert run.artifact("metrics_upload_id") is None

    metadata = api.get(f"/v1/applications/{APP}/runs/{run_id}/metadata").json()
    assert metadata["id"] == run_id
    assert metadata["description"] == "token-123"
    assert metadata["status_v2"] == metadata["metadata"]["status_v2"] == "succeeded"
    assert metadata["created_at"] == run.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert api.get(f"/v1/applications/{APP}/runs").json() == [metadata]

    put = last_record(cloud, "put")
    assert (put.status, put.has_authorization, put.chunked) == (200, False, False)
    assert put.content_length == len(payloads["logs"])
    assert "signature" not in put.path
    assert last_record(cloud, "create_run").content_type == "application/json"


def test_a_second_put_replaces_the_content(cloud: FakeCloud, api: httpx.Client, raw: httpx.Client) -> None:
    slot = upload_url(api)
    raw.put(slot["upload_url"], content=b"first")
    assert raw.put(slot["upload_url"], content=b"second").status_code == 200
    stored = cloud.upload(slot["upload_id"])
    assert stored is not None
    assert (stored.data, stored.size) == (b"second", 6)


def test_every_application_exists_when_none_are_listed() -> None:
    with FakeCloud() as cloud, new_client(base_url=cloud.url, headers=AUTH) as api:
        assert api.get("/v1/applications/anything").status_code == 200


# --- authentication and routing -------------------------------------------------------------------


def test_api_calls_need_a_known_bearer_key(cloud: FakeCloud, raw: httpx.Client) -> None:
    url = f"{cloud.url}/v1/applications/{APP}"
    assert raw.get(url).status_code == 401
    wrong = raw.get(url, headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401
    assert "not-the-key" not in wrong.text
    assert raw.get(url, headers={"Authorization": f"Basic {KEY}"}).status_code == 401
    assert raw.get(f"{cloud.url}/v1/nowhere").status_code == 401

    cloud.set_api_keys(["rotated"])
    assert raw.get(url, headers=AUTH).status_code == 401
    assert raw.get(url, headers={"Authorization": "Bearer rotated"}).status_code == 200


def test_unknown_application_run_and_path_answer_404(api: httpx.Client) -> None:
    other = "/v1/applications/other"
    assert api.get(other).status_code == 404
    assert api.post(f"{other}/runs/uploadurl").status_code == 404
    assert api.post(f"{other}/runs", json={"upload_id": "x"}).status_code == 404
    assert api.get(f"{other}/runs").status_code == 404
    assert api.get(f"/v1/applications/{APP}/runs/run-000000000000/metadata").status_code == 404
    assert api.get("/v1/nowhere").status_code == 404
    assert api.delete(f"/v1/applications/{APP}").status_code == 404


# --- presigned uploads ----------------------------------------------------------------------------


def test_put_refuses_chunked_and_missing_length_and_keeps_the_connection(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    slot = upload_url(api)
    assert raw.put(slot["upload_url"], content=iter([b"ab", b"cd"])).status_code == 501
    connections = cloud.stats()["connections"]
    assert raw.put(slot["upload_url"], content=b"abcd").status_code == 200  # same keep-alive connection
    assert cloud.stats()["connections"] == connections
    assert last_record(cloud, "put").content_length == 4

    parts = urlsplit(slot["upload_url"])
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port)
    try:
        conn.putrequest("PUT", f"{parts.path}?{parts.query}")
        conn.endheaders()  # neither Content-Length nor Transfer-Encoding
        answer = conn.getresponse()
        assert answer.status == 411
        assert b"<Code>MissingContentLength</Code>" in answer.read()
    finally:
        conn.close()


def test_put_with_authorization_is_refused(api: httpx.Client) -> None:
    slot = upload_url(api)
    assert api.put(slot["upload_url"], content=b"x").status_code == 400  # the api client sends its key


def test_expired_or_tampered_url_answers_403(cloud: FakeCloud, api: httpx.Client, raw: httpx.Client) -> None:
    good = upload_url(api)["upload_url"]
    assert raw.put(good.replace("signature=", "signature=0"), content=b"x").status_code == 403
    expires = re.search(r"expires=([0-9.]+)", good)
    assert expires is not None
    later = good.replace(expires.group(0), f"expires={float(expires.group(1)) + 60:.3f}")
    assert raw.put(later, content=b"x").status_code == 403

    cloud.set_faults(url_lifetime_seconds=-1)
    assert raw.put(upload_url(api)["upload_url"], content=b"x").status_code == 403

    cloud.set_faults(url_lifetime_seconds=0.05)
    short = upload_url(api)["upload_url"]
    deadline = time.monotonic() + 5
    status = raw.put(short, content=b"x").status_code
    while status == 200 and time.monotonic() < deadline:
        time.sleep(0.01)  # sleep-ok: polling until the URL expires, bounded by the deadline
        status = raw.put(short, content=b"x").status_code
    assert status == 403


def test_large_upload_keeps_only_size_and_sha256() -> None:
    big = bytes(range(256)) * 1200
    logs_ok = "é".encode() * 600_000  # > 1 MiB so multibyte characters straddle the server's read chunks
    with (
        FakeCloud(max_stored_bytes=1024) as cloud,
        new_client(base_url=cloud.url, headers=AUTH) as api,
        new_client() as raw,
    ):
        big_id = upload(api, raw, big)
        stored = cloud.upload(big_id)
        assert stored is not None
        assert (stored.data, stored.size, stored.sha256) == (None, len(big), hashlib.sha256(big).hexdigest())
        small = cloud.upload(upload(api, raw, b"tiny"))
        assert small is not None
        assert small.data == b"tiny"

        logs = {"status": "failed", "error_message": "boom"}
        bad = create_run(api, {"upload_id": big_id, "result": {**logs, "error_upload_id": big_id}})
        assert bad.status_code == 400
        assert "error_upload_id" in bad.json()["error"]
        ok = create_run(
            api, {"upload_id": big_id, "result": {**logs, "error_upload_id": upload(api, raw, logs_ok)}}
        )
        assert ok.status_code == 200


# --- run validation -------------------------------------------------------------------------------

Ids = dict[str, str]
CASES: list[tuple[str, Callable[[Ids], object], str]] = [
    ("not an object", lambda ids: [ids["input"]], "JSON object"),
    ("no input", lambda ids: {"result": {"status": "succeeded"}}, "upload_id"),
    ("unknown input", lambda ids: {"upload_id": "upload-nope"}, "upload_id"),
    ("input never put", lambda ids: {"upload_id": ids["empty"]}, "never uploaded"),
    ("unknown key", lambda ids: {"upload_id": ids["input"], "input_id": "x"}, "input_id"),
    ("options", lambda ids: {"upload_id": ids["input"], "options": {"threads": 4}}, "options.threads"),
    (
        "input format",
        lambda ids: {"upload_id": ids["input"], "configuration": {"format": {"input": {"type": "xml"}}}},
        "configuration.format.input.type",
    ),
    (
        "output format",
        lambda ids: {"upload_id": ids["input"], "configuration": {"format": {"output": {}}}},
        "configuration.format.output.type",
    ),
    ("status", lambda ids: {"upload_id": ids["input"], "result": {"status": "done"}}, "result.status"),
    (
        "message on success",
        lambda ids: {"upload_id": ids["input"], "result": {"status": "succeeded", "error_message": "x"}},
        "result.error_message",
    ),
    (
        "negative duration",
        lambda ids: {"upload_id": ids["input"], "result": {"status": "failed", "execution_duration": -1}},
        "result.execution_duration",
    ),
    (
        "fractional duration",
        lambda ids: {"upload_id": ids["input"], "result": {"status": "failed", "execution_duration": 1.5}},
        "result.execution_duration",
    ),
    (
        "unknown output",
        lambda ids: {"upload_id": ids["input"], "result": {"status": "succeeded", "output_upload_id": "no"}},
        "result.output_upload_id",
    ),
    (
        "metrics never put",
        lambda ids: {
            "upload_id": ids["input"],
            "result": {"status": "succeeded", "metrics_upload_id": ids["empty"]},
        },
        "result.metrics_upload_id",
    ),
    (
        "logs not utf-8",
        lambda ids: {
            "upload_id": ids["input"],
            "result": {"status": "failed", "error_upload_id": ids["latin1"]},
        },
        "result.error_upload_id",
    ),
    (
        "unknown result key",
        lambda ids: {"upload_id": ids["input"], "result": {"status": "succeeded", "output_id": "x"}},
        "result.output_id",
    ),
]


@pytest.mark.parametrize(("body", "field"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_run_bodies_answer_400_naming_the_field(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client, body: Callable[[Ids], object], field: str
) -> None:
    ids = {
        "input": upload(api, raw, b"{}"),
        "latin1": upload(api, raw, "café".encode("latin-1")),
        "empty": upload_url(api)["upload_id"],
    }
    response = api.post(f"/v1/applications/{APP}/runs", json=body(ids))
    assert response.status_code == 400
    assert field in response.json()["error"]
    assert cloud.runs() == []


def test_body_that_is_not_json_answers_400(cloud: FakeCloud, api: httpx.Client) -> None:
    response = api.post(f"/v1/applications/{APP}/runs", content=b"{nope")
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


# --- listing --------------------------------------------------------------------------------------


def test_paging_is_newest_first_and_tokens_survive_new_runs(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    input_id = upload(api, raw, b"{}")
    created = [simple_run(api, input_id) for _ in range(120)]
    url = f"/v1/applications/{APP}/runs"

    first = api.get(url, params={"pagereturn": "true"}).json()
    assert [r["id"] for r in first["runs"]] == created[::-1][:50]
    newer = [simple_run(api, input_id) for _ in range(5)]  # must not shift the next pages
    second = api.get(url, params={"pagereturn": "true", "pagetoken": first["next_page_token"]}).json()
    assert [r["id"] for r in second["runs"]] == created[::-1][50:100]
    third = api.get(url, params={"pagereturn": "true", "pagetoken": second["next_page_token"]}).json()
    assert [r["id"] for r in third["runs"]] == created[::-1][100:]
    assert not third.get("next_page_token")

    everything = api.get(url).json()
    assert [r["id"] for r in everything] == (created + newer)[::-1]
    stamps = [r["created_at"] for r in everything]
    assert stamps == sorted(stamps, reverse=True)
    assert api.get(url, params={"pagereturn": "true", "pagetoken": "garbage"}).status_code == 400


def test_new_runs_are_listed_only_after_the_lag(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    cloud.set_faults(list_lag_seconds=3600)
    run_id = simple_run(api, upload(api, raw, b"{}"))
    url = f"/v1/applications/{APP}/runs"
    assert api.get(url).json() == []
    assert api.get(url, params={"pagereturn": "true"}).json()["runs"] == []
    assert api.get(f"{url}/{run_id}/metadata").status_code == 200
    cloud.set_faults(list_lag_seconds=0)
    assert [r["id"] for r in api.get(url).json()] == [run_id]


# --- faults ---------------------------------------------------------------------------------------


def test_fail_next_after_processing_records_the_run(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    input_id = upload(api, raw, b"{}")
    body = {"upload_id": input_id, "result": {"status": "succeeded"}}

    cloud.fail_next("create_run", None, after_processing=True)
    with pytest.raises(httpx.TransportError):
        create_run(api, body)
    assert len(cloud.runs()) == 1
    assert last_record(cloud, "create_run").status is None

    cloud.fail_next("create_run", 500, after_processing=True)
    assert create_run(api, body).status_code == 500
    assert len(cloud.runs()) == 2

    cloud.fail_next("create_run", 503, retry_after=2)
    refused = create_run(api, body)
    assert (refused.status_code, refused.headers.get("Retry-After")) == (503, "2")
    assert len(cloud.runs()) == 2

    cloud.fail_next("get_application", 502, count=2)
    assert [api.get(f"/v1/applications/{APP}").status_code for _ in range(3)] == [502, 502, 200]
    with pytest.raises(ValueError, match="unknown endpoint"):
        cloud.fail_next("nope", 500)


def test_reset_sends_rst_before_processing(cloud: FakeCloud) -> None:
    cloud.set_faults(reset_rate=1.0, endpoints=frozenset({"get_application"}))
    request = f"GET /v1/applications/{APP} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", _port(cloud))) as sock:
        sock.sendall(request.encode())
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)
    assert last_record(cloud, "get_application").status is None


def _port(cloud: FakeCloud) -> int:
    port = urlsplit(cloud.url).port
    assert port is not None
    return port


def test_reset_after_processing_records_the_run(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    input_id = upload(api, raw, b"{}")
    cloud.set_faults(reset_after_rate=1.0, endpoints=frozenset({"create_run"}))
    with pytest.raises(httpx.TransportError):
        create_run(api, {"upload_id": input_id, "result": {"status": "succeeded"}})
    assert len(cloud.runs()) == 1


def test_error_rate_answers_5xx_without_processing_and_keeps_the_connection(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    input_id = upload(api, raw, b"{}")
    connections = cloud.stats()["connections"]
    cloud.set_faults(error_rate=1.0, endpoints=frozenset({"create_run"}))
    padded = {"upload_id": input_id, "description": "x" * 200_000, "result": {"status": "succeeded"}}
    statuses = {create_run(api, padded).status_code for _ in range(20)}
    assert statuses <= {500, 502, 503, 504}
    assert cloud.runs() == []
    assert api.get(f"/v1/applications/{APP}").status_code == 200  # not in `endpoints`
    assert cloud.stats()["connections"] == connections  # bodies were drained, the connection reused


def test_random_faults_are_reproducible_from_the_seed() -> None:
    def statuses() -> list[int]:
        with FakeCloud(faults=Faults(error_rate=0.5, seed=7)) as cloud, new_client(headers=AUTH) as client:
            return [client.get(f"{cloud.url}/v1/applications/{APP}").status_code for _ in range(30)]

    first = statuses()
    assert first == statuses()
    assert 200 in first
    assert set(first) - {200}


def test_throttling_alternates_retry_after(cloud: FakeCloud, api: httpx.Client) -> None:
    cloud.set_faults(throttle_rate=1.0, throttle_retry_after=2.5)
    responses = [api.get(f"/v1/applications/{APP}") for _ in range(3)]
    assert [r.status_code for r in responses] == [429, 429, 429]
    assert [r.headers.get("Retry-After") for r in responses] == ["2.5", None, "2.5"]


def test_latency_delays_the_chosen_endpoints(cloud: FakeCloud, api: httpx.Client) -> None:
    cloud.set_faults(latency_seconds=0.1, endpoints=frozenset({"get_application"}))
    started = time.monotonic()
    assert api.get(f"/v1/applications/{APP}").status_code == 200
    assert time.monotonic() - started >= 0.1


def test_slow_post_times_out_the_client_but_records_the_run(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    input_id = upload(api, raw, b"{}")
    cloud.set_faults(post_delay_seconds=0.3)
    with pytest.raises(httpx.ReadTimeout):
        api.post(
            f"/v1/applications/{APP}/runs",
            json={"upload_id": input_id, "result": {"status": "succeeded"}},
            timeout=httpx.Timeout(5, read=0.05),
        )
    assert len(cloud.runs()) == 1


def test_bad_fault_settings_are_refused(cloud: FakeCloud) -> None:
    with pytest.raises(ValueError, match="unknown fault field"):
        cloud.set_faults(eror_rate=1.0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        cloud.set_faults(error_rate=2.0)
    with pytest.raises(ValueError, match="unknown endpoint"):
        cloud.set_faults(endpoints=frozenset({"upload"}))
    assert cloud.faults == Faults()


# --- control endpoints, lifecycle, serve() --------------------------------------------------------


def test_control_endpoints_drive_the_emulator(cloud: FakeCloud, api: httpx.Client, raw: httpx.Client) -> None:
    base = f"{cloud.url}/_fake"
    answer = raw.post(f"{base}/faults", json={"error_rate": 1.0, "endpoints": ["get_application"]})
    assert answer.json()["endpoints"] == ["get_application"]
    assert cloud.faults.error_rate == 1.0
    assert api.get(f"/v1/applications/{APP}").status_code >= 500
    assert raw.get(f"{base}/stats").status_code == 200  # faults never touch /_fake
    assert raw.post(f"{base}/faults", json={"error_rate": 0}).status_code == 200
    assert raw.post(f"{base}/faults", json={"bogus": 1}).status_code == 400

    assert (
        raw.post(f"{base}/fail_next", json={"endpoint": "get_application", "status": 418}).status_code == 200
    )
    assert api.get(f"/v1/applications/{APP}").status_code == 418

    data = b'{"x": 1}'
    run_id = simple_run(api, upload(api, raw, data))
    [listed] = raw.get(f"{base}/runs").json()
    assert listed["run_id"] == run_id
    assert listed["artifacts"]["input"]["sha256"] == hashlib.sha256(data).hexdigest()
    stats = raw.get(f"{base}/stats").json()
    assert stats["by_endpoint"]["create_run"] == {"200": 1}
    assert stats["by_endpoint"]["get_application"]["418"] == 1
    assert stats["runs"] == 1

    keys = raw.post(f"{base}/keys", json={"api_keys": ["fresh-key"]})
    assert keys.status_code == 200
    assert "fresh-key" not in keys.text
    assert api.get(f"/v1/applications/{APP}").status_code == 401
    assert raw.get(
        f"{cloud.url}/v1/applications/{APP}", headers={"Authorization": "Bearer fresh-key"}
    ).is_success


def test_records_and_stats_never_hold_keys_or_signatures(
    cloud: FakeCloud, api: httpx.Client, raw: httpx.Client
) -> None:
    slot = upload_url(api)
    raw.put(slot["upload_url"], content=b"x")
    signature = slot["upload_url"].rsplit("signature=", 1)[1]
    seen = repr(cloud.requests()) + json.dumps(cloud.stats())
    assert KEY not in seen
    assert signature not in seen


def test_lifecycle_is_guarded_and_stop_closes_idle_connections() -> None:
    cloud = FakeCloud()
    with pytest.raises(RuntimeError):
        _ = cloud.url
    cloud.start()
    with pytest.raises(RuntimeError):
        cloud.start()
    with new_client(headers=AUTH) as client:
        assert client.get(f"{cloud.url}/v1/applications/{APP}").status_code == 200  # keep-alive connection
        cloud.stop()
        cloud.stop()
        assert cloud.state is State.STOPPED
        with pytest.raises(httpx.TransportError):
            client.get(f"{cloud.url}/v1/applications/{APP}")


def test_https_when_given_an_ssl_context(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    with (
        FakeCloud(ssl_context=server_context) as cloud,
        httpx.Client(base_url=cloud.url, verify=client_context, headers=AUTH) as api,
        httpx.Client(verify=client_context) as raw,
    ):
        assert cloud.url.startswith("https://127.0.0.1:")
        input_id = upload(api, raw, b"{}")
        simple_run(api, input_id)
        [run] = cloud.runs()
        assert run.artifact("input") == cloud.upload(input_id)


def test_serve_prints_one_line_and_stops_on_sigterm() -> None:
    code = "from watcher.fakecloud import serve; serve(0, ['k'], ['app'], None)"
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"fake-cloud listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        with new_client() as probe:
            response = probe.get(
                f"{match.group(1)}/v1/applications/app", headers={"Authorization": "Bearer k"}
            )
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=10)
    assert (proc.returncode, rest) == (0, "")
