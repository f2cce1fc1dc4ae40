"""The daemon's signals as `run` wires them (`relay_signals`), on a real Service against the emulator.

The hang this guards against: SIGTERM handled while the main loop was inside `_wake.wait()` or
`_wake.clear()`, which hold the event's (non-reentrant) lock; the handler called `request_stop`, whose
`_wake.set()` waited for that lock forever, and the daemon never stopped. `signal.raise_signal` runs the
Python-level handler before it returns, so raising it with the lock held is that moment, every time."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import API_KEY, marker, wait_for, write_config, write_folder
from structlog.testing import capture_logs

from watcher.cli.daemon import relay_signals
from watcher.config import load_config
from watcher.daemon.service import Service, State
from watcher.fakecloud import FakeCloud


@pytest.fixture
def service(cloud: FakeCloud, watched: Path, tmp_path: Path) -> Iterator[Service]:
    made = Service(load_config(write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")],
                                            tmp_path / "state")), API_KEY)
    made.start()
    yield made
    made.shutdown()


@pytest.mark.timeout(30)   # before the fix, raise_signal never returned
def test_sigterm_handled_while_the_main_loop_holds_its_wake_lock_drains_and_stops(service: Service) -> None:
    with relay_signals(service):
        with service._wake._cond:   # what Event.wait/clear hold on the main loop's thread
            signal.raise_signal(signal.SIGTERM)
        wait_for(service._stop.is_set, 10, "the stop request")
        service.run()   # the main loop: it sees the request and drains
    assert service.state is State.STOPPED


@pytest.mark.timeout(30)
def test_sighup_handled_while_the_main_loop_holds_its_wake_lock_reloads(service: Service, watched: Path) -> None:
    with relay_signals(service), capture_logs() as logs:
        with service._wake._cond:
            signal.raise_signal(signal.SIGHUP)
        wait_for(service._reload.is_set, 10, "the reload request")
        write_folder(watched, "after-reload", {"input.json": "{}", "output.json": "{}"})
        assert service.run_until_idle(timeout=20)   # the main loop applies the reload, then tracks the folder
    assert "config_reloaded" in [e["event"] for e in logs]
    assert marker(watched / "after-reload")
