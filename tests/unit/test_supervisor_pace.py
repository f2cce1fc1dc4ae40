"""The supervisor runs the pace's rule on every process's API-call answers, in the order they were answered."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.helpers import write_config
from watcher.cloud.client import RequestOutcome
from watcher.config import load_config
from watcher.daemon.sharedpace import SharedPacing
from watcher.daemon.supervisor import Supervisor
from watcher.errors import TransientError


def test_a_429_is_judged_after_the_calls_another_process_saw_accepted_before_it(tmp_path: Path) -> None:
    """Process 0's 429 is read before process 1's ten accepted calls, all within the same read: the first
    pace must come from the rate the API accepted (ten calls in half a second: 0.9 x 20 = 18 calls/s), not
    from nothing (reading process by process gave 3.6 calls/s against a limit of 30 in `make bench`)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    config = load_config(write_config(tmp_path / "config.yaml", "https://api.test", [(runs, "app")],
                                      tmp_path / "state", processes=2), env={})
    supervisor = Supervisor(config, lock_fd=-1, key_env={}, local=lambda env: None)  # type: ignore[arg-type,return-value]
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        def process(index: int, answered_at: float) -> SharedPacing:
            address = "\0" + supervisor.children[index].address.removeprefix("@")
            return SharedPacing(config.state_dir, lambda line: sender.sendto(line.encode(), address),
                                clock=lambda: answered_at)

        process(0, 100.5).observe(RequestOutcome("create_run", 429, 0.01, TransientError, retry_after=None))
        for n in range(10):
            process(1, 100.0 + n * 0.05).observe(RequestOutcome("uploadurl", 200, 0.01, None))
        supervisor._receive(timeout=5)
        assert supervisor.pacer.rate is not None and 17 < supervisor.pacer.rate < 19, supervisor.pacer.rate
    finally:
        sender.close()
        for child in supervisor.children:
            child.sock.close()
        supervisor.pace.close()
