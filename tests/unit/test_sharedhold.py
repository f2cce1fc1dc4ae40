"""SharedHold: a 429's hold seen by every process of the daemon, through one mapped file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from watcher.cloud.client import RequestOutcome
from watcher.daemon.gate import Gate
from watcher.daemon.sharedhold import SharedHold
from watcher.errors import TransientError


def test_a_hold_set_by_another_process_is_seen_and_only_ever_moves_later(tmp_path: Path) -> None:
    mine = SharedHold(tmp_path)
    assert mine.until() == 0.0
    code = f"from pathlib import Path; from watcher.daemon.sharedhold import SharedHold; " \
           f"SharedHold(Path({str(tmp_path)!r})).extend(1000.5)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert mine.until() == 1000.5
    mine.extend(900.0)
    assert mine.until() == 1000.5, "an earlier end does not shorten the hold"
    mine.extend(1200.0)
    assert SharedHold(tmp_path).until() == 1200.0


def test_a_429_to_one_gate_holds_the_other_processes_gate(tmp_path: Path) -> None:
    now = [1000.0]

    def gate() -> Gate:
        return Gate(lambda: now[0], config=lambda: None, client=None, unpark=lambda scope: 0,  # type: ignore[arg-type,return-value]
                    shared=SharedHold(tmp_path))

    a, b = gate(), gate()
    a.observe(RequestOutcome("uploadurl", 429, 0.01, TransientError, retry_after=3.0))
    assert a.held_for() == 3.0
    assert b.held_for() == 3.0, "the other process's calls wait as well"
    now[0] += 3.5
    assert a.held_for() == 0.0 and b.held_for() == 0.0
