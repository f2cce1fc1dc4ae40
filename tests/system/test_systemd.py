"""The Debian package under a real systemd (issue 12), checked through systemctl and journalctl: the
unit's sandbox (ProtectSystem=strict, the syscall filter, LoadCredential=, StateDirectory=,
RuntimeDirectory=), Type=notify, reload, `status` from an admin shell, the journal's error channel,
the watchdog, the drain on stop, and the package's install, upgrade, remove and purge.

One container serves the session (conftest.py). The tests are one scenario and run in this order:
each says what it starts from, and each folder is dropped under its own name, so that "tracked
exactly once" can be checked across all of them at the end.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from helpers import wait_for
from nspawn import Container
from systemd_helpers import (
    EXIT_LINE,
    KNOWN_APP,
    RUNS,
    UNIT,
    Journal,
    cloud,
    configure,
    daemon_reload,
    drop,
    run_names,
    show,
    tracked,
    wait_tracked,
)

import watcher

if not os.environ.get("NEXTMV_SYSTEMD_ROOTFS"):
    pytest.skip("boots a real systemd in a container (root, systemd-nspawn): run `make systemd-test`",
                allow_module_level=True)

pytestmark = pytest.mark.timeout(300)

DROP_INS = "/etc/systemd/system/nextmv-watcher.service.d"
MORE = "/srv/nextmv/more"          # a watched path added by a reload, under ReadWritePaths=-/srv/nextmv
UNKNOWN = "/srv/nextmv/unknown"    # bound to an application the emulator does not know
DENIALS = ("EPERM", "EROFS", "EACCES", "Permission denied", "Operation not permitted", "Read-only file system")
# No question asked, and the admin's edited config.yaml kept, as `apt install` does it by hand.
APT_OPTIONS = ("-o", "Dpkg::Options::=--force-confold")


def deb_inside(box: Container) -> str:
    """The package's path in the container (dist/ is bound read-only at /mnt/dist)."""
    return box.run("sh", "-c", f"ls /mnt/dist/nextmv-watcher_{watcher.__version__}_*.deb").out.strip()


@pytest.fixture
def journal(container: Container) -> Journal:
    return Journal(container)


def start(box: Container) -> None:
    """Start the daemon with the base configuration unless it runs; `systemctl start` returns once
    the unit is active (READY=1) or fails."""
    if show(box, "ActiveState")["ActiveState"] != "active":
        configure(box, [(RUNS, KNOWN_APP)])
        box.run("systemctl", "start", UNIT, timeout=120)


def reload(box: Container, journal: Journal, watch: list[tuple[str, str]], level: str | None = None) -> dict:
    """Rewrite the configuration, `systemctl reload`, and return the daemon's config_reloaded event."""
    cursor = journal.cursor()
    configure(box, watch, level)
    box.run("systemctl", "reload", UNIT)
    return journal.wait_event("config_reloaded", after=cursor)


def stop_while_uploading(box: Container, journal: Journal, name: str) -> tuple[str, str]:
    """Drop a folder whose upload takes 8 s (well under drain_timeout_seconds) and `systemctl stop` the unit
    while it uploads; the stop must succeed. Returns the folder and the journal cursor from before it."""
    cloud(box, "faults", {"latency_seconds": 8, "endpoints": ["put"]})
    cursor = journal.cursor()
    folder = drop(box, RUNS, name)
    journal.wait_event("uploading", after=cursor, folder=folder)
    box.run("systemctl", "stop", UNIT, timeout=120)
    assert show(box, "ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}
    return folder, cursor


def test_installing_sets_it_up_without_starting_it(container: Container) -> None:
    box = container
    assert box.run("systemctl", "is-active", UNIT, check=False).out.strip() == "inactive"
    assert box.run("systemctl", "is-enabled", UNIT, check=False).out.strip() == "disabled"
    user = box.run("getent", "passwd", "nextmv-watcher").out.strip().split(":")
    assert int(user[2]) < 1000 and user[5:] == ["/nonexistent", "/usr/sbin/nologin"], user
    unit = show(box, "FragmentPath", "Documentation", "ExecStart")
    assert unit["FragmentPath"] == "/lib/systemd/system/nextmv-watcher.service"
    assert unit["Documentation"].strip('"') == "file:/usr/share/doc/nextmv-watcher/README.md"
    assert "path=/opt/nextmv-watcher/bin/nextmv-watcher" in unit["ExecStart"]
    conffiles = box.run("dpkg-query", "--show", "--showformat=${Conffiles}", "nextmv-watcher").out
    assert "/etc/nextmv-watcher/config.yaml" in conffiles
    assert watcher.__version__ in box.run("nextmv-watcher", "--version").out
    # the venv runs on Debian's interpreter, and the docs are where the unit's Documentation= points
    assert box.run("readlink", "-f", "/opt/nextmv-watcher/bin/python").out.strip().startswith("/usr/bin/python3")
    box.run("test", "-f", "/usr/share/doc/nextmv-watcher/README.md", "-a", "-f",
            "/usr/share/doc/nextmv-watcher/changelog.gz")


def test_the_unit_is_active_only_after_ready(container: Container, journal: Journal) -> None:
    box = container
    assert show(box, "Type")["Type"] == "notify"
    # Without a notification socket (an empty $NOTIFY_SOCKET: NotifyAccess=none would be taken as
    # main), READY=1 is never sent. The daemon comes fully up (its start-up scan done, answering
    # `status`) and the unit stays activating: systemd waits for READY=1, not for the fork.
    box.write(f"{DROP_INS}/zz-no-notify.conf", "[Service]\nEnvironment=NOTIFY_SOCKET=\n")
    daemon_reload(box)
    try:
        cursor = journal.cursor()
        configure(box, [(RUNS, KNOWN_APP)])
        box.run("systemctl", "start", "--no-block", UNIT)
        # where READY=1 is sent with the default two processes: both have done their start-up scan
        journal.wait_event("processes_ready", after=cursor)
        pid = show(box, "MainPID")["MainPID"]
        assert "NOTIFY_SOCKET=\0" in box.run("cat", f"/proc/{pid}/environ").out
        assert f"daemon: running (pid {pid})" in box.run("nextmv-watcher", "status").out
        state = show(box, "ActiveState", "SubState")
        assert state == {"ActiveState": "activating", "SubState": "start"}, state
    finally:   # left in place, the drop-in would fail every later start
        box.run("systemctl", "stop", UNIT, timeout=120)
        box.run("rm", "-f", f"{DROP_INS}/zz-no-notify.conf")
        daemon_reload(box)

    cursor = journal.cursor()
    box.run("systemctl", "start", UNIT, timeout=120)   # returns once active
    state = show(box, "ActiveState", "StatusText")
    assert state["ActiveState"] == "active"
    assert journal.events("startup_scan_done", after=cursor), "active before the daemon's start-up scan"
    # The default two processes: "2 processes: queue 0, ... | queue 0, ...".
    assert state["StatusText"].startswith("2 processes: queue "), f"no STATUS= from the daemon: {state}"


def test_dropped_folders_are_tracked_exactly_once(container: Container, journal: Journal) -> None:
    box = container
    start(box)
    folders = [drop(box, RUNS, f"dropped-{i}") for i in range(3)]
    for folder in folders:
        wait_tracked(box, folder)
    names = Counter(run_names(box))
    assert {name: names[name] for name in ("dropped-0", "dropped-1", "dropped-2")} == dict.fromkeys(
        ("dropped-0", "dropped-1", "dropped-2"), 1), names
    for folder in folders:
        assert len(journal.events("run_tracked", folder=folder)) == 1, folder


def test_status_from_an_admin_shell_finds_the_daemon(container: Container) -> None:
    box = container
    start(box)
    main_pid = int(show(box, "MainPID")["MainPID"])
    # no --config: /etc/nextmv-watcher/config.yaml, whose state_dir and control_socket default to the
    # unit's StateDirectory= and RuntimeDirectory=
    text = box.run("nextmv-watcher", "status").out
    assert f"running (pid {main_pid})" in text, text
    answer = json.loads(box.run("nextmv-watcher", "status", "--json").out)
    assert (answer["pid"], answer["state"]) == (main_pid, "running"), answer


def test_reload_applies_a_new_watched_path_and_the_log_level(container: Container, journal: Journal) -> None:
    box = container
    start(box)
    main_pid = show(box, "MainPID")["MainPID"]
    assert not journal.events("posting_run"), "debug events logged at level info"
    # created while the daemon runs, under a directory its unit lists in ReadWritePaths=
    box.sh(f"install -d -o nextmv-watcher -g nextmv-watcher {MORE}")
    cursor = journal.cursor()
    reloaded = reload(box, journal, [(RUNS, KNOWN_APP), (MORE, KNOWN_APP)], level="debug")
    assert reloaded["added"] == [MORE] and "logging.level" in reloaded["changed"], reloaded
    assert show(box, "MainPID", "ActiveState") == {"MainPID": main_pid, "ActiveState": "active"}
    folder = drop(box, MORE, "after-reload")
    wait_tracked(box, folder)   # its marker is in the folder: the new path is writable in the sandbox
    posting = [e for e in journal.entries(after=cursor) if e["event"] and e["event"]["event"] == "posting_run"]
    assert posting and all(e["PRIORITY"] == "7" for e in posting), "no debug event after the reload"


def test_the_sandbox_is_in_force(container: Container) -> None:
    box = container
    start(box)
    pid = show(box, "MainPID")["MainPID"]
    status = dict(line.split(":", 1) for line in box.run("cat", f"/proc/{pid}/status").out.splitlines())
    assert (status["Seccomp"].strip(), status["NoNewPrivs"].strip(), status["CapEff"].strip()) == (
        "2", "1", "0000000000000000"), "no syscall filter, NoNewPrivileges= or empty capability set"

    def writable(path: str) -> bool:   # in the daemon's mount namespace (access(2) says EROFS even to root)
        return box.run("nsenter", f"--target={pid}", "--mount", "test", "-w", path, check=False).code == 0

    assert [writable(p) for p in ("/etc/nextmv-watcher", "/usr", "/opt/nextmv-watcher", "/srv")] == [False] * 4
    assert [writable(p) for p in (RUNS, MORE, "/var/lib/nextmv-watcher", "/run/nextmv-watcher")] == [True] * 4


def test_the_happy_path_leaves_no_error_in_the_journal(container: Container, journal: Journal) -> None:
    box = container
    start(box)
    errors = [e["MESSAGE"] for e in journal.entries(priority="err")]
    assert errors == [], "journalctl -u nextmv-watcher -p err:\n" + "\n".join(errors)
    denied = [e["MESSAGE"] for e in journal.entries() if any(d in e["MESSAGE"] for d in DENIALS)]
    assert denied == [], "the sandbox denied something:\n" + "\n".join(denied)


def test_an_unknown_application_is_the_one_error(container: Container, journal: Journal) -> None:
    box = container
    start(box)
    box.sh(f"install -d -o nextmv-watcher -g nextmv-watcher {MORE} {UNKNOWN}")
    cursor = journal.cursor()
    reload(box, journal, [(RUNS, KNOWN_APP), (MORE, KNOWN_APP), (UNKNOWN, "no-such-app")])
    folder = drop(box, UNKNOWN, "for-no-such-app")
    journal.wait_event("application_paused", after=cursor, application_id="no-such-app")
    errors = journal.entries(priority="err")
    assert [e["event"] and e["event"]["event"] for e in errors] == ["application_paused"], \
        "journalctl -u nextmv-watcher -p err:\n" + "\n".join(e["MESSAGE"] for e in errors)
    assert not tracked(box, folder)
    assert "for-no-such-app" not in run_names(box)
    # back to the known application: its pause goes with it
    reload(box, journal, [(RUNS, KNOWN_APP), (MORE, KNOWN_APP)])


def test_the_watchdog_restarts_a_frozen_daemon(container: Container, journal: Journal) -> None:
    box = container
    box.write(f"{DROP_INS}/zz-watchdog.conf", "[Service]\nWatchdogSec=10s\nTimeoutAbortSec=10s\n")
    daemon_reload(box)
    configure(box, [(RUNS, KNOWN_APP)])
    box.run("systemctl", "restart", UNIT, timeout=120)
    before = show(box, "MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] == "10s", before
    cursor = journal.cursor()
    box.run("kill", "-STOP", before["MainPID"])

    def restarted() -> bool:
        now = show(box, "NRestarts", "ActiveState")
        return int(now["NRestarts"]) > int(before["NRestarts"]) and now["ActiveState"] == "active"

    # 10 s without WATCHDOG=1, SIGABRT, 10 s more (TimeoutAbortSec=), SIGKILL, RestartSec=5
    wait_for(restarted, 120, "the watchdog to restart the frozen daemon", interval=1.0)
    assert journal.messages("Watchdog timeout", after=cursor), "restarted, but not by the watchdog"
    # killed (SIGABRT, or SIGKILL after TimeoutAbortSec=), never "dumped": LimitCORE=0
    ended = journal.messages(EXIT_LINE, after=cursor)
    assert ended and ended[0].startswith(f"{EXIT_LINE} killed "), ended
    assert show(box, "MainPID")["MainPID"] != before["MainPID"]
    folder = drop(box, RUNS, "after-watchdog")
    wait_tracked(box, folder)
    assert run_names(box).count("after-watchdog") == 1


def test_stop_drains_a_folder_in_flight(container: Container, journal: Journal) -> None:
    box = container
    start(box)
    folder, cursor = stop_while_uploading(box, journal, "in-flight-at-stop")
    ended = wait_for(lambda: journal.messages(EXIT_LINE, after=cursor), 10, "ExecStopPost= to say how it ended")
    assert ended == [f"{EXIT_LINE} exited 0"], ended
    stopping = journal.events("daemon_stopping", after=cursor)
    # The default two processes each drain their share: the folder was in flight in one of them.
    assert stopping and sum(e["in_flight"] for e in stopping) == 1, stopping
    assert journal.events("daemon_stopped", after=cursor)

    cloud(box, "faults", {"latency_seconds": 0, "endpoints": None})
    cursor = journal.cursor()
    box.run("systemctl", "start", UNIT, timeout=120)
    journal.wait_event("startup_scan_done", after=cursor)
    wait_tracked(box, folder)
    assert run_names(box).count("in-flight-at-stop") == 1


def test_two_processes_are_one_unit_that_starts_reloads_and_drains_on_stop(container: Container,
                                                                          journal: Journal) -> None:
    """`processes: 2` under systemd: READY only once both are ready, the main PID is process 0, a reload reaches both,
    and `systemctl stop` drains both (each gets one SIGTERM: KillMode=mixed), the folder in flight tracked."""
    box = container
    configure(box, [(RUNS, KNOWN_APP)], processes=2, workers=4)
    cursor = journal.cursor()
    box.run("systemctl", "restart", UNIT, timeout=120)
    assert show(box, "ActiveState")["ActiveState"] == "active"
    assert len(journal.events("processes_ready", after=cursor)) == 1
    started = {e["shard"]: str(e["pid"]) for e in journal.events("process_started", after=cursor)}
    assert len(started) == 2 and started["0/2"] == str(show(box, "MainPID")["MainPID"]) != started["1/2"], \
        "process 0 is the main process's own share"
    folders = [drop(box, RUNS, f"two-processes-{n}") for n in range(6)]
    for folder in folders:
        wait_tracked(box, folder)

    reloaded = journal.cursor()
    box.run("systemctl", "reload", UNIT, timeout=120)
    wait_for(lambda: len(journal.events("config_reloaded", after=reloaded)) == 2, 30, "both processes reloaded")

    folder, stop = stop_while_uploading(box, journal, "two-processes-in-flight-at-stop")
    assert sorted(e["shard"] for e in journal.events("daemon_stopped", after=stop)) == ["0/2", "1/2"]
    assert tracked(box, folder), "drained, not aborted: the folder in flight was tracked before the stop ended"

    cloud(box, "faults", {"latency_seconds": 0, "endpoints": None})
    configure(box, [(RUNS, KNOWN_APP)])
    box.run("systemctl", "start", UNIT, timeout=120)
    assert run_names(box).count("two-processes-in-flight-at-stop") == 1


def test_every_folder_was_tracked_once_and_the_sandbox_denied_nothing(container: Container,
                                                                     journal: Journal) -> None:
    names = Counter(run_names(container))
    assert names and set(names.values()) == {1}, names
    # no folder was found read-only: their markers went into them, none to the state directory
    fallback = container.run("find", "/var/lib/nextmv-watcher", "-path", "*/folders/*").out
    assert fallback == "", fallback
    denied = [e["MESSAGE"] for e in journal.entries() if any(d in e["MESSAGE"] for d in DENIALS)]
    assert denied == [], "the sandbox denied something:\n" + "\n".join(denied)


# The package's maintainer scripts, last: they end with the package purged.

def test_upgrading_restarts_a_running_daemon(container: Container, journal: Journal) -> None:
    box = container
    start(box)
    before = show(box, "MainPID")["MainPID"]
    cursor = journal.cursor()
    # a reinstall runs the upgrade path (postinst configure <the installed version>); the edited
    # config.yaml is kept
    box.run("apt-get", "install", "--yes", "--quiet", "--reinstall", *APT_OPTIONS, deb_inside(box), timeout=180)
    after = show(box, "MainPID", "ActiveState")
    assert after["ActiveState"] == "active" and after["MainPID"] != before, after
    assert journal.messages(f"{EXIT_LINE} exited 0", after=cursor), "not stopped cleanly for the upgrade"
    assert "127.0.0.1" in box.run("cat", "/etc/nextmv-watcher/config.yaml").out


def test_removing_stops_it_and_purging_removes_config_and_state(container: Container, journal: Journal) -> None:
    box = container
    start(box)
    cursor = journal.cursor()
    box.run("apt-get", "remove", "--yes", "--quiet", "nextmv-watcher", timeout=180)
    assert box.run("systemctl", "is-active", UNIT, check=False).out.strip() == "inactive"
    assert journal.messages(f"{EXIT_LINE} exited 0", after=cursor), "not stopped cleanly on removal"
    assert box.run("test", "-e", "/opt/nextmv-watcher", check=False).code != 0, "the venv is left behind"
    box.run("test", "-f", "/etc/nextmv-watcher/config.yaml")   # kept until a purge
    box.run("test", "-d", "/var/lib/nextmv-watcher")
    box.run("apt-get", "purge", "--yes", "--quiet", "nextmv-watcher", timeout=180)
    left = box.run("ls", "-d", "/etc/nextmv-watcher", "/var/lib/nextmv-watcher", check=False)
    assert left.out == "", f"left after a purge: {left.out}"
