"""`nextmv-watcher demo` as a new user runs it: the real emulator and daemon, output to a file or a pipe."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

DIRECTORY = re.compile(r"^demo directory: (\S+)$", re.M)


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcher", "demo", *args], capture_output=True, text=True, check=False,
                          timeout=120)


def test_the_demo_passes_in_plain_text_and_says_it_removed_its_directory() -> None:
    result = demo()

    assert result.returncode == 0, result.stderr
    assert "demo passed" in result.stdout
    root = Path(DIRECTORY.search(result.stdout).group(1))   # type: ignore[union-attr]
    assert not root.exists()
    assert f"demo directory {root} removed" in result.stdout and "--keep" in result.stdout
    # Not a terminal: no colour codes in what the daemon logged or the demo printed.
    assert "\x1b[" not in result.stdout + result.stderr
    assert "daemon_started" in result.stderr


def test_the_demo_with_keep_keeps_its_directory() -> None:
    result = demo("--keep")

    assert result.returncode == 0, result.stderr
    root = Path(DIRECTORY.search(result.stdout).group(1))   # type: ignore[union-attr]
    try:
        assert f"demo directory kept: {root}" in result.stdout
        assert (root / "config.yaml").is_file()
        assert (root / "runs" / "routing-succeeded" / ".nextmv-tracked.json").is_file()
    finally:
        shutil.rmtree(root, ignore_errors=True)
