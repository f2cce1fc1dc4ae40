"""sd_notify: a real unix datagram socket stands in for systemd's notification socket."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from watcher.daemon.notify import Notifier


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: each message is one datagram."""

    def __init__(self, address: str, env_value: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5.0)
        self.env = {"NOTIFY_SOCKET": env_value}

    def receive(self) -> list[str]:
        """The next datagram's lines; fails the test after 5 s without one."""
        return self.sock.recv(65536).decode("utf-8").split("\n")

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5.0)
        return False


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    fake = FakeSystemd(str(path), str(path))
    yield fake
    fake.sock.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    name = f"nextmv-watcher-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name, "@" + name)
    yield fake
    fake.sock.close()


def test_lifecycle_messages_arrive_one_datagram_each(systemd: FakeSystemd) -> None:
    with Notifier({**systemd.env, "WATCHDOG_USEC": "10000000"}) as n:
        assert n.enabled
        assert n.ready("queue depth 3")
        assert systemd.receive() == ["READY=1", "STATUS=queue depth 3"]
        assert n.status("queue depth 0")
        assert systemd.receive() == ["STATUS=queue depth 0"]
        assert n.watchdog()
        assert systemd.receive() == ["WATCHDOG=1"]
        assert n.stopping()
        assert systemd.receive() == ["STOPPING=1"]
        assert systemd.nothing_pending()


def test_abstract_namespace_socket(abstract_systemd: FakeSystemd) -> None:
    with Notifier(abstract_systemd.env) as n:
        assert n.ready()
        assert abstract_systemd.receive() == ["READY=1"]
        assert n.stopping()
        assert abstract_systemd.receive() == ["STOPPING=1"]


def test_reloading_carries_the_monotonic_clock(systemd: FakeSystemd) -> None:
    with Notifier(systemd.env) as n:
        before = time.monotonic_ns() // 1000
        assert n.reloading()
        after = time.monotonic_ns() // 1000
        lines = systemd.receive()
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_text_stays_on_one_line(systemd: FakeSystemd) -> None:
    with Notifier(systemd.env) as n:
        assert n.status("queue 2\nSTOPPING=1")
        assert systemd.receive() == ["STATUS=queue 2 STOPPING=1"]


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    with Notifier({"WATCHDOG_USEC": "10000000"}) as n:
        assert not n.enabled
        assert n.watchdog_interval is None
        assert [n.ready("x"), n.status("x"), n.watchdog(), n.stopping(), n.reloading(), n.send("READY=1")] == [
            False] * 6


@pytest.mark.parametrize("value", ["", "relative/path.sock", "@", "vsock:2:1234"])
def test_unusable_notify_socket_values_disable(value: str) -> None:
    with Notifier({"NOTIFY_SOCKET": value}) as n:
        assert not n.enabled
        assert not n.ready()


def test_reads_os_environ_by_default(systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.env["NOTIFY_SOCKET"])
    with Notifier() as n:
        assert n.ready()
    assert systemd.receive() == ["READY=1"]


@pytest.mark.parametrize(("usec", "interval"), [
    ("10000000", 5.0),
    ("30000000", 15.0),
    ("1", 0.0000005),
    (" 2000000 ", 1.0),
    ("0", None),
    ("-5", None),
    ("ten", None),
    ("1.5", None),
    ("", None),
])
def test_watchdog_usec_parsing(systemd: FakeSystemd, usec: str, interval: float | None) -> None:
    with Notifier({**systemd.env, "WATCHDOG_USEC": usec}) as n:
        assert n.watchdog_interval == interval


def test_watchdog_pid_of_this_process_enables(systemd: FakeSystemd) -> None:
    env = {**systemd.env, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    with Notifier(env) as n:
        assert n.watchdog_interval == 2.0
        assert n.watchdog()
        assert systemd.receive() == ["WATCHDOG=1"]


@pytest.mark.parametrize("pid", [str(os.getpid() + 1), "1", "not-a-pid"])
def test_watchdog_pid_of_another_process_disables_the_watchdog(systemd: FakeSystemd, pid: str) -> None:
    with Notifier({**systemd.env, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": pid}) as n:
        assert n.watchdog_interval is None
        assert not n.watchdog()
        assert n.ready()   # the rest of the protocol still works
    assert systemd.receive() == ["READY=1"]
    assert systemd.nothing_pending()


def test_no_watchdog_configured_sends_no_ping(systemd: FakeSystemd) -> None:
    with Notifier(systemd.env) as n:
        assert n.watchdog_interval is None
        assert not n.watchdog()
    assert systemd.nothing_pending()


def test_a_vanished_socket_never_raises_and_is_logged_once(tmp_path: Path) -> None:
    missing = tmp_path / "gone.sock"
    with capture_logs() as logs, Notifier({"NOTIFY_SOCKET": str(missing)}) as n:
        assert n.enabled
        assert not n.ready()
        assert not n.status("still here")
        assert not n.stopping()
    failures = [e for e in logs if e["event"] == "sd_notify_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "debug"


def test_failure_is_logged_again_after_a_recovery(tmp_path: Path) -> None:
    path = tmp_path / "flaky.sock"
    with capture_logs() as logs, Notifier({"NOTIFY_SOCKET": str(path)}) as n:
        assert not n.ready()
        fake = FakeSystemd(str(path), str(path))
        try:
            assert n.status("back")
            assert fake.receive() == ["STATUS=back"]
        finally:
            fake.sock.close()
        path.unlink()
        assert not n.status("gone again")
    assert [e["event"] for e in logs] == ["sd_notify_failed", "sd_notify_failed"]


def test_close_is_final_and_idempotent(systemd: FakeSystemd) -> None:
    n = Notifier(systemd.env)
    assert n.ready()
    assert systemd.receive() == ["READY=1"]
    n.close()
    n.close()
    assert not n.stopping()
    assert systemd.nothing_pending()


@pytest.mark.timeout(20)
def test_a_systemd_that_stops_reading_never_blocks_a_sender(systemd: FakeSystemd) -> None:
    """sendto on a full datagram queue would block while holding the notifier's lock (and every other
    thread that notifies behind it); it fails instead, and sending works again once systemd reads."""
    notifier = Notifier(systemd.env)
    sent = 0
    while notifier.status(f"filling the queue {sent}"):
        sent += 1
        assert sent < 100_000, "the queue never filled"
    assert not notifier.status("one more"), "a full queue is a failed send, not a wait"
    while not systemd.nothing_pending():
        pass
    assert notifier.status("after the queue drained")
    assert systemd.receive() == ["STATUS=after the queue drained"]
    notifier.close()
