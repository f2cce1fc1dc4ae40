"""What happens to a run folder once it is tracked, and the retention of tracked folders.

`after_tracked` applies `after_tracking`: keep it, move it into `done_path`, or delete it. The
caller calls it only once the tracked marker is durable, so a crash at any point leaves either
the tracked folder where it was or the tracked folder in `done_path`, never an untracked copy.

The folder acted on is the directory that was tracked (its device and inode, from the open folder),
never whatever a name points to now: a producer may swap the name for a symlink or another folder
at any time. Names are only ever renamed (a rename moves a symlink itself, never what it points to)
and the result is checked against the tracked directory before anything is removed or copied; a
copy across filesystems reads from the tracked folder's own descriptor and never follows a symlink.

Nothing is ever removed in place: a folder to remove is first renamed to a dot-name beside it
(`.nextmv-removing-<random>`), which scans and the observer ignore, and only then deleted
(symlink-safe). So a removal cut short (a crash, an I/O error) leaves a dot-folder, never a folder
that has lost its tracked marker and would be tracked again; the next retention sweep deletes such
leftovers.

`sweep_retention` removes tracked folders older than `retention_days`, judged by the marker's
`tracked_at`; a folder without a tracked marker of ours is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import structlog

from watcher.config import DAEMON_PREFIX, Config
from watcher.errors import FolderError, NewerState, StateError, WatcherError
from watcher.runfolder.dirhandle import O_CREATE, O_DIR, O_READ, DirHandle, kind, remove_tree
from watcher.runfolder.markers import TRACKED, StateStore, opened, parse_iso
from watcher.runfolder.rundir import RunDir
from watcher.runfolder.scan import iter_folders
from watcher.runfolder.schema import refuse_newer

log = structlog.get_logger("watcher.daemon.aftercare")

DAY_SECONDS = 86400.0
MAX_NAME_SUFFIX = 10000
MAX_COPY_DEPTH = 256
# A copy is the daemon's own file: it keeps the permissions, never set-user-ID, set-group-ID or sticky bits
# (a producer's set-uid file would otherwise become a set-uid program of the daemon's user).
PERMISSION_BITS = 0o777
REMOVING = f"{DAEMON_PREFIX}removing-"   # a folder being removed is first renamed to this prefix plus a random id

Identity = tuple[int, int]


def after_tracked_logged(folder: Path, config: Config, d: DirHandle | None = None) -> bool:
    """`after_tracked`, its outcome logged (`folder_moved`, `folder_deleted`; a failure as
    `after_tracking_failed`, the folder staying tracked where it is). True when the folder is gone."""
    if config.after_tracking == "keep":
        return False
    try:
        action = after_tracked(folder, config, d)
    except NewerState as exc:   # tracked by a newer version: not ours to move or delete
        log.warning("state_newer", folder=str(folder), file=exc.name, schema=exc.schema,
                    hint="tracked by a newer nextmv-watcher: after_tracking leaves it where it is")
        return False
    except WatcherError as exc:
        log.error("after_tracking_failed", folder=str(folder), error=str(exc))
        return False
    log.info("folder_" + action, folder=str(folder))
    return True


def after_tracked(folder: Path, config: Config, d: DirHandle | None = None) -> str:
    """Apply `config.after_tracking` to the tracked `folder`: returns "kept", "moved" or "deleted".

    `d` is the tracked folder, open (default: opened now by its path). A move keeps the folder's name
    in `config.done_path` (`name-1`, `name-2`, ... when taken). Across filesystems it copies from `d`
    (with metadata, symlinks as symlinks), fsyncs every file and directory of the copy, then removes
    the source. Raises StateError when the folder cannot be moved or deleted, or when the name no
    longer leads to the tracked folder; a failed copy is removed, so the folder is then still whole
    where it was."""
    action = config.after_tracking
    if action == "keep":
        return "kept"
    if action not in ("move", "delete"):
        raise StateError(f"unknown after_tracking {action!r}")
    if action == "move" and config.done_path is None:
        raise StateError("after_tracking is move but done_path is not set")
    with _open_tracked(folder, d, config) as src, _open_own(folder.parent) as parent:
        expect = (src.dev, src.ino)
        if action == "delete":
            _delete_hidden(parent, _hide(parent, folder, expect), folder)
            return "deleted"
        assert config.done_path is not None
        target = _move(parent, src, folder, expect, config.done_path)
    log.debug("folder_moved", folder=str(folder), to=str(target))
    return "moved"


def sweep_retention(config: Config, now: float, roots: list[Path] | None = None) -> int:
    """Remove tracked folders whose marker's `tracked_at` is more than `config.retention_days` before `now`.

    `roots` defaults to the watched paths, plus `done_path` when tracked folders are moved there. Only
    direct child folders carrying a tracked marker of ours are candidates; dot-folders and symlinks are
    never touched. A folder that cannot be removed is logged and skipped. Returns how many were removed."""
    if config.retention_days is None:
        return 0
    if roots is None:
        roots = [w.path for w in config.watch]
        if config.after_tracking == "move" and config.done_path is not None:
            roots.append(config.done_path)
    cutoff = now - config.retention_days * DAY_SECONDS
    store = StateStore.of(config)
    removed = 0
    for root in roots:
        try:
            parent = _open_own(root)
        except StateError:
            continue
        with parent:
            _finish_removals(parent)
            for folder in iter_folders(root):
                removed += _expire(store, parent, folder, cutoff)
    return removed


def _expire(store: StateStore, parent: DirHandle, folder: Path, cutoff: float) -> int:
    try:
        with RunDir.open(folder) as d:
            tracked_at = _tracked_at(store, d)
            if tracked_at is None or tracked_at >= cutoff:
                return 0
            hidden = _hide(parent, folder, (d.dev, d.ino))
    except (FolderError, StateError) as exc:
        log.warning("retention_remove_failed", folder=str(folder), error=str(exc))
        return 0
    _delete_hidden(parent, hidden, folder)
    log.info("retention_removed", folder=str(folder), tracked_at=tracked_at)
    return 1


def _tracked_at(store: StateStore, d: DirHandle) -> float | None:
    try:
        marker = store.tracked(d)
    except (StateError, FolderError, NewerState):   # a newer version's marker: left alone
        return None
    if marker is None or not isinstance(marker.get("tracked_at"), str):
        return None
    try:
        return parse_iso(marker["tracked_at"])
    except ValueError:
        return None


@contextlib.contextmanager
def _open_tracked(folder: Path, d: DirHandle | None, config: Config) -> Iterator[DirHandle]:
    """`d`, or the folder opened now; then it must carry a tracked marker of ours (the caller judged by
    path, e.g. the start-up scan, and the name may lead to another folder by now)."""
    if d is not None:
        yield d
        return
    with opened(folder) as now:
        try:
            finished = StateStore.of(config).finished(now)
        except FolderError as exc:
            raise StateError(f"{folder}: not tracked: {exc.problem}") from None
        if finished != "tracked":
            raise StateError(f"{folder}: not tracked (any more); left alone")
        store = StateStore.of(config)
        refuse_newer(lambda name: store.read(now, name), [TRACKED])   # a newer version's marker: NewerState
        yield now


def _open_own(path: Path) -> DirHandle:
    try:
        return DirHandle.open_own(path)
    except OSError as exc:
        raise StateError(f"cannot open {path}: {exc.strerror}") from None


def _is(parent: DirHandle, name: str, expect: Identity) -> bool:
    """Whether `name` in `parent` is the directory `expect` (never following a symlink)."""
    try:
        st = parent.lstat(name)
    except OSError:
        return False
    return st is not None and stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == expect


def _move(parent: DirHandle, src: DirHandle, folder: Path, expect: Identity, done_path: Path) -> Path:
    with _open_own(done_path) as done:
        target = _claim_name(done, folder.name)
        try:
            # Renaming onto the empty directory we just made replaces it atomically.
            parent.rename(folder.name, target, to=done)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                _discard(done, target)
                raise StateError(f"{folder}: cannot move to {done_path}: {exc.strerror}") from None
        else:
            if not _is(done, target, expect):
                # The name led elsewhere (a symlink, another folder): put that back and touch nothing.
                with contextlib.suppress(OSError):
                    if parent.lstat(folder.name) is None:
                        done.rename(target, folder.name, to=parent)
                raise StateError(f"{folder}: not the tracked folder any more (it was replaced); not moved")
            _sync(parent, done)
            return done_path / target
        # Another filesystem: copy under a hidden name (a crash leaves a dot-folder, not a half copy),
        # make it durable, rename it into place, and only then remove the source.
        staging = f"{REMOVING}{uuid.uuid4().hex[:16]}"
        try:
            os.mkdir(staging, 0o700, dir_fd=done.fileno())
            _copy_durably(src.fileno(), done.fileno(), staging, 0)
            done.rename(staging, target)
        except OSError as exc:
            _discard(done, staging)
            _discard(done, target)
            raise StateError(f"{folder}: cannot copy to {done_path}: {_reason(exc)}") from None
        _sync(done)
        try:
            hidden = _hide(parent, folder, expect)
        except StateError:
            _discard(done, target)   # the folder stays whole where it was, and only there
            raise
        _delete_hidden(parent, hidden, folder)
        log.info("folder_moved_across_filesystems", folder=str(folder), to=str(done_path / target))
        return done_path / target


def _claim_name(done: DirHandle, name: str) -> str:
    """Create and return an empty directory `name` (or `name-1`, `name-2`, ...) in `done`. mkdir is
    atomic, so two processes moving folders of the same name never pick the same target."""
    for n in range(MAX_NAME_SUFFIX):
        target = name if n == 0 else f"{name}-{n}"
        try:
            os.mkdir(target, 0o750, dir_fd=done.fileno())
        except FileExistsError:
            continue
        except OSError as exc:
            raise StateError(f"cannot create {done.path / target}: {exc.strerror}") from None
        return target
    raise StateError(f"{done.path}: no free name for {name} (tried {MAX_NAME_SUFFIX})")


def _discard(d: DirHandle, name: str) -> None:
    with contextlib.suppress(OSError):
        d.unlink(name)


def _copy_durably(src_fd: int, dst_parent: int, name: str, depth: int) -> None:
    """Copy the directory `src_fd` into the new directory `name` of `dst_parent`: regular files with
    their permission bits (see PERMISSION_BITS) and times, directories, symlinks as symlinks (never
    followed), every file and directory fsynced. Anything else (a FIFO, a device) fails the copy.
    Raises OSError."""
    if depth > MAX_COPY_DEPTH:
        raise OSError(errno.ELOOP, f"deeper than {MAX_COPY_DEPTH} directories")
    dst_fd = os.open(name, O_DIR, dir_fd=dst_parent)
    try:
        with os.scandir(src_fd) as it:
            entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
        for entry, st in entries:
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(entry, O_DIR, dir_fd=src_fd)
                try:
                    _same(sub, st, entry)
                    os.mkdir(entry, 0o700, dir_fd=dst_fd)
                    _copy_durably(sub, dst_fd, entry, depth + 1)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                _copy_file(src_fd, dst_fd, entry, st)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(entry, dir_fd=src_fd), entry, dir_fd=dst_fd)
            else:
                raise OSError(errno.EINVAL, f"{entry}: a {kind(st.st_mode)} cannot be copied")
        src_st = os.fstat(src_fd)
        os.fchmod(dst_fd, stat.S_IMODE(src_st.st_mode) & PERMISSION_BITS)
        os.fsync(dst_fd)
        os.utime(dst_fd, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
    finally:
        os.close(dst_fd)


def _copy_file(src_dir: int, dst_dir: int, name: str, st: os.stat_result) -> None:
    src = os.open(name, O_READ, dir_fd=src_dir)
    try:
        _same(src, st, name)
        dst = os.open(name, O_CREATE, 0o600, dir_fd=dst_dir)
        try:
            while chunk := os.read(src, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view):]
            os.fchmod(dst, stat.S_IMODE(st.st_mode) & PERMISSION_BITS)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _reason(exc: OSError) -> str:
    """An OSError in words, without Python's "[Errno N]" prefix: "name: what" when it names a file."""
    what = exc.strerror or str(exc)
    return f"{os.fsdecode(exc.filename)}: {what}" if exc.filename is not None else what


def _same(fd: int, st: os.stat_result, name: str) -> None:
    """The opened `fd` must be the entry that was listed (else it was swapped: stop the copy)."""
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or stat.S_IFMT(now.st_mode) != stat.S_IFMT(st.st_mode):
        raise OSError(errno.ESTALE, f"{name} was replaced while copied")


def _sync(*dirs: DirHandle) -> None:
    """Make renames in `dirs` durable. The rename itself succeeded, so a failure here is only logged."""
    for d in dirs:
        try:
            d.sync()
        except OSError as exc:
            log.warning("fsync_failed", path=str(d.path), error=str(exc))


def _hide(parent: DirHandle, folder: Path, expect: Identity) -> str:
    """Rename `folder` out of sight: a dot-name in the same directory, which no scan looks at. The
    renamed entry must be the tracked directory `expect`; if the name led elsewhere, it is put back
    and StateError raised."""
    hidden = f"{REMOVING}{uuid.uuid4().hex[:16]}"
    try:
        parent.rename(folder.name, hidden)
    except OSError as exc:
        raise StateError(f"{folder}: cannot remove: {exc.strerror}") from None
    if not _is(parent, hidden, expect):
        with contextlib.suppress(OSError):
            if parent.lstat(folder.name) is None:
                parent.rename(hidden, folder.name)
        raise StateError(f"{folder}: not the tracked folder any more (it was replaced); left alone")
    _sync(parent)
    return hidden


def _delete_hidden(parent: DirHandle, hidden: str, folder: Path) -> None:
    """Delete a hidden folder (symlink-safe). A failure is only logged: what is left is a dot-folder
    that no scan looks at, and the next retention sweep finishes the removal."""
    try:
        remove_tree(parent.fileno(), hidden)
    except OSError as exc:
        log.warning("remove_incomplete", folder=str(folder), left=str(parent.path / hidden), error=str(exc))


def _finish_removals(parent: DirHandle) -> None:
    """Delete what removals cut short (a crash, an I/O error) left in `parent`."""
    try:
        leftovers = [name for name, st in parent.entries()
                     if name.startswith(REMOVING) and stat.S_ISDIR(st.st_mode)]
    except OSError:
        return
    for name in leftovers:
        _delete_hidden(parent, name, parent.path / name)
