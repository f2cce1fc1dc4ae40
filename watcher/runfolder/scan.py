"""Walk watched paths and classify run folders, uploading nothing.

`iter_folders` lists candidate run folders with one os.scandir per watched path (no stat
per entry). A watched path is used only while it is a directory: `probe` says what is there (by
lstat: a symlink put in its place is never followed), and the listing opens it with O_NOFOLLOW, so
a path that is missing, a file or a symlink has no folders. `quick_state` looks only at the
markers (lstat), so a start-up scan of 100,000 folders costs two stats per folder; it is a hint,
checked again by a worker through the open folder. `classify` is the full verdict used by
`nextmv-watcher scan`: it opens the folder once and reads everything through that descriptor, so
a hostile producer cannot make it block or read outside the folder.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from watcher.config import Config, WatchConfig
from watcher.errors import FolderError, StateError
from watcher.runfolder.completion import check_completion
from watcher.runfolder.dirhandle import O_DIR
from watcher.runfolder.folder import inspect_folder
from watcher.runfolder.markers import STATE_FILES, StateStore
from watcher.runfolder.rundir import RunDir
from watcher.runfolder.schema import first_newer

STATES = ("tracked", "failed", "pending", "incomplete", "invalid", "newer")   # newer: a newer version's state
# How a pending folder's reason starts when its last run look-up could not see the whole list.
LOOKUP_INCONCLUSIVE = "lookup_inconclusive"
# ... when its last attempt could not write the daemon's own files (disk full, a spool too small).
STATE_ERROR = "state_error"


@dataclass(frozen=True)
class FolderReport:
    folder: str
    application_id: str
    state: str           # one of STATES
    reason: str
    run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WatchedDir:
    """What is at a watched path now: the directory's (device, inode), or why there is none."""

    path: Path
    identity: tuple[int, int] | None
    problem: str = ""   # "does not exist", "is a symlink (not followed)", ... when identity is None


def probe(path: Path) -> WatchedDir:
    """One lstat of the watched path: a directory is usable; a symlink in its place is not followed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return WatchedDir(path, None, "does not exist")
    except OSError as exc:
        return WatchedDir(path, None, f"cannot be read: {exc.strerror or exc}")
    if stat.S_ISDIR(st.st_mode):
        return WatchedDir(path, (st.st_dev, st.st_ino))
    if stat.S_ISLNK(st.st_mode):
        return WatchedDir(path, None, "is a symlink (not followed)")
    return WatchedDir(path, None, "is not a directory")


def missing_paths(config: Config) -> list[WatchedDir]:
    """The watched paths that are not usable directories now (see `probe`), in configuration order."""
    return [found for w in config.watch if (found := probe(w.path)).identity is None]


def iter_entries(root: Path) -> Iterator[tuple[Path, int]]:
    """(path, inode) of each direct child directory of `root` that is a run folder: not a dot-folder,
    not a symlink. The inode comes with the directory listing, at no extra cost. Nothing when `root`
    is not a directory (missing, or a symlink: not followed)."""
    try:
        fd = os.open(root, O_DIR)   # O_NOFOLLOW: a symlink in place of a watched path is not followed
    except OSError:
        return
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        yield root / entry.name, entry.inode()
                except OSError:
                    continue
    finally:
        os.close(fd)


def iter_folders(root: Path) -> Iterator[Path]:
    """Direct child directories of `root` that are run folders (see `iter_entries`)."""
    for path, _ in iter_entries(root):
        yield path


def quick_state(store: StateStore, folder: Path) -> str | None:
    """'tracked', 'failed' or None (anything else), from the markers' existence alone."""
    return store.quick_state(folder)


def classify(folder: Path, watch: WatchConfig, config: Config, store: StateStore, now: float) -> FolderReport:
    """The folder's state and why, as the daemon would see it now."""

    def report(state: str, reason: str, run_id: str | None = None) -> FolderReport:
        return FolderReport(str(folder), watch.application_id, state, reason, run_id)

    try:
        with RunDir.open(folder) as d:
            state = store.finished(d)   # a marker name taken by something not ours: UnsafeStateFile
            newer = first_newer(partial(store.read, d), STATE_FILES)
            if newer is not None:
                return report("newer", f"{newer.problem}; left alone by this version")
            if state == "tracked":
                tracked = store.tracked(d) or {}
                return report("tracked", f"tracked at {tracked.get('tracked_at')}", str(tracked.get("run_id")))
            if state == "failed":
                failed = store.failed(d) or {}
                return report("failed", str(failed.get("error")))
            completion = check_completion(d, watch.files, config.completion, now)
            if not completion.complete:
                return report("incomplete", completion.reason)
            inspect_folder(d, watch.files, watch.format, config.completion.marker)
            journal = store.journal(d)
    except FolderError as exc:
        return report("invalid", exc.problem)
    except StateError as exc:
        return report("invalid", str(exc))
    if journal.intents and journal.lookups_inconclusive:
        return report("pending", f"{LOOKUP_INCONCLUSIVE}: {journal.last_error} ({journal.lookups_inconclusive} "
                                 "look-up(s) in a row); looked up again later, never posted again on such a "
                                 "look-up; `nextmv-watcher track FOLDER --repost` posts anyway (may duplicate)")
    if journal.intents:
        return report("pending", "a POST may have created the run; it will be looked up before posting again")
    if journal.state_error:
        return report("pending", f"{STATE_ERROR}: {journal.state_error} (retried from 5 s, doubling to 5 min)")
    if journal.attempts:
        return report("pending", f"retrying: {journal.attempts} failed attempt(s), last: {journal.last_error}")
    return report("pending", "complete; waiting to be tracked")


def table(reports: list[FolderReport]) -> list[str]:
    """`nextmv-watcher scan` as text: a line per folder (state, folder, reason or run), then the counts."""
    width = max((len(r.folder) for r in reports), default=6)
    lines = [f"{'STATE':<11} {'FOLDER':<{width}}  REASON"]
    for r in reports:
        reason = f"run {r.run_id}" if r.state == "tracked" else r.reason
        lines.append(f"{r.state:<11} {r.folder:<{width}}  {reason}")
    lines.append(counts_line({s: sum(1 for r in reports if r.state == s) for s in STATES}))
    return lines


def counts_line(counts: dict[str, int]) -> str:
    """"3 tracked, 0 failed, ...": every state, but "newer" only when there is such a folder."""
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n or s != "newer")


def scan_all(config: Config, store: StateStore, now: float) -> Iterator[FolderReport]:
    for watch in config.watch:
        for folder in sorted(iter_folders(watch.path)):
            yield classify(folder, watch, config, store, now)
