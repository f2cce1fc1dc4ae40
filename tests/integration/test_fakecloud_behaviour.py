"""The emulator's service behaviour (`Behaviour`): list order, name and description limits, known
instances and batch experiments, the rate limit; set at construction, at runtime and over
/_fake/behaviour; and the `fake-cloud` command's flags. Over real loopback HTTP with httpx."""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from watcher.cli import main
from watcher.cli.parser import FAULT_FLAGS
from watcher.fakecloud import Behaviour, FakeCloud, Faults
from watcher.fakecloud.control import _ACTIONS

KEY = "test-key"
APP = "app"
AUTH = {"Authorization": f"Bearer {KEY}"}
RUNS = f"/v1/applications/{APP}/runs"


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud(api_keys=[KEY], applications=[APP]) as running:
        yield running
        assert running.stats()["internal_errors"] == []


@pytest.fixture
def api(cloud: FakeCloud) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cloud.url, headers=AUTH, timeout=5) as client:
        yield client


def uploaded(api: httpx.Client) -> str:
    answer = api.post(f"{RUNS}/uploadurl").json()
    with httpx.Client(timeout=5) as raw:
        assert raw.put(answer["upload_url"], content=b"{}").status_code == 200
    upload_id: str = answer["upload_id"]
    return upload_id


def post_run(api: httpx.Client, input_id: str, **fields: Any) -> httpx.Response:
    params = {"instance_id": fields.pop("instance_id")} if "instance_id" in fields else None
    body = {"upload_id": input_id, **fields, "result": {"status": "succeeded"}}
    return api.post(RUNS, json=body, params=params)


def new_run(api: httpx.Client, input_id: str) -> str:
    response = post_run(api, input_id)
    assert response.status_code == 200, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def page(api: httpx.Client, token: str | None = None) -> tuple[list[str], str]:
    params = {"pagereturn": "true", **({"pagetoken": token} if token else {})}
    answer = api.get(RUNS, params=params).json()
    return [run["id"] for run in answer["runs"]], answer.get("next_page_token", "")


# --- defaults -------------------------------------------------------------------------------------


def test_the_defaults_are_the_real_services_as_far_as_known() -> None:
    assert FakeCloud().behaviour == Behaviour() == Behaviour(
        list_order="newest", max_name_length=128, max_description_length=256, over_limit="refuse",
        instances=None, batch_experiments=None, max_upload_bytes=500_000_000, rate_limit_per_second=None,
        rate_limit_burst=10)


def test_behaviour_is_set_by_object_and_by_field_and_validated() -> None:
    cloud = FakeCloud(behaviour=Behaviour(list_order="oldest", max_name_length=5), max_name_length=None,
                      instances=["a", "b"])
    assert cloud.behaviour == Behaviour(list_order="oldest", max_name_length=None, instances=frozenset({"a", "b"}))
    cloud.set_behaviour(over_limit="truncate", batch_experiments=("e",))
    assert (cloud.behaviour.over_limit, cloud.behaviour.batch_experiments) == ("truncate", frozenset({"e"}))
    bad_values: list[dict[str, Any]] = [
        {"list_order": "random"}, {"max_name_length": 0}, {"over_limit": "ignore"}, {"instances": "a"},
        {"rate_limit_per_second": -1}, {"rate_limit_burst": 0}, {"max_upload_bytes": 1.5},
    ]
    for bad in bad_values:
        with pytest.raises((ValueError, TypeError)):
            cloud.set_behaviour(**bad)
        with pytest.raises((ValueError, TypeError)):
            FakeCloud(behaviour=Behaviour(**bad))
    with pytest.raises(ValueError, match="unknown behaviour field"):
        cloud.set_behaviour(colour="blue")
    assert cloud.behaviour.list_order == "oldest"


# --- the list order -------------------------------------------------------------------------------


def test_oldest_first_pages_stay_contiguous_while_runs_are_created(cloud: FakeCloud, api: httpx.Client) -> None:
    cloud.set_behaviour(list_order="oldest")
    input_id = uploaded(api)
    created = [new_run(api, input_id) for _ in range(120)]
    first, token = page(api)
    assert first == created[:50]
    created += [new_run(api, input_id) for _ in range(5)]  # listed after the existing ones
    second, token = page(api, token)
    assert second == created[50:100]
    third, token = page(api, token)
    assert (third, token) == (created[100:], "")
    assert [r["id"] for r in api.get(RUNS).json()] == created
    stamps = [r["created_at"] for r in api.get(RUNS).json()]
    assert stamps == sorted(stamps)

    cloud.set_behaviour(list_order="newest")
    newest, token = page(api)
    assert newest == created[::-1][:50]
    assert page(api, token)[0] == created[::-1][50:100]


# --- name and description limits ------------------------------------------------------------------


def test_names_and_descriptions_over_the_limits_are_refused(cloud: FakeCloud, api: httpx.Client) -> None:
    input_id = uploaded(api)
    long_name = post_run(api, input_id, name="n" * 129)
    assert long_name.status_code == 400
    assert re.search(r"\bname\b.*\b128\b", long_name.json()["error"])
    long_description = post_run(api, input_id, description="d" * 257)
    assert long_description.status_code == 400
    assert re.search(r"\bdescription\b.*\b256\b", long_description.json()["error"])
    assert cloud.runs() == []
    # Characters, not bytes: 128 two-byte characters are 256 bytes.
    assert post_run(api, input_id, name="é" * 128, description="ü" * 256).status_code == 200


def test_over_limit_truncate_cuts_silently(cloud: FakeCloud, api: httpx.Client) -> None:
    cloud.set_behaviour(over_limit="truncate", max_name_length=10, max_description_length=20)
    input_id = uploaded(api)
    description = "user text " * 5 + "\n\nnextmv-watcher:" + "a" * 32
    response = post_run(api, input_id, name="a-very-long-folder-name", description=description)
    assert response.status_code == 200
    [run] = cloud.runs()
    assert (run.body["name"], run.body["description"]) == ("a-very-lon", description[:20])
    assert run.truncated == ("name", "description")
    [listed] = api.get(RUNS).json()
    assert (listed["name"], listed["description"]) == ("a-very-lon", description[:20])

    cloud.set_behaviour(max_name_length=None, max_description_length=None, over_limit="refuse")
    assert post_run(api, input_id, name="x" * 5000, description="y" * 5000).status_code == 200


# --- known instances and batch experiments --------------------------------------------------------


def test_an_unknown_instance_is_404_while_the_application_exists(cloud: FakeCloud, api: httpx.Client) -> None:
    cloud.set_behaviour(instances=["inst-1"])
    input_id = uploaded(api)
    for instance in ("inst-1", "latest"):
        assert post_run(api, input_id, instance_id=instance).status_code == 200
    assert post_run(api, input_id).status_code == 200
    unknown = post_run(api, input_id, instance_id="ghost")
    assert unknown.status_code == 404
    assert "instance not found" in unknown.json()["error"]
    assert "ghost" in unknown.json()["error"]
    assert api.get(f"/v1/applications/{APP}").status_code == 200
    assert len(cloud.runs()) == 3


def test_an_unknown_batch_experiment_is_404(cloud: FakeCloud, api: httpx.Client) -> None:
    cloud.set_behaviour(batch_experiments=["be-1"])
    input_id = uploaded(api)
    assert post_run(api, input_id, batch_experiment_id="be-1").status_code == 200
    unknown = post_run(api, input_id, batch_experiment_id="be-x")
    assert unknown.status_code == 404
    assert "batch experiment not found" in unknown.json()["error"]
    assert "be-x" in unknown.json()["error"]
    assert [run.body.get("batch_experiment_id") for run in cloud.runs()] == ["be-1"]


# --- the rate limit -------------------------------------------------------------------------------


def test_the_token_bucket_answers_429_with_retry_after(cloud: FakeCloud, api: httpx.Client) -> None:
    cloud.set_behaviour(rate_limit_per_second=0.5, rate_limit_burst=3)
    answer = api.post(f"{RUNS}/uploadurl").json()  # 1
    with httpx.Client(timeout=5) as raw:
        for _ in range(5):  # presigned PUTs take no token
            assert raw.put(answer["upload_url"], content=b"{}").status_code == 200
        assert api.get(f"/v1/applications/{APP}").status_code == 200  # 2
        assert api.get(RUNS).status_code == 200  # 3
        refused = api.get(f"/v1/applications/{APP}")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "2"  # whole seconds until a token is due at 0.5/s
        assert "rate limit" in refused.json()["error"]
        assert raw.get(f"{cloud.url}/_fake/stats").status_code == 200  # admin calls take no token
    cloud.set_behaviour(rate_limit_per_second=None)
    assert api.get(f"/v1/applications/{APP}").status_code == 200


# --- the admin endpoint ---------------------------------------------------------------------------


def test_the_behaviour_endpoint_reads_and_changes_the_behaviour(cloud: FakeCloud) -> None:
    with httpx.Client(base_url=f"{cloud.url}/_fake", timeout=5) as admin:
        assert admin.get("/behaviour").json() == dataclasses.asdict(Behaviour())
        changed = admin.post("/behaviour", json={"list_order": "oldest", "instances": ["b", "a"],
                                                 "max_name_length": None})
        assert changed.status_code == 200
        assert (changed.json()["instances"], changed.json()["max_name_length"]) == (["a", "b"], None)
        assert cloud.behaviour.list_order == "oldest"
        assert admin.post("/behaviour", json={"list_order": "sideways"}).status_code == 400
        assert admin.post("/behaviour", json=["oldest"]).status_code == 400
        assert admin.get("/faults").json()["put_slow_down_rate"] == 0.0


# --- the command ----------------------------------------------------------------------------------


def test_fake_cloud_help_documents_every_flag_field_and_admin_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as leaving:
        main(["fake-cloud", "--help"])
    assert leaving.value.code == 0
    text = capsys.readouterr().out
    for method, path in _ACTIONS:
        assert re.search(rf"{method}\s+{re.escape(path)}\b", text), (method, path)
    for field in dataclasses.fields(Faults):
        assert field.name in text
    assert set(FAULT_FLAGS) | {"endpoints", "seed"} == {f.name for f in dataclasses.fields(Faults)}
    flags = ("--list-order", "--max-name-length", "--max-description-length", "--over-limit", "--instance",
             "--batch-experiment", "--max-upload-bytes", "--rate-limit", "--rate-burst", "--faults")
    for flag in flags:
        assert flag in text
    defaults = Behaviour()
    for value in (defaults.max_name_length, defaults.max_description_length, defaults.max_upload_bytes,
                  defaults.rate_limit_burst):
        assert f"default: {value}" in text


def test_fake_cloud_refuses_bad_values_before_serving(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fake-cloud", "--port", "0", "--faults", '{"eror_rate": 1}']) == 2
    assert "eror_rate" in capsys.readouterr().err
    assert main(["fake-cloud", "--port", "0", "--put-slow-down-rate", "2"]) == 2
    assert "put_slow_down_rate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fake-cloud", "--max-name-length", "ten"])


def test_fake_cloud_flags_set_the_behaviour_and_the_faults() -> None:
    argv = [sys.executable, "-m", "watcher", "fake-cloud", "--port", "0", "--api-key", "k",
            "--list-order", "oldest", "--max-name-length", "none", "--max-description-length", "300",
            "--over-limit", "truncate", "--instance", "i-1", "--instance", "i-2", "--batch-experiment", "be",
            "--max-upload-bytes", "0", "--rate-limit", "5", "--rate-burst", "7",
            "--faults", '{"error_rate": 0.5, "endpoints": ["put"]}', "--put-slow-down-rate", "0.25",
            "--seed", "3"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.fullmatch(r"fake-cloud listening on (http://127\.0\.0\.1:\d+)\n", line)
            assert match, line
            with httpx.Client(base_url=f"{match.group(1)}/_fake", timeout=5) as admin:
                behaviour = admin.get("/behaviour").json()
                faults = admin.get("/faults").json()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
    assert behaviour == {
        "list_order": "oldest", "max_name_length": None, "max_description_length": 300, "over_limit": "truncate",
        "instances": ["i-1", "i-2"], "batch_experiments": ["be"], "max_upload_bytes": None,
        "rate_limit_per_second": 5.0, "rate_limit_burst": 7,
    }
    assert {k: faults[k] for k in ("error_rate", "endpoints", "put_slow_down_rate", "seed")} == {
        "error_rate": 0.5, "endpoints": ["put"], "put_slow_down_rate": 0.25, "seed": 3}
    assert proc.returncode == 0


@pytest.mark.parametrize(("flags", "answers"), [
    (["--application", "a1", "--application", "a2"], {"a1": 200, "a2": 200, "other": 404}),
    ([], {"a1": 200, "other": 200}),
])
def test_fake_cloud_application_flag_limits_the_known_applications(flags: list[str], answers: dict[str, int]) -> None:
    argv = [sys.executable, "-m", "watcher", "fake-cloud", "--port", "0", "--api-key", "k", *flags]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            match = re.fullmatch(r"fake-cloud listening on (http://127\.0\.0\.1:\d+)\n", proc.stdout.readline())
            assert match
            with httpx.Client(base_url=match.group(1), headers={"Authorization": "Bearer k"}, timeout=5) as api:
                seen = {app: api.get(f"/v1/applications/{app}").status_code for app in answers}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)
    assert seen == answers
