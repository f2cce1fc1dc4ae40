"""Evidence for the attack tests: what an attack may not have done, and what the daemon is doing.

Snapshots of a team's tree (to prove nothing outside the attacker's folder changed), the secret
key searched for in everything the emulator stored, and views of the daemon process from /proc and
from inotify, so that a test knows where the daemon is in its attempt without racing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import zlib
from pathlib import Path
from typing import Any

from helpers import FAILED, TRACKED, Daemon
from watchdog.events import FileSystemEvent, FileSystemEventHandler

from watcher.fakecloud import FakeCloud
from watcher.runfolder.claims import CLAIM
from watcher.runfolder.markers import JOURNAL

SECRET = "nxmv-live-SECRET-9f4c2a7e1b8d3065a0"   # the API key, recognisable wherever it leaks to
Snapshot = dict[str, tuple[Any, ...]]
# Events that end the daemon's attempt on a folder (tracked, failed, retried later, or an error).
ENDED = frozenset({"folder_retrying", "run_tracked", "folder_failed", "folder_waiting", "state_error",
                   "folder_error"})


def snapshot(root: Path, ignore: tuple[str, ...] = ("fresh-", ".incoming-fresh-")) -> Snapshot:
    """Every entry under `root`: kind, mode, owner, mtime, size, and content or link target.

    Top-level entries whose names start with `ignore` are left out with all they hold: the fresh
    folders a test adds to prove the daemon goes on. The root itself is recorded without its mtime
    and size, which such folders change; whatever else appears in it is an entry of its own.
    """
    st = os.lstat(root)
    out: Snapshot = {".": (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid)}
    for dirpath, dirnames, filenames in os.walk(root):
        top = dirpath == os.fspath(root)
        if top:
            dirnames[:] = [d for d in dirnames if not d.startswith(ignore)]
        for name in [*dirnames, *(f for f in filenames if not (top and f.startswith(ignore)))]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:   # a regular file: opening it cannot block
                    content: str | None = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            else:
                content = None
            out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                                                st.st_mtime_ns, st.st_size, content)
    return out


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """What differs between two snapshots, one line per entry."""
    lines = [f"created {p}" for p in sorted(set(after) - set(before))]
    lines += [f"removed {p}" for p in sorted(set(before) - set(after))]
    lines += [f"changed {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return lines


def leaks(cloud: FakeCloud) -> list[str]:
    """Every upload (gzip archives decompressed) and run body holding the secret key's bytes."""
    needle = SECRET.encode()
    found = [f"upload {u.upload_id} ({u.size} bytes)" for u in cloud.uploads()
             if u.data is not None and _contains(u.data, needle)]
    found += [f"run {r.run_id} of {r.application_id}" for r in cloud.runs()
              if SECRET in json.dumps(r.body) or SECRET in json.dumps(r.query)]
    return found


def _contains(data: bytes, needle: bytes) -> bool:
    if needle in data:
        return True
    if data[:2] != b"\x1f\x8b":
        return False
    # Streamed with an overlap, so a large archive of a sparse file is not held in memory at once.
    inflate = zlib.decompressobj(wbits=31)
    pending, tail = data, b""
    try:
        while pending:
            piece = inflate.decompress(pending, 1 << 20)
            pending = inflate.unconsumed_tail
            if needle in tail + piece:
                return True
            tail = (tail + piece)[-len(needle):]
            if not piece and not pending:
                break
    except zlib.error:
        return False
    return False


def fd_targets(pid: int) -> set[str]:
    """What process `pid` holds open (the targets of /proc/<pid>/fd/*); empty once it is gone."""
    targets = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return set()
    for fd in fds:
        try:
            targets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return targets


def blocked_on_fifo(pid: int) -> bool:
    """Whether a thread of process `pid` is blocked opening a FIFO (waiting for the other end)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                if f.read().strip() in ("wait_for_partner", "fifo_open"):
                    return True
        except OSError:
            continue
    return False


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of a live process: the most memory it has held at once."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def folder_events(daemon: Daemon, folder: Path, since: int) -> list[dict[str, Any]]:
    return [e for e in daemon.events()[since:] if e.get("folder") == str(folder)]


def attempt_ended(daemon: Daemon, folder: Path, since: int) -> bool:
    """Whether the daemon finished an attempt on `folder` (tracked, failed or retrying) after event `since`."""
    return any(e.get("event") in ENDED for e in folder_events(daemon, folder, since))


def finished(folder: Path) -> bool:
    return os.path.lexists(folder / TRACKED) or os.path.lexists(folder / FAILED)


def settled(folder: Path) -> bool:
    """Finished, and the daemon is done with it: no journal left and its claim released (the claim goes
    last, after the marker and the journal, so a snapshot taken before that would see it go)."""
    return finished(folder) and not any(os.path.lexists(folder / name) for name in (JOURNAL, CLAIM))


def no_leak(cloud: FakeCloud) -> None:
    assert leaks(cloud) == [], "the API key reached the emulator"


class CreatedNames(FileSystemEventHandler):
    """Records the paths created (or moved away) under a watched path: what a producer sees with inotify."""

    def __init__(self) -> None:
        self.paths: set[str] = set()
        self._lock = threading.Lock()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("created", "moved"):
            with self._lock:
                self.paths.add(os.fsdecode(event.src_path))

    def names_in(self, folder: Path) -> set[str]:
        with self._lock:
            return {Path(p).name for p in self.paths if Path(p).parent == folder}
