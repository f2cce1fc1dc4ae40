"""`processes: 2`: the real `nextmv-watcher run` supervising two daemon processes on one watched path and
one state directory, against the emulator; systemd's end of $NOTIFY_SOCKET is a socket of the test's."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from helpers import API_KEY, NotifySocket, marker, wait_for, write_folder

from watcher.config import SHARD_ENV, SHARD_SOCKET_ENV
from watcher.daemon.shard import Shard
from watcher.daemon.supervisor import LOCK_FD_ENV, SUPERVISOR_PID_ENV
from watcher.fakecloud import FakeCloud

FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1]}', "output.json": b'{"solution": 7}'}


def alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's new parent may be slow to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_two_processes_share_the_folders_and_answer_systemd_as_one(
        cloud: FakeCloud, watched: Path, tmp_path: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    early = [write_folder(watched, f"early-{n}", FILES) for n in range(16)]
    systemd = NotifySocket(tmp_path / "notify.sock")
    daemon = daemon_factory([(watched, "app-1")], processes=2, workers=4,
                            env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"}).start()
    wait_for(lambda: "READY=1" in systemd.received(), 30, "READY=1 from the supervisor")
    late = [write_folder(watched, f"late-{n}", FILES) for n in range(16)]
    folders = early + late
    wait_for(lambda: all(marker(f) is not None for f in folders), 30, "every folder tracked")
    runs = cloud.runs("app-1")
    assert sorted(r.body["name"] for r in runs) == sorted(f.name for f in folders), "each folder once"
    wait_for(lambda: daemon.names().count("run_tracked") == len(folders), 10, "every run_tracked logged")

    events = daemon.events()
    started = sorted(e["shard"] for e in events if e["event"] == "daemon_started")
    assert started == ["0/2", "1/2"]
    own = {e["shard"]: e["pid"] for e in events if e["event"] == "daemon_started"}
    assert own["0/2"] == daemon.pid != own["1/2"], "process 0 is the supervisor's own: two interpreters, not three"
    by_shard = {e["folder"]: e["shard"] for e in events if e["event"] == "run_tracked"}
    assert by_shard == {str(f): str(next(s for s in (Shard(0, 2), Shard(1, 2)) if s.owns(f))) for f in folders}
    wait_for(lambda: "WATCHDOG=1" in systemd.received(), 10, "a watchdog ping relayed")
    assert systemd.received().count("READY=1") == 1
    children = [e["pid"] for e in events if e["event"] == "process_started"]
    assert len(children) == 2 and all(alive(p) for p in children) and daemon.pid in children

    assert daemon.stop() == 0
    assert "STOPPING=1" in systemd.received()
    systemd.sock.close()
    assert not any(alive(p) for p in children), "the processes stop with the supervisor"
    assert "<unparsed>" not in daemon.names(), "two processes' lines were interleaved"


def test_a_process_that_dies_is_started_again_and_tracks_its_folders(
        cloud: FakeCloud, watched: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory([(watched, "app-1")], processes=2, workers=4).start()
    wait_for(lambda: daemon.names().count("startup_scan_done") == 2, 30, "both processes' start-up scans")
    first = next(e for e in daemon.events() if e["event"] == "process_started" and e["shard"] == "1/2")
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: daemon.names().count("process_started") == 3, 30, "the process started again")
    again = [e for e in daemon.events() if e["event"] == "process_started" and e["shard"] == "1/2"]
    assert [e["how"] for e in again] == ["Forked", "Popen"], "forked at the start, exec'd once threads run"
    exited = next(e for e in daemon.events() if e["event"] == "process_exited")
    assert (exited["shard"], exited["code"], exited["level"]) == ("1/2", -9, "error")
    folders = [write_folder(watched, f"after-{n}", FILES) for n in range(12)]
    assert any(Shard(1, 2).owns(f) for f in folders)
    wait_for(lambda: all(marker(f) is not None for f in folders), 30, "every folder tracked")
    assert len(cloud.runs("app-1")) == len(folders)
    assert daemon.stop() == 0


def test_the_first_start_forks_a_process_that_keeps_no_key_in_its_environment_and_has_its_own_signals(
        cloud: FakeCloud, watched: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """Process 1 is forked from the supervisor at the first start (no second import of the daemon). It must
    be the process an exec'd one would be: its own environment, the key out of /proc/<pid>/environ, its
    own signals (a SIGHUP written to the supervisor's wake-up pipe would reload both processes)."""
    key = "forked-key-3be1f07a"
    cloud.set_api_keys([key])   # only this key works: a tracked folder of process 1's proves it has it
    daemon = daemon_factory([(watched, "app-1")], processes=2, workers=4,
                            env={"NEXTMV_API_KEY": key, "NEXTMV_TEST_VISIBLE": "yes"}).start()
    wait_for(lambda: daemon.names().count("startup_scan_done") == 2, 30, "both processes' start-up scans")
    child = next(e for e in daemon.events() if e["event"] == "process_started" and e["shard"] == "1/2")
    assert child["how"] == "Forked" and child["pid"] != daemon.pid
    block = Path(f"/proc/{child['pid']}/environ").read_bytes()
    assert b"NEXTMV_TEST_VISIBLE=yes" in block and key.encode() not in block
    assert f"{SHARD_ENV}=1/2".encode() not in block, "the block is the supervisor's, as forked"
    folders = [write_folder(watched, f"f-{n}", FILES) for n in range(12)]
    assert any(Shard(1, 2).owns(f) for f in folders)
    wait_for(lambda: all(marker(f) is not None for f in folders), 30, "every folder tracked")
    assert len(cloud.runs("app-1")) == len(folders)

    os.kill(child["pid"], signal.SIGHUP)
    wait_for(lambda: daemon.names().count("config_reloaded") == 1, 30, "process 1 reloaded")
    assert [e["shard"] for e in daemon.events() if e["event"] == "config_reloaded"] == ["1/2"]
    assert "api_key_left_in_environment" not in daemon.names()
    assert daemon.stop() == 0
    assert not alive(child["pid"])


def test_the_processes_drain_and_exit_when_the_supervisor_is_killed(
        cloud: FakeCloud, watched: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """Outside systemd nothing else would stop them: orphans would work on, unseen by status and metrics,
    holding the state directory's lock so that no new daemon could start."""
    daemon = daemon_factory([(watched, "app-1")], processes=2, workers=4).start()
    wait_for(lambda: daemon.names().count("startup_scan_done") == 2, 30, "both processes' start-up scans")
    children = [e["pid"] for e in daemon.events() if e["event"] == "process_started"]
    os.kill(daemon.pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in children), 30, "the processes to exit")
    gone = [e for e in daemon.events() if e["event"] == "supervisor_gone"]
    assert [(e["shard"], e["level"]) for e in gone] == [("1/2", "error")], "process 0 died with the supervisor"
    assert daemon.names().count("daemon_stopped") == 1, "the other drained and stopped as on SIGTERM"
    daemon.stop()
    folder = write_folder(watched, "after", FILES)
    again = daemon_factory([(watched, "app-1")], processes=2, workers=4).start()   # the lock is free again
    wait_for(lambda: marker(folder) is not None, 30, "a folder tracked by the daemon started again")
    assert again.stop() == 0


def test_when_the_supervisors_own_share_cannot_start_every_process_stops(
        watched: Path, tmp_path: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """Process 0 runs in the supervisor's process: it is not started again beside a dead thread; its end is
    the daemon's, with its exit code, and the other process is stopped."""
    (tmp_path / "ctl.sock.0").mkdir()   # process 0's control socket: the path is taken by a directory
    daemon = daemon_factory([(watched, "app-1")], processes=2, workers=4,
                            control_socket=str(tmp_path / "ctl.sock")).start()
    wait_for(lambda: not daemon.alive(), 30, "the daemon to exit")
    assert daemon.stop() == 2
    failed = [e for e in daemon.events() if e["event"] in ("start_failed", "process_exited")]
    assert [(e["event"], e["shard"]) for e in failed] == [("start_failed", "0/2"), ("process_exited", "0/2")]
    assert "ctl.sock.0" in failed[0]["error"]
    other = [e["pid"] for e in daemon.events() if e["event"] == "process_started" and e["shard"] == "1/2"]
    assert len(other) == 1 and not alive(other[0])


def test_a_process_whose_supervisor_died_while_it_started_does_not_start(
        watched: Path, tmp_path: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """The supervisor killed between starting a process and that process's first look: its parent is
    already another (here: this test, not the supervisor pid it was given)."""
    config = daemon_factory([(watched, "app-1")], processes=2, workers=4).config
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    lock = os.open(state / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(lock, fcntl.LOCK_EX)   # as the supervisor holds it and hands it on
    env = {**os.environ, "NEXTMV_API_KEY": API_KEY, SHARD_ENV: "0/2", LOCK_FD_ENV: str(lock),
           SHARD_SOCKET_ENV: str(tmp_path / "shard-0.sock"), SUPERVISOR_PID_ENV: str(os.getpid() + 1)}
    try:
        proc = subprocess.run([sys.executable, "-m", "watcher", "run", "--config", str(config)], env=env,
                              pass_fds=(lock,), capture_output=True, text=True, timeout=60, check=False)
    finally:
        os.close(lock)
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert proc.returncode == 1
    assert [e["event"] for e in events if e["level"] == "error"] == ["supervisor_gone"]
    assert "daemon_started" not in [e["event"] for e in events]


def test_a_second_daemon_on_the_state_directory_is_refused_while_the_processes_run(
        watched: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    daemon = daemon_factory([(watched, "app-1")], processes=2, workers=4).start()
    wait_for(lambda: daemon.names().count("startup_scan_done") == 2, 30, "both processes' start-up scans")
    second = daemon_factory([(watched, "app-1")]).start()
    wait_for(lambda: not second.alive(), 20, "the second daemon to exit")
    assert second.stop() == 2
    assert "start_failed" in second.names()
    assert daemon.stop() == 0


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcher", *argv], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "NEXTMV_API_KEY": API_KEY})


def test_status_metrics_and_health_are_one_daemons(
        cloud: FakeCloud, watched: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    folders = [write_folder(watched, f"run-{n}", FILES) for n in range(10)]
    daemon = daemon_factory([(watched, "app-1")], processes=2, workers=4,
                            metrics={"listen": "127.0.0.1:0"}).start()
    wait_for(lambda: all(marker(f) is not None for f in folders), 30, "every folder tracked")
    wait_for(lambda: "metrics_listening" in daemon.names(), 10, "the supervisor's metrics listener")
    port = next(e["port"] for e in daemon.events() if e["event"] == "metrics_listening")
    assert sum(1 for e in daemon.events() if e["event"] == "metrics_listening") == 1, "only the supervisor listens"

    out = cli("status", "--json", "--config", str(daemon.config))
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["counters"]["tracked"] == len(folders), "both processes' folders, counted once"
    assert status["pid"] == daemon.pid
    assert [(p["shard"], p["answering"]) for p in status["processes"]] == [("0/2", True), ("1/2", True)]
    assert status["concurrency"]["workers"] == 4
    text = cli("status", "--config", str(daemon.config)).stdout
    assert f"daemon: running (pid {daemon.pid})" in text and "processes: 0/2 pid " in text, text

    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    tracked = [line for line in metrics.splitlines() if line.startswith("nextmv_watcher_folders_total{")
               and 'outcome="tracked"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in tracked) == len(folders)
    assert "nextmv_watcher_healthy 1.0" in metrics
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200

    victim = next(e["pid"] for e in daemon.events() if e["event"] == "process_started" and e["shard"] == "1/2")
    os.kill(victim, signal.SIGSTOP)   # not answering (its control socket times out): the daemon is not healthy
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert answer.status_code == 503
        assert "process 1/2 not answering" in answer.json()["reasons"]
    finally:
        os.kill(victim, signal.SIGCONT)
    assert daemon.stop() == 0


def test_every_thread_of_every_process_runs_as_sched_batch(
        cloud: FakeCloud, watched: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """watcher.daemon.cpupolicy: set before any thread starts, inherited by the threads and the processes."""
    daemon = daemon_factory([(watched, "app-1")], processes=2, workers=4).start()
    # each process logs daemon_started after it has started its threads, the start-up scan's among them
    wait_for(lambda: (names := daemon.names()).count("daemon_started") == 2 and names.count("startup_scan_done") == 2,
             30, "both processes started")
    pids = [e["pid"] for e in daemon.events() if e["event"] == "daemon_started"]
    policies: dict[str, int] = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                policies[f"{pid}/{tid}"] = os.sched_getscheduler(int(tid))
            except ProcessLookupError:
                continue   # a thread that ended meanwhile
    assert len(pids) == 2 and len(policies) > 10
    assert set(policies.values()) == {os.SCHED_BATCH}, policies
    assert daemon.stop() == 0
