"""What a reload changes (`daemon/reload.py`): key paths, watched paths, and what needs a restart."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from watcher.config import Config
from watcher.daemon.reload import diff

# The `make_config` fixture's type (tests/conftest.py). Not imported from there: in a whole-suite run the
# module named `conftest` may be tests/integration's.
MakeConfig = Callable[..., Config]


def test_identical_configurations_change_nothing(make_config: MakeConfig) -> None:
    changes = diff(make_config(), make_config())
    assert (changes.changed, changes.restart_required, changes.added, changes.removed) == ([], [], [], [])


def test_nested_keys_are_named_by_their_path(make_config: MakeConfig) -> None:
    changes = diff(make_config(), make_config(retry={"backoff_initial_seconds": 2}, workers=2))
    assert set(changes.changed) == {"retry.backoff_initial_seconds", "workers"}
    assert changes.restart_required == []


@pytest.mark.parametrize(("override", "key", "restart"), [
    ({"api": {"url": "http://127.0.0.1:10"}}, "api.url", True),
    ({"api": {"read_timeout_seconds": 9}}, "api.read_timeout_seconds", True),
    ({"api": {"max_name_length": 64}}, "api.max_name_length", False),
    ({"api": {"max_upload_bytes": 10}}, "api.max_upload_bytes", False),
    ({"api": {"lookup_max_pages": 3}}, "api.lookup_max_pages", False),
])
def test_only_the_api_connection_settings_and_state_dir_need_a_restart(
        make_config: MakeConfig, override: dict[str, dict[str, object]], key: str, restart: bool) -> None:
    api = {"url": "http://127.0.0.1:9", "connect_timeout_seconds": 2, "read_timeout_seconds": 5}
    new = make_config(api={**api, **override["api"]})
    changes = diff(make_config(), new)
    assert changes.changed == [key]
    assert changes.restart_required == ([key] if restart else [])


def test_a_moved_state_dir_needs_a_restart(make_config: MakeConfig, tmp_path: Path) -> None:
    old = make_config()
    changes = diff(old, dataclasses.replace(old, state_dir=tmp_path / "elsewhere"))
    assert changes.restart_required == ["state_dir"]


def test_watched_paths_added_removed_and_changed(make_config: MakeConfig, tmp_path: Path, watched: Path) -> None:
    other = tmp_path / "runs-2"
    other.mkdir()
    old = make_config()
    new = make_config(watch=[{"path": str(watched), "application_id": "app-9"},
                             {"path": str(other), "application_id": "app-2"}])
    changes = diff(old, new)
    assert changes.added == [str(other)]
    assert changes.removed == []
    assert f"watch[{watched}].application_id" in changes.changed
    assert f"watch[{other}]" in changes.changed
    assert changes.listeners is False
