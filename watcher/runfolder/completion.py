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

from dataclasses import dataclass
from pathlib import Path

from watcher.config import DAEMON_PREFIX, CompletionConfig, FilesConfig
from watcher.errors import FolderChanged, InvalidFolder
from watcher.runfolder.folder import find_candidates, reserved_names
from watcher.runfolder.rundir import RunDir


@dataclass(frozen=True)
class Completion:
    """`recheck_at` (settle mode): the wall-clock time the folder settles if nothing changes."""

    complete: bool
    reason: str
    recheck_at: float | None = None


def check_completion(folder: RunDir | Path, files: FilesConfig, completion: CompletionConfig,
                     now: float) -> Completion:
    """Decide whether the run folder is complete at time `now` (seconds since the epoch).

    In: the open folder (or its path, opened here), the watched path's file names, the completion
    settings, the current time. Out: a `Completion`; reasons: "marker DONE present", "waiting for
    marker DONE", "no input yet", "no output or status yet", "settling (changed 1.2 s ago)",
    "settled".
    Raises: `FolderChanged` when the folder vanished; `InvalidFolder` when it cannot be read.
    """
    if isinstance(folder, Path):
        with RunDir.open(folder) as d:
            return check_completion(d, files, completion, now)
    try:
        if completion.marker is not None:
            return _marker_mode(folder, completion.marker)
        return _settle_mode(folder, files, completion.settle_seconds, now)
    except (FileNotFoundError, NotADirectoryError):
        raise FolderChanged(folder.label, "run folder vanished") from None
    except PermissionError:
        raise InvalidFolder(folder.label, "run folder: permission denied") from None


def _marker_mode(d: RunDir, marker: str) -> Completion:
    if d.lstat(marker) is not None:
        return Completion(True, f"marker {marker} present")
    return Completion(False, f"waiting for marker {marker}")


def _settle_mode(d: RunDir, files: FilesConfig, settle_seconds: float, now: float) -> Completion:
    exclude = reserved_names(files)
    if not find_candidates(d, files.input, marker=None, exclude=exclude):
        return Completion(False, "no input yet")
    has_result = d.lstat(files.status) is not None or find_candidates(
        d, files.output, marker=None, exclude=exclude)
    if not has_result:
        return Completion(False, "no output or status yet")
    newest = newest_mtime(d, now, files)
    ready = newest + settle_seconds
    if now >= ready:
        return Completion(True, "settled")
    return Completion(False, f"settling (changed {max(now - newest, 0.0):.1f} s ago)", ready)


def newest_mtime(d: RunDir, now: float, files: FilesConfig | None = None) -> float:
    """The newest st_mtime (lstat) of every entry under the folder, not counting the folder itself.

    Root-level `.nextmv-*` entries are skipped and symlinks are never followed (the walk goes through
    the folder's descriptor, see `RunDir.newest_mtime`). An entry that vanishes during the walk counts
    as changed at `now`; a subdirectory we may not list counts by its own mtime only; at most
    `files.max_archive_files` entries are looked at. Out: float seconds, or `-inf` for an empty folder.
    Raises: `OSError` when the folder itself cannot be listed.
    """
    cap = files.max_archive_files if files is not None else FilesConfig.max_archive_files
    return d.newest_mtime(DAEMON_PREFIX, now, 2 * cap)
