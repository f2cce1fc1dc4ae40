"""A directory that someone else may write, open: every operation relative to its descriptor.

`DirHandle` is an open directory (a run folder, or one of the daemon's own directories such as the
state directory's fallback) and what the daemon does in it without ever acting by path:

- writes: a temporary file with a random name, created `O_CREAT|O_EXCL|O_NOFOLLOW` mode 0640,
  fsynced, renamed over the target with `os.replace(..., src_dir_fd=, dst_dir_fd=)`, then the
  directory fsynced (`write_atomic`); a symlink or FIFO at the target is replaced, never followed;
  an exclusive file that must not exist yet (a claim) is a written temporary file hard-linked into
  place (`create_complete`), so that it appears whole or not at all;
- state files (`.nextmv-*`) are ours or nothing: `read_state` takes only a regular file of at most
  `limit` bytes owned by a trusted uid (opened `O_NOFOLLOW|O_NONBLOCK`, checked with `fstat`), and
  says what is wrong with anything else (`UnsafeStateFile`);
- removal: `remove_tree` deletes a tree a producer may still be changing, without recursion and
  without following anything.

Reading a run folder's files (resolving its symlinks, opening the inspected files, walking its
directories) is `watcher.runfolder.rundir.RunDir`, built on this.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from watcher.config import DAEMON_PREFIX
from watcher.errors import FolderChanged, FolderError, FolderUnreadable, InvalidFolder, UnsafeStateFile

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_MODE = 0o640
TMP_PREFIX = f"{DAEMON_PREFIX}tmp-"
# What link(2) answers on filesystems without hard links (SMB/CIFS, vfat, some FUSE).
Listing = list[tuple[str, os.stat_result]]   # a directory's entries with their lstat (`DirHandle.entries`)
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}


def kind(mode: int) -> str:
    """A file type in words, for messages."""
    kinds = ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
             (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "unknown type")


class DirHandle:
    """An open directory. `path` is for messages (and for watching) only; `label` names the run folder
    in errors. Not thread-safe by itself: one attempt uses it (claims serialise their own use)."""

    def __init__(self, path: Path, fd: int, *, label: str | None = None) -> None:
        self.path = path
        self.label = label if label is not None else str(path)
        self._fd = fd
        st = os.fstat(fd)
        self.dev, self.ino = st.st_dev, st.st_ino

    @classmethod
    def open_own(cls, path: Path, *, create: bool = False, label: str | None = None) -> DirHandle:
        """Open one of the daemon's own directories (created with its parents when `create`).
        Raises OSError."""
        if create:
            path.mkdir(parents=True, exist_ok=True, mode=0o750)
        return cls(path, os.open(path, O_DIR), label=label)

    # -- lifetime ---------------------------------------------------------------------------

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{self.label}: directory handle used after close")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> DirHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def fstat(self) -> os.stat_result:
        return os.fstat(self.fileno())

    # -- entries ----------------------------------------------------------------------------

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry `name` itself (a symlink is not followed), or None when there is none.
        Raises OSError for anything but a missing entry."""
        try:
            return os.stat(name, dir_fd=self.fileno(), follow_symlinks=False)
        except FileNotFoundError:
            return None

    def entries(self) -> Listing:
        """Every entry of the directory with its lstat, in listing order; an entry that vanished
        while listed is left out. Raises OSError when the directory cannot be listed."""
        result = []
        with os.scandir(self.fileno()) as it:
            for entry in it:
                try:
                    result.append((entry.name, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    continue
        return result

    def unlink(self, name: str) -> bool:
        """Remove the entry `name` (a directory with everything under it, see `remove_tree`). True
        when something was removed. Raises OSError."""
        try:
            remove_tree(self.fileno(), name)
        except FileNotFoundError:
            return False
        return True

    def rename(self, src: str, dst: str, *, to: DirHandle | None = None) -> None:
        """Rename `src` to `dst` (in `to`, default this directory). Raises OSError."""
        os.rename(src, dst, src_dir_fd=self.fileno(), dst_dir_fd=(to or self).fileno())

    def sync(self) -> None:
        """Make renames and unlinks in this directory durable. Raises OSError."""
        os.fsync(self.fileno())

    # -- writing ----------------------------------------------------------------------------

    def create_complete(self, name: str, data: bytes, mode: int = FILE_MODE) -> bool:
        """Create `name`, which must not exist (FileExistsError), holding `data`: a reader sees the whole
        file or none. A temporary file is written, then hard-linked into place (`link(2)` refuses an
        existing name) and removed. Where the filesystem refuses hard links (SMB, vfat: EPERM,
        EOPNOTSUPP) `name` is created `O_EXCL` and written in place, so a reader may briefly see it
        empty or partial: returns False then (True after a link). No fsync. Raises OSError (ENOSPC,
        EROFS, ...) after removing whatever it created."""
        tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
        self._create_written(tmp, data, mode)
        try:
            os.link(tmp, name, src_dir_fd=self.fileno(), dst_dir_fd=self.fileno(), follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in NO_HARD_LINKS:
                raise
        else:
            return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fileno())
        self._create_written(name, data, mode)
        return False

    def _create_written(self, name: str, data: bytes, mode: int) -> None:
        """Create `name` O_EXCL and write `data`; when the write fails, remove it again (only if the name
        still leads to the file we created) and raise."""
        fd = os.open(name, O_CREATE, mode, dir_fd=self.fileno())
        try:
            _write_all(fd, data)
        except OSError:
            mine = os.fstat(fd)
            with contextlib.suppress(OSError):
                st = self.lstat(name)
                if st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                    os.unlink(name, dir_fd=self.fileno())
            raise
        finally:
            os.close(fd)

    def write_atomic(self, name: str, data: bytes, mode: int = FILE_MODE, *, keep_owner: Collection[int] = ()) -> None:
        """Replace `name` with `data` atomically and durably: a reader sees the old file or the new
        one, even after a power cut. Whatever `name` was (a symlink, a FIFO) is replaced, never
        followed or opened. Run as root (an admin's command), a regular file owned by one of
        `keep_owner` (trusted uids) is replaced by one with its owner, group and mode (without execute or
        special bits), so that the daemon can still read what it wrote. Raises OSError (the temporary
        file is removed)."""
        old = self._kept(name, keep_owner)
        tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, O_CREATE, mode, dir_fd=self.fileno())
        try:
            try:
                if old is not None:
                    os.fchown(fd, old.st_uid, old.st_gid)
                    os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o666)
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self.fileno(), dst_dir_fd=self.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fileno())
            raise
        self.sync()

    def _kept(self, name: str, owners: Collection[int]) -> os.stat_result | None:
        """The file `name` whose owner and mode a rewrite keeps (see `write_atomic`), if any."""
        if not owners or os.geteuid() != 0:
            return None
        try:
            st = self.lstat(name)
        except OSError:
            return None
        return st if st is not None and stat.S_ISREG(st.st_mode) and st.st_uid in owners and st.st_uid != 0 \
            else None

    # -- state files ------------------------------------------------------------------------

    def read_state(self, name: str, *, limit: int, owners: Collection[int] | None) -> bytes | None:
        """The bytes of our state file `name`, or None when there is none.

        Raises `UnsafeStateFile` (an `InvalidFolder` naming the file) for anything but a regular file
        of at most `limit` bytes owned by one of `owners` (None: any owner); `OSError` otherwise."""
        fd = self._open_state(name)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            problem = state_problem(st, limit=limit, owners=owners)
            if problem is not None:
                raise UnsafeStateFile(self.label, name, problem, uid=st.st_uid)
            return read_exactly(fd, st.st_size, limit)
        finally:
            os.close(fd)

    def _open_state(self, name: str) -> int | None:
        try:
            return os.open(name, O_READ, dir_fd=self.fileno())
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeStateFile(self.label, name, "is a symlink, not a regular file") from None
            # A socket cannot be opened at all (ENXIO): say what it is rather than how open() failed.
            st = self.lstat(name)
            if st is None or stat.S_ISREG(st.st_mode):
                raise
            raise UnsafeStateFile(self.label, name, f"is a {kind(st.st_mode)}, not a regular file",
                                  uid=st.st_uid) from None


def remove_tree(dir_fd: int, name: str) -> None:
    """Remove the entry `name` of the directory `dir_fd`, and everything under it when it is a
    directory, in a tree a producer may still be changing.

    Nothing is followed or opened but directories (`O_DIRECTORY|O_NOFOLLOW`: a symlink or a FIFO
    swapped in is refused, never followed or blocked on); each subdirectory is first moved up into
    `name` itself, so any depth costs three descriptors and no recursion (`shutil.rmtree` recursed:
    a 3,000-level tree raised RecursionError, 1,000 levels exhausted the descriptors). Raises
    FileNotFoundError when `name` does not exist, OSError when something cannot be removed."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except IsADirectoryError:
        _remove_dir(dir_fd, name)


def _remove_dir(dir_fd: int, name: str) -> None:
    top = os.open(name, O_DIR, dir_fd=dir_fd)
    try:
        pending: list[str | None] = [None]   # directories to empty: `name` itself, then its children
        while pending:
            sub = pending.pop()
            try:
                fd = top if sub is None else os.open(sub, O_DIR, dir_fd=top)
            except FileNotFoundError:
                continue
            try:
                pending += _empty(fd, top)
            finally:
                if fd != top:
                    os.close(fd)
            if sub is not None:
                os.rmdir(sub, dir_fd=top)
    finally:
        os.close(top)
    os.rmdir(name, dir_fd=dir_fd)


def _empty(fd: int, top: int) -> list[str]:
    """Unlink every non-directory in `fd`; return its subdirectories, moved into `top` first (unless
    `fd` is `top`) under random dot-names, to be emptied in turn."""
    with os.scandir(fd) as it:
        names = [entry.name for entry in it]
    subdirs = []
    for name in names:
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            continue
        except IsADirectoryError:
            if fd == top:
                subdirs.append(name)
                continue
            hoisted = f"{TMP_PREFIX}rm-{secrets.token_hex(8)}"
            os.rename(name, hoisted, src_dir_fd=fd, dst_dir_fd=top)
            subdirs.append(hoisted)
    return subdirs


def state_problem(st: os.stat_result, *, limit: int, owners: Collection[int] | None) -> str | None:
    """What makes `st` unacceptable as one of our state files, or None."""
    if not stat.S_ISREG(st.st_mode):
        return f"is a {kind(st.st_mode)}, not a regular file"
    if st.st_size > limit:
        return f"is {st.st_size} bytes, more than a state file can be ({limit})"
    if owners is not None and st.st_uid not in owners:
        return (f"is owned by uid {st.st_uid}, neither the daemon's user nor root "
                "(list the owner in state_owners to trust it)")
    return None


def read_exactly(fd: int, size: int, limit: int) -> bytes:
    """Read what `fd` holds, expecting `size` bytes and never more than `limit` (+1 to see it grew)."""
    chunks = []
    left = min(size, limit) + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextmanager
def translate_oserror(root: Path, during: str) -> Iterator[None]:
    """An `OSError` while examining the run folder `root` becomes a folder error naming the file:
    vanished -> FolderChanged, EACCES -> InvalidFolder, swapped (ENOTDIR, ELOOP) -> FolderChanged,
    any other -> FolderUnreadable (retried, invalid when it repeats)."""
    folder = str(root)
    try:
        yield
    except FolderError:
        raise
    except FileNotFoundError as e:
        raise FolderChanged(folder, f"{_relative(root, e.filename)} vanished during {during}") from None
    except PermissionError as e:
        raise InvalidFolder(folder, f"{_relative(root, e.filename)}: permission denied") from None
    except NotADirectoryError as e:
        raise FolderChanged(folder, f"{_relative(root, e.filename)} changed during {during}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:   # a directory we walk was swapped for a symlink
            raise FolderChanged(folder, f"{_relative(root, e.filename)} changed during {during}") from None
        raise FolderUnreadable(folder, f"{_relative(root, e.filename)}: {e.strerror or e}") from None


def _relative(root: Path, filename: object) -> str:
    """`filename` (from an OSError) relative to the run folder, for messages."""
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return "a file"
    name = Path(os.fsdecode(filename))
    try:
        rel = name.relative_to(root)
    except ValueError:
        return name.name or str(name)
    return "run folder" if rel == Path() else rel.as_posix()
