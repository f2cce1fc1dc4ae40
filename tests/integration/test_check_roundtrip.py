"""`nextmv-watcher check --roundtrip` against the emulator over loopback, called in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import API_KEY, Result, Run, write_config

from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.usefixtures("cli_env", "sysctl_fs")


def roundtrip(run: Run, tmp_path: Path, cloud: FakeCloud, watched: Path, *extra: str, **overrides: object) -> Result:
    config = write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                          retry={"lookup_grace_seconds": 3}, **overrides)
    return run("check", "--config", config, "--roundtrip", *extra)


def findings(out: str) -> dict[str, str]:
    """assumption -> its line, for the lines of application app-1."""
    lines = [line.removeprefix("application app-1: ") for line in out.splitlines()
             if line.startswith("application app-1: ")]
    return {line.split(":")[0]: line for line in lines}


def test_the_emulators_defaults_hold_every_assumption(run: Run, tmp_path: Path, cloud: FakeCloud,
                                                      watched: Path) -> None:
    result = roundtrip(run, tmp_path, cloud, watched, "--yes")
    assert result.code == 0, result.out + result.err
    found = findings(result.out)
    assert list(found) == ["accepted at the maximum lengths (name 128, description 256 characters)",
                           "listed within 3 s with its description verbatim", "the run list is newest first"]
    assert all(": held (" in line for line in found.values()), result.out
    runs = cloud.runs("app-1")
    assert len(runs) == 2, "a second probe tells the order of an application without other runs"
    assert all(len(r.body["name"]) == 128 and len(r.body["description"]) == 256 for r in runs)


def test_without_a_terminal_and_without_yes_nothing_is_posted(run: Run, tmp_path: Path, cloud: FakeCloud,
                                                              watched: Path) -> None:
    result = roundtrip(run, tmp_path, cloud, watched)
    assert result.code == 2
    assert "give --yes" in result.err
    assert cloud.runs() == []


def test_offline_and_roundtrip_do_not_go_together(run: Run, tmp_path: Path, cloud: FakeCloud,
                                                  watched: Path) -> None:
    result = roundtrip(run, tmp_path, cloud, watched, "--offline", "--yes")
    assert result.code == 2 and "--roundtrip needs the API" in result.err
    assert cloud.runs() == []


def test_a_named_application_that_does_not_exist_exits_1(run: Run, tmp_path: Path, watched: Path) -> None:
    with FakeCloud(api_keys=[API_KEY], applications=["app-1"]) as fake:
        result = roundtrip(run, tmp_path, fake, watched, "--yes", "--application", "nope")
        assert fake.runs() == []
    assert result.code == 1
    assert "application nope: NOT FOUND" in result.out


def test_a_list_oldest_first_exits_1_naming_the_order(run: Run, tmp_path: Path, watched: Path) -> None:
    with FakeCloud(api_keys=[API_KEY], list_order="oldest") as fake:
        result = roundtrip(run, tmp_path, fake, watched, "--yes")
    assert result.code == 1, result.out + result.err
    order = findings(result.out)["the run list is newest first"]
    assert order.endswith("violated (the list is oldest first)")
    assert "pages through the whole run list" in result.out
    others = [line for key, line in findings(result.out).items() if key != "the run list is newest first"]
    assert all(": held (" in line for line in others), result.out


def test_an_api_that_refuses_the_configured_lengths_is_named(run: Run, tmp_path: Path, watched: Path) -> None:
    with FakeCloud(api_keys=[API_KEY], max_name_length=100) as fake:
        result = roundtrip(run, tmp_path, fake, watched, "--yes")
        assert fake.runs() == []
    assert result.code == 1
    accepted = findings(result.out)["accepted at the maximum lengths (name 128, description 256 characters)"]
    assert ": violated (the API refused the probe: create_run: HTTP 400" in accepted
    assert "api.max_name_length" in result.out


def test_an_api_that_cuts_descriptions_silently_is_caught(run: Run, tmp_path: Path, watched: Path) -> None:
    with FakeCloud(api_keys=[API_KEY], max_description_length=200, over_limit="truncate") as fake:
        result = roundtrip(run, tmp_path, fake, watched, "--yes")
    assert result.code == 1
    listed = findings(result.out)["listed within 3 s with its description verbatim"]
    assert ": violated (the listed description lacks the token line (200 characters listed, 256 sent))" in listed
    assert "may be duplicated" in result.out
