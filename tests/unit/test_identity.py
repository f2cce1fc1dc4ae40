"""identity: what a daemon says about itself, and whether it runs the configuration a command was given."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcher.config import Config, load_config
from watcher.daemon.identity import Match, config_of, describe, match, watches

ENV = {"STATE_DIRECTORY": "/var/lib/nextmv-watcher"}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def config_file(path: Path, runs: Path, extra: str = "") -> Path:
    path.write_text(f"watch: [{{path: {runs}, application_id: a}}]\n{extra}")
    return path


def daemon_of(config: Config, pid: int = 4242) -> dict[str, object]:
    """What a daemon running `config` answers, through JSON as on the socket (tuples become lists)."""
    return describe(config, pid)


def test_a_daemon_says_its_pid_config_state_dir_and_watched_paths(tmp_path: Path, runs: Path) -> None:
    path = config_file(tmp_path / "a.yaml", runs)
    config = load_config(path, env=ENV)

    said = describe(config, 4242)

    assert said["pid"] == 4242
    assert said["config"] == str(path)
    assert said["state_dir"] == "/var/lib/nextmv-watcher"
    assert said["control_socket"] == "/var/lib/nextmv-watcher/control.sock"
    assert said["watched"] == [str(runs)]
    assert config_of(said) == str(path)


def test_the_same_file_matches_however_it_is_named(tmp_path: Path, runs: Path) -> None:
    path = config_file(tmp_path / "a.yaml", runs)
    daemon = daemon_of(load_config(path, env=ENV))
    link = tmp_path / "link.yaml"
    link.symlink_to(path)
    hard = tmp_path / "hard.yaml"
    os.link(path, hard)

    assert match(daemon, load_config(path, env=ENV)) is Match.SAME
    assert match(daemon, load_config(link, env=ENV)) is Match.SAME
    assert match(daemon, load_config(hard, env=ENV)) is Match.SAME


def test_the_same_file_edited_since_is_a_reload_pending(tmp_path: Path, runs: Path) -> None:
    path = config_file(tmp_path / "a.yaml", runs)
    daemon = daemon_of(load_config(path, env=ENV))
    replaced = config_file(tmp_path / "new.yaml", runs, "workers: 2\n")
    replaced.rename(path)   # an editor that writes a new file and renames it over the old one

    assert match(daemon, load_config(path, env=ENV)) is Match.RELOAD_PENDING


def test_another_file_with_the_same_content_is_another_daemon(tmp_path: Path, runs: Path) -> None:
    a = config_file(tmp_path / "a.yaml", runs)
    b = config_file(tmp_path / "b.yaml", runs)

    assert match(daemon_of(load_config(a, env=ENV)), load_config(b, env=ENV)) is Match.OTHER


@pytest.mark.parametrize("said", [None, "x", {}, {"config": 7}, {"pid": 1}])
def test_a_daemon_that_does_not_say_is_another_one(tmp_path: Path, runs: Path, said: object) -> None:
    config = load_config(config_file(tmp_path / "a.yaml", runs), env=ENV)

    assert match(said, config) is Match.OTHER
    assert config_of(said) == "?"


def test_watches_is_about_the_folders_watched_path(tmp_path: Path, runs: Path) -> None:
    daemon = daemon_of(load_config(config_file(tmp_path / "a.yaml", runs), env=ENV))

    assert watches(daemon, runs / "run-1")
    assert not watches(daemon, tmp_path / "elsewhere" / "run-1")
    assert not watches(None, runs / "run-1")
