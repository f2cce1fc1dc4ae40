"""The API key leaves the process environment, /proc/<pid>/environ included; the host's link protections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from watcher.cli import hardening

SECRET = "scrub-me-7d41c0e9b2"
FILES = {"input.json": '{"a": 1}', "output.json": '{"b": 2}'}

# Runs in a fresh interpreter: scrubbing the test process's own environment would be a side effect.
CHILD = """
import json, os, subprocess, sys
from watcher.cli.hardening import scrub_variable
before = open("/proc/self/environ", "rb").read()
ok = scrub_variable("THE_SECRET")
after = open("/proc/self/environ", "rb").read()
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('THE_SECRET'))"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(json.dumps({"ok": ok, "before": before.decode(), "after": after.decode(),
                  "os_environ": os.environ.get("THE_SECRET"), "absent_ok": scrub_variable("NEVER_SET"),
                  "child": child}))
"""


def _child(env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHILD], env={"PATH": os.environ.get("PATH", ""), **env},
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_scrub_variable_zeroes_the_value_in_proc_environ_and_unsets_it() -> None:
    result = _child({"THE_SECRET": SECRET, "UNRELATED": "kept-as-is"})
    assert f"THE_SECRET={SECRET}" in str(result["before"]), "the kernel's block held the value at start"
    assert result["ok"] is True
    assert SECRET not in str(result["after"])
    assert "UNRELATED=kept-as-is" in str(result["after"]), "other variables are untouched"
    assert result["os_environ"] is None
    assert result["child"] == "None", "child processes do not inherit the variable"
    assert result["absent_ok"] is True


def test_scrub_variable_says_so_when_it_cannot_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEXTMV_WATCHER_TEST_SCRUB", "value")
    monkeypatch.setattr(hardening, "PROC_ENVIRON", str(tmp_path / "no-proc"))
    assert hardening.scrub_variable("NEXTMV_WATCHER_TEST_SCRUB") is False
    assert "NEXTMV_WATCHER_TEST_SCRUB" not in os.environ, "it is unset all the same"


def test_disabled_link_protections_names_each_sysctl_that_reads_0(tmp_path: Path) -> None:
    (tmp_path / "protected_hardlinks").write_text("0\n")
    (tmp_path / "protected_symlinks").write_text("1\n")
    off = hardening.disabled_link_protections(tmp_path)
    assert [name for name, _ in off] == ["fs.protected_hardlinks"]
    assert "hardlink" in off[0][1]
    (tmp_path / "protected_symlinks").write_text("0\n")
    assert [name for name, _ in hardening.disabled_link_protections(tmp_path)] == [
        "fs.protected_hardlinks", "fs.protected_symlinks"]


def test_disabled_link_protections_reports_nothing_it_cannot_read(tmp_path: Path) -> None:
    assert hardening.disabled_link_protections(tmp_path / "no-such-dir") == []
