"""The signal relay: actions run on the relay's thread, never inside a signal handler.

`signal.raise_signal` runs the Python-level handler before it returns, on this (the main) thread: a
signal raised inside a `with lock:` block is handled while the lock is held, deterministically. That is
what hung the daemon on SIGTERM: its handler set an event whose lock the main loop held (inside
`Event.wait`/`clear`)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator

import pytest
from helpers import wait_for
from structlog.testing import capture_logs

from watcher.daemon.signals import SignalRelay


@pytest.fixture
def relay() -> Iterator[Callable[[dict[int, Callable[[], None]]], SignalRelay]]:
    made: list[SignalRelay] = []

    def make(actions: dict[int, Callable[[], None]]) -> SignalRelay:
        made.append(SignalRelay(actions).start())
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.mark.timeout(20)   # the handler that takes the lock itself deadlocks this thread for good
def test_a_signal_handled_while_this_thread_holds_the_lock_its_action_needs_is_acted_on_once_it_is_free(
        relay: Callable[[dict[int, Callable[[], None]]], SignalRelay]) -> None:
    lock = threading.Lock()   # as an Event's: not reentrant
    done = threading.Event()

    def action() -> None:
        with lock:
            done.set()

    relay({signal.SIGUSR1: action})
    with lock:
        signal.raise_signal(signal.SIGUSR1)   # handled here, the lock held
        assert not done.is_set()
    assert done.wait(10)


def test_each_signal_is_one_call_of_its_action_in_the_order_they_came(
        relay: Callable[[dict[int, Callable[[], None]]], SignalRelay]) -> None:
    calls: list[str] = []
    relay({signal.SIGUSR1: lambda: calls.append("usr1"), signal.SIGUSR2: lambda: calls.append("usr2")})
    for signum in (signal.SIGUSR1, signal.SIGUSR1, signal.SIGUSR2):
        signal.raise_signal(signum)
    wait_for(lambda: len(calls) == 3, 10, "three calls")
    assert calls == ["usr1", "usr1", "usr2"]


def test_an_action_that_raises_is_logged_and_the_next_signal_is_still_relayed(
        relay: Callable[[dict[int, Callable[[], None]]], SignalRelay]) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("a bug")

    with capture_logs() as logs:
        relay({signal.SIGUSR1: broken, signal.SIGUSR2: lambda: calls.append("usr2")})
        signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR2)
        wait_for(lambda: calls == ["usr2"], 10, "the second signal's action")
    failed = [e for e in logs if e["event"] == "signal_action_failed"]
    assert [(e["signal"], e["log_level"]) for e in failed] == [("SIGUSR1", "error")]


def test_close_puts_back_the_handlers_and_the_wakeup_fd_and_ends_the_thread() -> None:
    def before(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGUSR1, before)
    read, write = os.pipe()
    os.set_blocking(write, False)
    old_fd = signal.set_wakeup_fd(write)
    try:
        r = SignalRelay({signal.SIGUSR1: lambda: None}).start()
        assert signal.getsignal(signal.SIGUSR1) is not before
        relayed = [t for t in threading.enumerate() if t.name == "signals"]
        r.close()
        r.close()   # idempotent
        assert signal.getsignal(signal.SIGUSR1) is before
        assert signal.set_wakeup_fd(write) == write
        assert relayed and not any(t.is_alive() for t in relayed)
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGUSR1, previous)
        os.close(read)
        os.close(write)


def test_start_off_the_main_thread_raises_and_leaves_no_pipe_open() -> None:
    fds = set(os.listdir("/proc/self/fd"))
    raised: list[BaseException] = []

    def start() -> None:
        try:
            SignalRelay({signal.SIGUSR1: lambda: None}).start()
        except ValueError as exc:
            raised.append(exc)

    t = threading.Thread(target=start)
    t.start()
    t.join()
    assert len(raised) == 1
    assert set(os.listdir("/proc/self/fd")) == fds
