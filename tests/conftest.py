"""Fixtures shared by the suite: the emulator on loopback, watched directories, the daemon process."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog

sys.path.insert(0, str(Path(__file__).parent))

from evidence import SECRET
from helpers import API_KEY, Daemon, write_config
from hostile import Server

from watcher.fakecloud import FakeCloud


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud(api_keys=[API_KEY]) as fake:
        yield fake


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def daemon_factory(tmp_path: Path, cloud: FakeCloud) -> Iterator[Callable[..., Daemon]]:
    """Make (not start) daemons: factory(watched=[(path, app)], **config overrides)."""
    made: list[Daemon] = []

    def make(watched: list[tuple[Path, str]], env: dict[str, str] | None = None, **overrides: object) -> Daemon:
        n = len(made)
        config = write_config(tmp_path / f"config-{n}.yaml", cloud.url, watched, tmp_path / "state", **overrides)
        daemon = Daemon(config, tmp_path / f"daemon-{n}.log", env=env)
        made.append(daemon)
        return daemon

    yield make
    for d in made:
        if d.alive():
            d.kill()


@pytest.fixture
def server() -> Iterator[Server]:
    """The shared server of the attack tests (hostile.py) in a fresh directory, with its own emulator."""
    base = Path(tempfile.mkdtemp(prefix="nextmv-attacks-", dir="/tmp"))
    os.chmod(base, 0o755)   # tmp_path sits under a 0700 directory the daemon's user cannot traverse
    try:
        with FakeCloud(api_keys=[SECRET]) as cloud:
            try:
                made = Server(base, cloud)
            except RuntimeError as exc:
                pytest.skip(str(exc))
            try:
                yield made
            finally:
                for daemon in made.daemons:
                    if daemon.alive():
                        daemon.kill()
                    # Shown by pytest when the test failed: what the daemon was doing last.
                    events = [e for e in daemon.events() if e.get("level") != "debug"]
                    print(f"--- {daemon.log_path.name}, last events:", *events[-30:], sep="\n")
    finally:
        shutil.rmtree(base, ignore_errors=True)
