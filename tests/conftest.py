"""Fixtures shared by the suite: the emulator on loopback, watched directories, the daemon process."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

sys.path.insert(0, str(Path(__file__).parent))

from evidence import SECRET
from helpers import API_KEY, Daemon, write_config
from hostile import Server
from hostile_fs import SECRET as KEY_BYTES
from hostile_fs import open_fds, remove_all

from watcher.config import Config, load_config
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


@pytest.fixture
def no_fd_leak(tmp_path: Path) -> Iterator[None]:
    """Fail a test that leaves a descriptor open; remove its tmp_path however deep (pytest's own clean-up
    recurses on the stack and fails on the 3,000-level trees of the run-folder attack tests)."""
    before = open_fds()
    try:
        yield
        assert open_fds() == before, "a descriptor was left open"
    finally:
        remove_all(tmp_path)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """An empty run folder in a watched path."""
    path = tmp_path / "runs" / "run-1"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """The daemon's API key, outside every run folder."""
    path = tmp_path / "secret.key"
    path.write_bytes(KEY_BYTES)
    return path


MakeConfig = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path, watched: Path) -> MakeConfig:
    """make_config(**overrides) -> the Config of `watched` (application app-1), with the test defaults."""
    def make(**overrides: Any) -> Config:
        path = write_config(tmp_path / "config.yaml", "http://127.0.0.1:9", [(watched, "app-1")],
                            tmp_path / "state", **overrides)
        return load_config(path)

    return make


@pytest.fixture
def done(tmp_path: Path) -> Path:
    path = tmp_path / "done"
    path.mkdir()
    return path


@pytest.fixture
def shm_done(tmp_path: Path) -> Iterator[Path]:
    """A done_path on another filesystem (/dev/shm is a tmpfs; tmp_path is not)."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    path = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="nextmv-done-"))
    try:
        if path.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("/dev/shm is on the same filesystem as the test directory")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
