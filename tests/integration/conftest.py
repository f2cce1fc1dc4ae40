"""Fixtures of the command-line tests (test_cli.py, test_ops_cli.py): `main(argv)` called in-process.

Every call goes through `run()`, which checks the promise that no API key ever reaches stdout or
stderr, whatever the command and its outcome. Modules opt in with
`pytestmark = pytest.mark.usefixtures("cli_env", "sysctl_fs")`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import API_KEY, WRONG_KEY, Result, Run

from watcher.cli import hardening, main

SECRETS = (API_KEY, WRONG_KEY)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key in the environment, and nothing else a command would pick up from it."""
    monkeypatch.setenv("NEXTMV_API_KEY", API_KEY)
    for name in ("NEXTMV_WATCHER_CONFIG", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sysctl_fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /proc/sys/fs with the link protections on, so `check` does not depend on the host."""
    fs = tmp_path / "proc-sys-fs"
    fs.mkdir()
    for name in hardening.LINK_PROTECTIONS:
        (fs / name).write_text("1\n")
    monkeypatch.setattr(hardening, "PROC_SYS_FS", fs)
    return fs


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """run(*argv) -> Result: `main(argv)` in-process, its exit code and what it printed."""
    def call(*argv: str | Path) -> Result:
        capsys.readouterr()   # drop what fixtures printed (structlog's default output) before the command
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        for secret in SECRETS:
            assert secret not in captured.out, f"API key leaked to stdout of {argv}"
            assert secret not in captured.err, f"API key leaked to stderr of {argv}"
        return Result(code, captured.out, captured.err)

    return call


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
