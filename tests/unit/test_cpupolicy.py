"""watcher.daemon.cpupolicy in a process of its own (the policy is the calling thread's: the test's own
stays as it is), and the real daemon's threads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from watcher.daemon import cpupolicy

APPLY = "from watcher.daemon import cpupolicy; import os; print(cpupolicy.apply(), os.sched_getscheduler(0))"


def run(*prefix: str) -> tuple[str, int]:
    out = subprocess.run([*prefix, sys.executable, "-c", APPLY], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()
    return out[0], int(out[1])


def test_the_default_policy_becomes_batch() -> None:
    assert run() == ("batch", os.SCHED_BATCH)


@pytest.mark.skipif(shutil.which("chrt") is None, reason="needs chrt (util-linux)")
def test_a_policy_the_operator_chose_is_kept() -> None:
    assert run("chrt", "--idle", "0") == ("idle", os.SCHED_IDLE)


def test_the_names_cover_the_policies_linux_has() -> None:
    assert {cpupolicy.NAMES[os.SCHED_OTHER], cpupolicy.NAMES[os.SCHED_BATCH]} == {"other", "batch"}
