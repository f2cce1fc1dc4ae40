"""When is a run folder complete, i.e. safe to inspect and upload?

Two modes, chosen by `CompletionConfig.marker`:
- marker mode: complete iff the marker file exists in the folder root; time plays no part;
- settle mode: complete iff an input candidate and (an output candidate or the status file) exist
  and nothing in the folder changed for `settle_seconds`. "Changed" is the newest modification time
  (lstat, symlinked directories not followed) of every entry under the folder, recursively, except
  the daemon's own root-level `.nextmv-*` files and the run folder directory itself (its mtime moves
  when the daemon writes its own files).

Time is a parameter (`now`), so tests step it instead of sleeping.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from watcher.config import CompletionConfig, FilesConfig
from watcher.errors import FolderChanged, InvalidFolder
from watcher.folder import find_candidates, reserved_names

DAEMON_PREFIX = ".nextmv-"


@dataclass(frozen=True)
class Completion:
    """`recheck_at` (settle mode): the wall-clock time the folder settles if nothing changes."""

    complete: bool
    reason: str
    recheck_at: float | None = None


def check_completion(path: Path, files: FilesConfig, completion: CompletionConfig, now: float) -> Completion:
    """Decide whether the run folder `path` is complete at time `now` (seconds since the epoch).

    In: the folder, the watched path's file names, the completion settings, the current time.
    Out: a `Completion`; reasons: "marker DONE present", "waiting for marker DONE", "no input yet",
    "no output or status yet", "settling (changed 1.2 s ago)", "settled".
    Raises: `FolderChanged` when the folder vanished; `InvalidFolder` when it cannot be read.
    """
    try:
        if completion.marker is not None:
            return _marker_mode(path, completion.marker)
        return _settle_mode(path, files, completion.settle_seconds, now)
    except (FileNotFoundError, NotADirectoryError):
        raise FolderChanged(str(path), "run folder vanished") from None
    except PermissionError:
        raise InvalidFolder(str(path), "run folder: permission denied") from None


def _marker_mode(path: Path, marker: str) -> Completion:
    if os.path.lexists(path / marker):
        return Completion(True, f"marker {marker} present")
    if not stat.S_ISDIR(path.stat().st_mode):
        raise NotADirectoryError(path)
    return Completion(False, f"waiting for marker {marker}")


def _settle_mode(path: Path, files: FilesConfig, settle_seconds: float, now: float) -> Completion:
    exclude = reserved_names(files)
    if not find_candidates(path, files.input, marker=None, exclude=exclude):
        return Completion(False, "no input yet")
    has_result = os.path.lexists(path / files.status) or find_candidates(
        path, files.output, marker=None, exclude=exclude)
    if not has_result:
        return Completion(False, "no output or status yet")
    newest = newest_mtime(path, now)
    ready = newest + settle_seconds
    if now >= ready:
        return Completion(True, "settled")
    return Completion(False, f"settling (changed {max(now - newest, 0.0):.1f} s ago)", ready)


def newest_mtime(path: Path, now: float) -> float:
    """The newest st_mtime (lstat) of every entry under `path`, not counting `path` itself.

    Root-level `.nextmv-*` entries are skipped and symlinked directories are not followed. An entry
    that vanishes during the walk counts as changed at `now`; a subdirectory we may not list counts
    by its own mtime only. Out: float seconds, or `-inf` for an empty folder.
    Raises: `OSError` when `path` itself cannot be listed.
    """
    newest = float("-inf")
    stack: list[tuple[str, bool]] = [(os.fspath(path), True)]
    while stack:
        dir_path, is_root = stack.pop()
        try:
            it = os.scandir(dir_path)
        except OSError:
            if is_root:
                raise
            if not os.path.lexists(dir_path):
                newest = max(newest, now)  # vanished during the walk: a change happening now
            continue
        with it:
            for entry in it:
                if is_root and entry.name.startswith(DAEMON_PREFIX):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    newest = max(newest, now)
                    continue
                newest = max(newest, st.st_mtime)
                if stat.S_ISDIR(st.st_mode):
                    stack.append((entry.path, False))
    return newest
