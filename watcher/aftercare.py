"""What happens to a run folder once it is tracked, and the retention of tracked folders.

`after_tracked` applies `after_tracking`: keep it, move it into `done_path`, or delete it. The
caller calls it only once the tracked marker is durable, so a crash at any point leaves either
the tracked folder where it was or the tracked folder in `done_path`, never an untracked copy.

Nothing is ever removed in place: a folder to remove is first renamed to a dot-name beside it
(`.nextmv-removing-<random>`), which scans and the observer ignore, and only then deleted. So a
removal cut short (a crash, an I/O error) leaves a dot-folder, never a folder that has lost its
tracked marker and would be tracked again; the next retention sweep deletes such leftovers.

`sweep_retention` removes tracked folders older than `retention_days`, judged by the marker's
`tracked_at`; a folder without a tracked marker is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path

import structlog

from watcher.config import Config
from watcher.errors import StateError
from watcher.scan import iter_folders
from watcher.state import StateStore, fsync_dir, parse_iso

log = structlog.get_logger("watcher.aftercare")

DAY_SECONDS = 86400.0
MAX_NAME_SUFFIX = 10000
REMOVING = ".nextmv-removing-"   # a folder being removed is first renamed to this prefix plus a random id


def after_tracked(folder: Path, config: Config) -> str:
    """Apply `config.after_tracking` to the tracked `folder`: returns "kept", "moved" or "deleted".

    A move keeps the folder's name in `config.done_path` (`name-1`, `name-2`, ... when taken). Across
    filesystems it copies (with metadata), fsyncs every file and directory of the copy, then removes
    the source. Raises StateError when the folder cannot be moved or deleted; a failed copy is removed,
    so the folder is then still whole where it was."""
    action = config.after_tracking
    if action == "keep":
        return "kept"
    if action == "delete":
        _delete_hidden(_hide(folder), folder)
        return "deleted"
    if action == "move":
        if config.done_path is None:
            raise StateError("after_tracking is move but done_path is not set")
        target = _move(folder, config.done_path)
        log.debug("folder_moved", folder=str(folder), to=str(target))
        return "moved"
    raise StateError(f"unknown after_tracking {action!r}")


def sweep_retention(config: Config, now: float, roots: list[Path] | None = None) -> int:
    """Remove tracked folders whose marker's `tracked_at` is more than `config.retention_days` before `now`.

    `roots` defaults to the watched paths, plus `done_path` when tracked folders are moved there. Only
    direct child folders carrying a tracked marker are candidates; dot-folders and symlinks are never
    touched. A folder that cannot be removed is logged and skipped. Returns how many were removed."""
    if config.retention_days is None:
        return 0
    if roots is None:
        roots = [w.path for w in config.watch]
        if config.after_tracking == "move" and config.done_path is not None:
            roots.append(config.done_path)
    cutoff = now - config.retention_days * DAY_SECONDS
    store = StateStore(config.state_dir)
    removed = 0
    for root in roots:
        _finish_removals(root)
        for folder in iter_folders(root):
            tracked_at = _tracked_at(store, folder)
            if tracked_at is None or tracked_at >= cutoff:
                continue
            try:
                hidden = _hide(folder)
            except StateError as exc:
                log.warning("retention_remove_failed", folder=str(folder), error=str(exc))
                continue
            _delete_hidden(hidden, folder)
            removed += 1
            log.info("retention_removed", folder=str(folder), tracked_at=tracked_at)
    return removed


def _tracked_at(store: StateStore, folder: Path) -> float | None:
    try:
        marker = store.tracked(folder)
    except StateError:
        return None
    if marker is None or not isinstance(marker.get("tracked_at"), str):
        return None
    try:
        return parse_iso(marker["tracked_at"])
    except ValueError:
        return None


def _move(folder: Path, done: Path) -> Path:
    target = _claim_name(done, folder.name)
    try:
        # Renaming onto the empty directory we just made replaces it atomically.
        os.rename(folder, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            _discard(target)
            raise StateError(f"{folder}: cannot move to {done}: {exc.strerror}") from None
    else:
        _sync_dirs(folder.parent, done)
        return target
    # Another filesystem: copy under a hidden name (a crash leaves a dot-folder, not a half copy),
    # make it durable, rename it into place, and only then remove the source.
    staging = done / f"{REMOVING}{uuid.uuid4().hex[:16]}"
    try:
        _copy_durably(folder, staging)
        os.rename(staging, target)
    except OSError as exc:
        _discard(staging)
        _discard(target)
        raise StateError(f"{folder}: cannot copy to {done}: {exc}") from None
    _sync_dirs(done)
    try:
        hidden = _hide(folder)
    except StateError:
        _discard(target)   # the folder stays whole where it was, and only there
        raise
    _delete_hidden(hidden, folder)
    log.info("folder_moved_across_filesystems", folder=str(folder), to=str(target))
    return target


def _claim_name(done: Path, name: str) -> Path:
    """Create and return an empty directory `done/name` (or `name-1`, `name-2`, ...). mkdir is atomic,
    so two processes moving folders of the same name never pick the same target."""
    for n in range(MAX_NAME_SUFFIX):
        target = done / (name if n == 0 else f"{name}-{n}")
        try:
            target.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise StateError(f"cannot create {target}: {exc.strerror}") from None
        return target
    raise StateError(f"{done}: no free name for {name} (tried {MAX_NAME_SUFFIX})")


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        shutil.rmtree(path)


def _copy_durably(folder: Path, dest: Path) -> None:
    """Copy `folder` to the new directory `dest` with metadata and fsync every file and directory of it.
    Raises OSError (shutil.Error for a partial copy)."""
    # symlinks=True copies links as links: a run folder's links point inside it, so they stay valid.
    shutil.copytree(folder, dest, symlinks=True, copy_function=shutil.copy2)
    for dirpath, _dirnames, filenames in os.walk(dest):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                _fsync_file(path)
        fsync_dir(Path(dirpath))


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dirs(*dirs: Path) -> None:
    """Make renames in `dirs` durable. The rename itself succeeded, so a failure here is only logged."""
    for d in dirs:
        try:
            fsync_dir(d)
        except OSError as exc:
            log.warning("fsync_failed", path=str(d), error=str(exc))


def _hide(folder: Path) -> Path:
    """Rename `folder` out of sight: a dot-name in the same directory, which no scan looks at."""
    hidden = folder.with_name(f"{REMOVING}{uuid.uuid4().hex[:16]}")
    try:
        os.rename(folder, hidden)
    except OSError as exc:
        raise StateError(f"{folder}: cannot remove: {exc.strerror}") from None
    _sync_dirs(folder.parent)
    return hidden


def _delete_hidden(hidden: Path, folder: Path) -> None:
    """Delete a hidden folder. A failure is only logged: what is left is a dot-folder that no scan
    looks at, and the next retention sweep finishes the removal."""
    try:
        shutil.rmtree(hidden)
    except OSError as exc:
        log.warning("remove_incomplete", folder=str(folder), left=str(hidden), error=str(exc))


def _finish_removals(root: Path) -> None:
    """Delete what removals cut short (a crash, an I/O error) left in `root`."""
    try:
        with os.scandir(root) as it:
            leftovers = [Path(e.path) for e in it if e.name.startswith(REMOVING) and not e.is_symlink()]
    except OSError:
        return
    for path in leftovers:
        _delete_hidden(path, path)
