"""When is a run folder complete, i.e. safe to inspect and upload?

Two modes, chosen by `CompletionConfig.marker`:
- marker mode: complete iff the marker file exists in the folder root; time plays no part;
- settle mode: complete iff an input candidate and (an output candidate or the status file) exist
  and nothing in the folder changed for `settle_seconds`. "Changed" is the newest modification time
  (lstat, symlinked directories not followed) of every entry under the folder, recursively, except
  the daemon's own root-level `.nextmv-*` files and the run folder directory itself (its mtime moves
  when the daemon writes its own files).
  A writer caught mid-file must not be taken for a finished folder, so, as far as the daemon can know:
  - while a file of the folder is open (`Activity.open_files`: opened and not closed since, as the
    filesystem events of a watched folder tell; the daemon passes them in), it is not complete; a file
    closed after writing restarts the settle time (`Activity.last_write`);
  - once settled, every root-level `.json` file that plays a role (input, output, status, metrics,
    statistics, assets) must be complete JSON, judged from at most its first and last 64 KiB
    (`watcher.runfolder.jsonends`): this covers what events cannot see (a file opened before the
    folder was watched, a polled watched path).

Time is a parameter (`now`), so tests step it instead of sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from watcher.config import DAEMON_PREFIX, CompletionConfig, FilesConfig
from watcher.errors import FolderChanged, InvalidFolder
from watcher.runfolder.folder import EXTRA_FILES, find_candidates, reserved_names
from watcher.runfolder.jsonends import json_file_complete
from watcher.runfolder.rundir import RunDir


@dataclass(frozen=True)
class Completion:
    """`recheck_at` (settle mode): the wall-clock time the folder settles if nothing changes. `poll`:
    filesystem events may not tell when this changes (a file open, or not complete JSON): look again
    later even when the folder is watched."""

    complete: bool
    reason: str
    recheck_at: float | None = None
    poll: bool = False
    dirs: tuple[str, ...] = field(default=(), compare=False)   # settle mode: its input/ and output/ directories


@dataclass(frozen=True)
class Activity:
    """What filesystem events told about a folder's files (settle mode). `open_files`: paths relative to
    the folder opened and not closed since, sorted; `last_write`: when a file was last closed after
    being opened for writing (seconds since the epoch), None when not seen."""

    open_files: tuple[str, ...] = ()
    last_write: float | None = None


def check_completion(folder: RunDir | Path, files: FilesConfig, completion: CompletionConfig,
                     now: float, activity: Activity | None = None) -> Completion:
    """Decide whether the run folder is complete at time `now` (seconds since the epoch).

    In: the open folder (or its path, opened here), the watched path's file names, the completion
    settings, the current time, what events told about its files (settle mode; None: nothing known).
    Out: a `Completion`; reasons: "marker DONE present", "waiting for marker DONE", "no input yet",
    "no output or status yet", "output.csv is open (...)", "settling (changed 1.2 s ago)",
    "output.json is not complete JSON", "output.json is being written (...)", "settled".
    Raises: `FolderChanged` when the folder vanished; `InvalidFolder` when it cannot be read (or a
    `.json` file it checks leaves the folder or may not be read).
    """
    if isinstance(folder, Path):
        with RunDir.open(folder) as d:
            return check_completion(d, files, completion, now, activity)
    try:
        if completion.marker is not None:
            return _marker_mode(folder, completion.marker)
        return _settle_mode(folder, files, completion.settle_seconds, now, activity or Activity())
    except (FileNotFoundError, NotADirectoryError):
        raise FolderChanged(folder.label, "run folder vanished") from None
    except PermissionError:
        raise InvalidFolder(folder.label, "run folder: permission denied") from None


def _marker_mode(d: RunDir, marker: str) -> Completion:
    if d.lstat(marker) is not None:
        return Completion(True, f"marker {marker} present")
    return Completion(False, f"waiting for marker {marker}")


def _settle_mode(d: RunDir, files: FilesConfig, settle_seconds: float, now: float,
                 activity: Activity) -> Completion:
    exclude = reserved_names(files)
    listing = d.entries()   # one snapshot for both roles
    inputs = find_candidates(d, listing, files.input, marker=None, exclude=exclude)
    outputs = find_candidates(d, listing, files.output, marker=None, exclude=exclude)
    dirs = tuple(n.rstrip("/") for n in (*inputs, *outputs) if n.endswith("/"))
    if not inputs:
        return Completion(False, "no input yet", dirs=dirs)
    if d.lstat(files.status) is None and not outputs:
        return Completion(False, "no output or status yet", dirs=dirs)
    if activity.open_files:
        more = len(activity.open_files) - 1
        return Completion(False, f"{activity.open_files[0]} is open (not closed since it was opened)"
                                 + (f", and {more} more" if more else ""), poll=True, dirs=dirs)
    newest = max(newest_mtime(d, now, files), activity.last_write or float("-inf"))
    ready = newest + settle_seconds
    if now < ready:
        return Completion(False, f"settling (changed {max(now - newest, 0.0):.1f} s ago)", ready, dirs=dirs)
    for name in _json_files(d, files, [*inputs, *outputs]):
        try:
            whole = json_file_complete(d, name)
        except FolderChanged as exc:
            return Completion(False, f"{name} is being written ({exc.problem})", poll=True, dirs=dirs)
        if not whole:
            return Completion(False, f"{name} is not complete JSON", poll=True, dirs=dirs)
    return Completion(True, "settled", dirs=dirs)


def _json_files(d: RunDir, files: FilesConfig, candidates: list[str]) -> list[str]:
    """The root-level `.json` files that play a role: input and output files, status, metrics,
    statistics, assets (directories' contents are archived, not parsed: not judged here)."""
    fixed = [name for name in (files.status, *(n for _, n in EXTRA_FILES)) if d.lstat(name) is not None]
    return [n for n in [*candidates, *fixed] if not n.endswith("/") and n.lower().endswith(".json")]


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
