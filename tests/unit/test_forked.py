"""`Forked`: a child forked from this process, driven as a Popen (watcher.daemon.forked)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from watcher.daemon.forked import Forked


def test_the_child_runs_main_with_env_as_its_whole_environment_and_exits_with_its_code(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    steps: list[str] = []

    def main() -> int:
        out.write_text(json.dumps({"env": dict(os.environ), "steps": steps}))
        return 3

    child = Forked.start(main, {"ONLY": "this"}, lambda: steps.append("in_child"))
    assert child.wait(timeout=30) == 3
    assert child.poll() == 3
    assert json.loads(out.read_text()) == {"env": {"ONLY": "this"}, "steps": ["in_child"]}
    assert steps == [], "in_child ran in the child only"
    assert "ONLY" not in os.environ


def test_a_child_that_raises_exits_1() -> None:
    def main() -> int:
        raise RuntimeError("a bug")

    assert Forked.start(main, {}, lambda: None).wait(timeout=30) == 1


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
def test_wait_times_out_while_it_runs_and_a_signal_ends_it(pidfd: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not pidfd:   # a kernel before 5.3
        monkeypatch.setattr(os, "pidfd_open", lambda pid: (_ for _ in ()).throw(OSError(38, "ENOSYS")))
    r, w = os.pipe()
    child = Forked.start(lambda: os.read(r, 1) and 0, {}, lambda: os.close(w))   # blocks until w is written
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.05)
        assert child.poll() is None
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM
        child.send_signal(signal.SIGTERM)   # reaped: no signal to a pid that may be another process's
    finally:
        os.close(r)
        os.close(w)
