"""Issue 8, "Tests that attack": a hostile producer against the real daemon, on a shared server.

Each test performs one attack of the issue the way a producer would (its own watched path, its own
uid, acting only inside its own run folders) against the daemon running as its own user with the
unit's umask (see hostile.py), and asserts what must hold once the daemon is safe: nothing outside
the producer's run folder is created or changed (team B's tree is compared byte for byte, mtime
and mode), the API key never reaches the emulator, and the daemon goes on tracking other folders
and answering on its control socket. Holds on the emulator's endpoints let a test act at a known
point of the daemon's attempt, so nothing here depends on winning a race.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from evidence import (
    SECRET,
    CreatedNames,
    attempt_ended,
    blocked_on_fifo,
    fd_targets,
    finished,
    no_leak,
    peak_rss_bytes,
    snapshot,
)
from helpers import FAILED, TRACKED, marker, wait_for
from hostile import A_INPUT, A_OUTPUT, B_INPUT, B_OUTPUT, Server
from watchdog.observers import Observer

pytestmark = pytest.mark.e2e

JOURNAL = ".nextmv-journal.json"
CLAIM = ".nextmv-claim"
STATE_FILES = (TRACKED, FAILED, JOURNAL, CLAIM)
MAX_JSON_BYTES = 16 * 2**20     # the default of files.max_json_bytes, the cap the daemon must name


# -- finding 1 -------------------------------------------------------------------------------------


def test_planted_temp_file_symlinks_write_nothing_outside_the_folder(server: Server) -> None:
    """Finding 1. Team A's producer watches its first folders with inotify and learns the names of the
    temporary files the daemon writes its journal and markers through; in its next folder it plants
    symlinks with exactly those names, pointing at team B's output.json and at where team B's tracked
    marker would go. Must hold: team B's files are untouched and b1 gets no tracked marker before it
    is really tracked, from its own content.

    One worker, so the names learned are the ones the next folder gets (with N workers a producer
    learns N sets of names the same way)."""
    victim = server.victim()
    daemon = server.start_daemon(server.write_config("one-worker.yaml", workers=1))
    seen = CreatedNames()
    observer = Observer()
    observer.schedule(seen, str(server.a.path), recursive=True)
    observer.start()
    try:
        learn = [server.put_folder(server.a, f"learn-{i}", {"input.json": A_INPUT, "output.json": A_OUTPUT})
                 for i in range(2)]
        wait_for(lambda: all(server.run_named(server.a, f.name) for f in learn), 30, "the first folders tracked")
        wait_for(lambda: all(os.path.lexists(f / TRACKED) for f in learn), 10, "their markers")
        produced = {"input.json", "output.json", "DONE"}
        names = set().union(*(seen.names_in(f) for f in learn)) - produced - set(STATE_FILES)
    finally:
        observer.stop()
        observer.join()
    before = snapshot(server.b.path)

    def plant(work: Path) -> None:
        for name in names:
            aim = victim / TRACKED if "tracked" in name else victim / "output.json"
            server.symlink(server.a, work / name, aim)

    attack = server.put_folder(server.a, "attack", {"input.json": A_INPUT, "output.json": A_OUTPUT}, prepare=plant)
    wait_for(lambda: server.run_named(server.a, "attack") and finished(attack), 30, "the attack folder tracked")
    server.check_victim(victim, before)
    no_leak(server.cloud)
    server.assert_still_serving(daemon, "temp-symlinks")


# -- finding 2 -------------------------------------------------------------------------------------


def test_logs_swapped_for_a_symlink_to_the_key_mid_attempt(server: Server) -> None:
    """Finding 2. After the daemon inspected team A's folder and while it asks for upload URLs (held),
    the producer swaps logs.txt for a symlink to the API key file (logs of the key's length, so the
    sizes agree); once the daemon has opened it (its upload is held) or given up on the attempt, the
    original goes back in one rename, so a re-check by path sees the inspected file again. Must hold:
    the key never reaches the emulator; the folder is tracked with its original logs."""
    victim = server.victim()
    before = snapshot(server.b.path)
    daemon = server.start_daemon()
    logs = (b"solver log: infeasible at node 1" + b"." * len(SECRET))[: len(SECRET)]
    assert len(A_INPUT) != len(SECRET)   # so that the hold below catches the upload of logs.txt only
    urls = server.cloud.hold("uploadurl")
    logs_put = server.cloud.hold("put", content_length=len(SECRET))
    r1 = server.put_folder(server.a, "r1", {"input.json": A_INPUT, "logs.txt": logs,
                                            "status.json": '{"error": "infeasible"}'})
    urls.wait_held(30)   # mid-attempt: inspected and prepared, nothing uploaded yet
    since = len(daemon.events())
    aside = server.swap_for_symlink(server.a, r1, "logs.txt", server.key_file)
    urls.release()
    wait_for(lambda: logs_put.waiting or attempt_ended(daemon, r1, since), 30,
             "the upload of logs.txt held, or the attempt over")
    server.swap_back(r1 / "logs.txt", aside)
    logs_put.release()
    run = wait_for(lambda: server.run_named(server.a, "r1"), 30, "r1 tracked")
    no_leak(server.cloud)
    upload = run.artifact("error_upload_id")
    assert upload is not None and upload.data == logs, "r1 tracked without its original logs"
    server.check_victim(victim, before)
    server.assert_still_serving(daemon, "logs-key")


def test_input_file_swapped_for_a_symlink_to_the_key_while_spooling(server: Server) -> None:
    """Finding 2, inside input/. While the daemon spools team A's multi-file input into an archive (it
    holds input/a-big.bin, 256 MiB sparse, open), the producer swaps input/b.csv, next in the archive,
    for a symlink to the key file; once the daemon has uploaded the archive (held) or given up on the
    attempt, the original goes back. Must hold: no archive or run holds the key; the folder is tracked
    with its original input."""
    victim = server.victim()
    before = snapshot(server.b.path)
    daemon = server.start_daemon()
    original = b"id,demand\n1,10\n2,20\n"
    archive_put = server.cloud.hold("put")

    def big(work: Path) -> None:
        with open(work / "input" / "a-big.bin", "wb") as f:
            f.truncate(256 * 2**20)

    r1 = server.put_folder(server.a, "r1", {"input/b.csv": original, "status.json": '{"error": "x"}'}, prepare=big)
    big_file = os.path.realpath(r1 / "input" / "a-big.bin")
    wait_for(lambda: big_file in fd_targets(daemon.pid), 30, "the daemon reading input/a-big.bin (spooling)")
    since = len(daemon.events())
    aside = server.swap_for_symlink(server.a, r1, "input/b.csv", server.key_file)
    wait_for(lambda: archive_put.waiting or attempt_ended(daemon, r1, since), 60,
             "the archive's upload held, or the attempt over")
    server.swap_back(r1 / "input" / "b.csv", aside)
    archive_put.release()
    run = wait_for(lambda: server.run_named(server.a, "r1"), 60, "r1 tracked")
    no_leak(server.cloud)
    upload = run.artifact("input")
    assert upload is not None and upload.data is not None
    with tarfile.open(fileobj=io.BytesIO(upload.data), mode="r|gz") as tar:
        member = next(m for m in tar if m.name == "b.csv")
        content = tar.extractfile(member)
        assert content is not None and content.read() == original, "r1 tracked without its original input"
    server.check_victim(victim, before)
    server.assert_still_serving(daemon, "input-key")


def test_fifo_swapped_in_for_logs_hangs_nothing(server: Server) -> None:
    """Finding 2, a FIFO. While the daemon asks for upload URLs (held), the producer swaps logs.txt for
    a FIFO it never opens; once a daemon thread blocks on it or the attempt is over, the original goes
    back. Must hold: nothing hangs (other folders tracked, status answers) and the folder is tracked
    with its original logs."""
    victim = server.victim()
    before = snapshot(server.b.path)
    daemon = server.start_daemon()
    logs = b"solver log: stopped\n"
    urls = server.cloud.hold("uploadurl")
    r1 = server.put_folder(server.a, "r1", {"input.json": A_INPUT, "logs.txt": logs,
                                            "status.json": '{"error": "stopped"}'})
    urls.wait_held(30)
    since = len(daemon.events())
    aside = server.swap_for_fifo(server.a, r1, "logs.txt")
    urls.release()
    wait_for(lambda: blocked_on_fifo(daemon.pid) or attempt_ended(daemon, r1, since), 30,
             "a daemon thread blocked on the FIFO, or the attempt over")
    server.swap_back(r1 / "logs.txt", aside)
    run = wait_for(lambda: server.run_named(server.a, "r1"), 30,
                   "r1 tracked once its logs.txt is back (no thread stuck opening the FIFO)")
    upload = run.artifact("error_upload_id")
    assert upload is not None and upload.data == logs
    server.assert_still_serving(daemon, "fifo-logs")
    server.check_victim(victim, before)
    no_leak(server.cloud)


# -- finding 4 -------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_fifos_as_state_files_block_nothing(server: Server) -> None:
    """Finding 4. Complete folders of team A each hold a FIFO named like one of the daemon's state files
    (journal, claim, tracked and failed markers). Must hold: nothing hangs (other folders tracked,
    status answers, `scan --json` finishes and reports each folder invalid or failed naming the file,
    `retry` and `forget --yes` return); each folder ends with a regular failed marker, reason invalid,
    naming the file; a restart does not wedge either."""
    victim = server.victim()
    before = snapshot(server.b.path)
    daemon = server.start_daemon()
    folders = {name: server.put_folder(server.a, f"fifo-{name.split('.')[1].removeprefix('nextmv-')}",
                                       {"input.json": A_INPUT, "output.json": A_OUTPUT},
                                       prepare=lambda work, name=name: server.fifo(server.a, work / name))
               for name in STATE_FILES}
    server.assert_still_serving(daemon, "fifo-state")
    server.scan()   # finishes, whatever the daemon has done with the folders so far

    def failed_regular(name: str, folder: Path) -> bool:
        try:
            if not stat.S_ISREG(os.lstat(folder / FAILED).st_mode):
                return False
        except FileNotFoundError:
            return False
        content = marker(folder, FAILED) or {}
        return content.get("reason") == "invalid" and name in str(content.get("error"))

    wait_for(lambda: all(failed_regular(n, f) for n, f in folders.items()), 30,
             "a regular failed marker (reason invalid, naming the file) in every FIFO folder")
    reports = server.scan()
    for name, folder in folders.items():
        report = reports[folder.name]
        assert report["state"] in ("invalid", "failed") and name in report["reason"], report
    assert not any(server.run_named(server.a, f.name) for f in folders.values())
    for folder in folders.values():   # as an admin would; they only have to return
        server.cli("retry", str(folder))
        server.cli("forget", "--yes", str(folder))
    assert daemon.stop() == 0
    restarted = server.start_daemon()
    server.assert_still_serving(restarted, "fifo-state-restart")
    server.check_victim(victim, before)
    no_leak(server.cloud)


# -- finding 5 -------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_sparse_multi_gb_metrics_is_refused_with_bounded_memory(server: Server) -> None:
    """Finding 5. Team A's folder holds a 3 GiB sparse metrics.json (a few KB on disk). Must hold: the
    folder fails as invalid with an error naming metrics.json and the cap (files.max_json_bytes,
    16 MiB by default); the daemon's peak RSS stays under 300 MB; other folders are tracked."""
    victim = server.victim()
    before = snapshot(server.b.path)
    daemon = server.start_daemon()

    def sparse(work: Path) -> None:
        with open(work / "metrics.json", "wb") as f:
            f.truncate(3 * 2**30)

    r1 = server.put_folder(server.a, "huge-metrics", {"input.json": A_INPUT, "output.json": A_OUTPUT},
                           prepare=sparse)
    wait_for(lambda: finished(r1), 120, "the folder with a 3 GiB metrics.json finished")
    peak = peak_rss_bytes(daemon.pid)
    assert peak < 300 * 10**6, f"the daemon's peak RSS reached {peak // 2**20} MiB"
    failed = marker(r1, FAILED)
    assert failed is not None and failed.get("reason") == "invalid", failed
    error = str(failed.get("error"))
    assert "metrics.json" in error and (str(MAX_JSON_BYTES) in error or "16 MiB" in error), error
    assert server.run_named(server.a, r1.name) is None
    server.assert_still_serving(daemon, "huge-metrics")
    server.check_victim(victim, before)
    no_leak(server.cloud)


# -- findings 6 and 7 ------------------------------------------------------------------------------


def test_folder_swapped_for_a_symlink_during_the_post(server: Server) -> None:
    """Finding 6. While the daemon's POST of team A's r1 is held, the producer renames r1 to .r1-orig and
    puts a symlink r1 -> team B's folder b1 in its place. Must hold: nothing appears in team B's folder;
    the tracked marker is in the directory that was inspected (now .r1-orig), naming the run the POST
    created."""
    victim = server.victim()
    before = snapshot(server.b.path)
    daemon = server.start_daemon()
    post = server.cloud.hold("create_run")
    r1 = server.put_folder(server.a, "r1", {"input.json": A_INPUT, "output.json": A_OUTPUT})
    post.wait_held(30)
    inspected = server.a.path / ".r1-orig"
    os.rename(r1, inspected)
    server.symlink(server.a, r1, victim)
    post.release()
    run = wait_for(lambda: server.run_named(server.a, "r1"), 30, "r1's run created")
    wait_for(lambda: os.path.lexists(inspected / TRACKED) or os.path.lexists(victim / TRACKED), 30,
             "r1's tracked marker written")
    server.check_victim(victim, before)
    content = marker(inspected)
    assert content is not None and content.get("run_id") == run.run_id, content
    no_leak(server.cloud)
    server.assert_still_serving(daemon, "swapped-folder")


def test_move_across_filesystems_does_not_follow_a_swapped_folder(server: Server) -> None:
    """Finding 7. `after_tracking: move` with done_path on another filesystem (tmpfs /dev/shm; the
    watched paths are on the disk). While the POST of team A's r1 is held, the producer swaps r1 for a
    symlink to team B's folder b1. Must hold: none of team B's files are copied into done_path and b1
    is untouched in place; team A's original directory is not lost.

    One worker, so once a later folder of team A is tracked, r1's move is over."""
    if os.stat("/dev/shm").st_dev == os.stat("/tmp").st_dev:
        pytest.skip("/dev/shm is not another filesystem here")
    done = Path(tempfile.mkdtemp(prefix="nextmv-attacks-done-", dir="/dev/shm"))
    try:
        os.chown(done, server.daemon_uid, server.daemon_gid)
        os.chmod(done, 0o750)
        victim = server.victim()
        before = snapshot(server.b.path)
        config = server.write_config("move.yaml", workers=1, after_tracking="move", done_path=str(done))
        daemon = server.start_daemon(config)
        post = server.cloud.hold("create_run")
        r1 = server.put_folder(server.a, "r1", {"input.json": A_INPUT, "output.json": A_OUTPUT})
        post.wait_held(30)
        inspected = server.a.path / ".r1-orig"
        os.rename(r1, inspected)
        server.symlink(server.a, r1, victim)
        post.release()
        wait_for(lambda: server.run_named(server.a, "r1"), 30, "r1's run created")
        server.put_folder(server.a, "after-r1", {"input.json": A_INPUT, "output.json": A_OUTPUT})
        wait_for(lambda: server.run_named(server.a, "after-r1"), 30, "a later folder of team A tracked")
        copied = [str(p.relative_to(done)) for p in done.rglob("*")
                  if p.is_file() and not p.is_symlink() and p.read_bytes() in (B_INPUT, B_OUTPUT)]
        assert copied == [], "team B's files were copied into done_path"
        server.check_victim(victim, before)
        kept = [p for p in (inspected / "input.json", *done.rglob("input.json"))
                if p.is_file() and not p.is_symlink() and p.read_bytes() == A_INPUT]
        assert kept, "team A's original r1 is gone"
        no_leak(server.cloud)
        server.assert_still_serving(daemon, "move")
    finally:
        shutil.rmtree(done, ignore_errors=True)
