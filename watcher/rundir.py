"""Directories that someone else can write: one open descriptor, every operation relative to it.

A run folder belongs to its producer, who may be hostile (see README, "Security"). So a run
folder is opened once per attempt (`RunDir.open`: the watched path by name, then the folder with
`O_DIRECTORY|O_NOFOLLOW` relative to it) and everything afterwards goes through that descriptor:

- reads: `os.open(name, O_NOFOLLOW|O_NONBLOCK, dir_fd=...)`, one component at a time; a symlink
  the contract allows (one that stays inside the run folder) is resolved here, by reading it,
  never by the kernel following a path (`resolve`, after systemd's `chase()`); every opened file
  is `fstat`ed and must be the regular file that was inspected (`Ident`), or the folder "changed";
- writes: a temporary file with a random name, created `O_CREAT|O_EXCL|O_NOFOLLOW` mode 0640,
  fsynced, renamed over the target with `os.replace(..., src_dir_fd=, dst_dir_fd=)`, then the
  directory fsynced (`DirHandle.write_atomic`);
- state files (`.nextmv-*`) are ours or nothing: `read_state` takes only a regular file of at most
  `limit` bytes owned by a trusted uid, and says what is wrong with anything else.

Nothing here follows a symlink, blocks on a FIFO or reads without a bound. `DirHandle` serves our
own directories too (the state directory's fallback), with the same discipline.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from watcher.errors import FolderChanged, FolderUnreadable, InvalidFolder, UnsafeStateFile

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_MODE = 0o640
TMP_PREFIX = ".nextmv-tmp-"
MAX_SYMLINKS = 40          # as the kernel's own limit when it resolves a path
MAX_PATH_BYTES = 4096      # a relative path inside a run folder (PATH_MAX)
MAX_RESOLVE_OPENS = 4096   # directories opened to resolve one path (a path of PATH_MAX bytes needs < 2048)


@dataclass(frozen=True)
class Ident:
    """What a file was when it was inspected; a file opened later must still be this one."""

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Ident:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def fingerprint(self) -> tuple[int, int, int]:
        """(size, mtime_ns, inode): the journal's record of an uploaded file."""
        return (self.size, self.mtime_ns, self.ino)


@dataclass(frozen=True)
class Limits:
    """Bounds on what inspecting a folder may cost: files in one archive, directory depth."""

    max_files: int = 100_000
    max_depth: int = 64


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

    def entries(self) -> list[tuple[str, os.stat_result]]:
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

    def create_exclusive(self, name: str, data: bytes, mode: int = FILE_MODE) -> None:
        """Create `name`, which must not exist (FileExistsError), and write `data`; no fsync."""
        fd = os.open(name, O_CREATE, mode, dir_fd=self.fileno())
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)

    def write_atomic(self, name: str, data: bytes, mode: int = FILE_MODE) -> None:
        """Replace `name` with `data` atomically and durably: a reader sees the old file or the new
        one, even after a power cut. Whatever `name` was (a symlink, a FIFO) is replaced, never
        followed or opened. Raises OSError (the temporary file is removed)."""
        tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, O_CREATE, mode, dir_fd=self.fileno())
        try:
            try:
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


class RunDir(DirHandle):
    """An open run folder: resolve, open and walk its files without following a path twice."""

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """Open the run folder `path` (a direct child of a watched path) as a directory, never
        through a symlink. Raises `FolderChanged` when it vanished or is not a directory (any more),
        `InvalidFolder` when we may not open it."""
        folder = str(path)
        try:
            parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise FolderChanged(folder, f"watched path cannot be opened: {exc.strerror}") from None
        try:
            fd = os.open(path.name, O_DIR, dir_fd=parent)
        except FileNotFoundError:
            raise FolderChanged(folder, "run folder vanished") from None
        except PermissionError:
            raise InvalidFolder(folder, "run folder: permission denied") from None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise FolderChanged(folder, "run folder is not a directory (any more)") from None
            raise FolderUnreadable(folder, f"run folder cannot be opened: {exc.strerror}") from None
        finally:
            os.close(parent)
        # Absolute symlinks inside the folder may name it by either path; both mean "inside".
        return cls(path, fd, roots=(folder, os.path.join(os.path.realpath(path.parent), path.name)))

    def __init__(self, path: Path, fd: int, *, roots: tuple[str, ...] = ()) -> None:
        super().__init__(path, fd)
        self._roots = roots or (str(path),)

    def __enter__(self) -> RunDir:
        return self

    # -- resolving --------------------------------------------------------------------------

    def resolve(self, rel: str, label: str | None = None) -> tuple[str, os.stat_result]:
        """Resolve `rel` (a '/'-separated path inside the run folder) with every symlink read and
        followed here, and return the path without symlinks and the stat of what it names.

        The directory reached so far is held open, so each component costs one open; '..' reopens its
        parent from the top (never through '..'). Raises `InvalidFolder` (naming `label`, default `rel`)
        for a symlink that leaves the run folder, a broken symlink, a loop, or a path that would need
        more than `MAX_RESOLVE_OPENS` directory opens (a producer's `../d/../d/...` at the bottom of a
        deep tree); `FileNotFoundError`/`OSError` when an entry that is not behind a symlink vanished."""
        rel_label = rel if label is None else label
        todo = deque(_parts(rel))
        done: list[str] = []
        links = opens = 0
        fd = os.dup(self.fileno())   # the directory `done`
        try:
            st = os.fstat(fd)
            while todo:
                name = todo.popleft()
                if name == "..":
                    if not done:
                        raise InvalidFolder(self.label, f"{rel_label}: symlink points outside the run folder")
                    done.pop()
                    opens = self._count_opens(opens, len(done), rel_label)
                    fd = self._reopen(fd, done)
                    st = os.fstat(fd)
                    continue
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    if links:
                        raise InvalidFolder(self.label, f"{rel_label}: broken symlink") from None
                    raise
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise InvalidFolder(self.label, f"{rel_label}: broken symlink (loop)")
                    target = os.readlink(name, dir_fd=fd)
                    if target.startswith("/"):
                        target = self._inside(target, rel_label)
                        done = []
                        fd = self._reopen(fd, done)
                    todo.extendleft(reversed(_parts(target)))
                    if not todo:   # the link names a directory already reached ('.', the folder itself)
                        st = os.fstat(fd)
                    continue
                if todo and not stat.S_ISDIR(st.st_mode):
                    if links:
                        raise InvalidFolder(self.label, f"{rel_label}: broken symlink")
                    raise NotADirectoryError(rel)
                done.append(name)
                if todo:
                    opens = self._count_opens(opens, 1, rel_label)
                    nxt = os.open(name, O_DIR, dir_fd=fd)
                    os.close(fd)
                    fd = nxt
        finally:
            os.close(fd)
        return "/".join(done), st

    def _reopen(self, fd: int, parts: list[str]) -> int:
        """The directory `parts`, opened from the top, in place of `fd` (which stays open if that fails)."""
        new = self._open_parts(parts)
        os.close(fd)
        return new

    def _count_opens(self, opens: int, more: int, rel: str) -> int:
        if opens + more > MAX_RESOLVE_OPENS:
            raise InvalidFolder(self.label, f"{rel}: too deep to resolve (more than {MAX_RESOLVE_OPENS} "
                                            "directories to open)")
        return opens + more

    def _inside(self, target: str, rel: str) -> str:
        """An absolute symlink target as a path relative to the run folder, if it lies inside."""
        for root in self._roots:
            if target == root:
                return ""
            if target.startswith(root.rstrip("/") + "/"):
                return target[len(root.rstrip("/")) + 1:]
        raise InvalidFolder(self.label, f"{rel}: symlink points outside the run folder")

    def _open_parts(self, parts: list[str] | tuple[str, ...]) -> int:
        """A new descriptor of the directory `parts` (no symlinks), opened component by component."""
        fd = os.dup(self.fileno())
        try:
            for part in parts:
                nxt = os.open(part, O_DIR, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _open_dir(self, parts: list[str] | tuple[str, ...]) -> Iterator[int]:
        """A descriptor of the directory `parts` (no symlinks), opened component by component."""
        fd = self._open_parts(parts)
        try:
            yield fd
        finally:
            os.close(fd)

    # -- reading ----------------------------------------------------------------------------

    def open_file(self, rel: str, ident: Ident) -> int:
        """Open the file at `rel` (a path without symlinks, from `resolve`) for reading and check it is
        the regular file `ident` describes. The caller closes the descriptor.

        Raises `FolderChanged` when it is missing, is no longer a regular file, or is not the file
        (device, inode, size, mtime) that was inspected; `InvalidFolder` when we may not read it."""
        parts = rel.split("/")
        try:
            with self._open_dir(parts[:-1]) as parent:
                fd = os.open(parts[-1], O_READ, dir_fd=parent)
        except FileNotFoundError:
            raise FolderChanged(self.label, f"{rel} vanished") from None
        except PermissionError:
            raise InvalidFolder(self.label, f"{rel}: permission denied") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise FolderChanged(self.label, f"{rel} was replaced (by a symlink?)") from None
            raise FolderUnreadable(self.label, f"{rel}: {exc.strerror}") from None
        problem = _not_the_file(os.fstat(fd), ident, rel)
        if problem is not None:
            os.close(fd)
            raise FolderChanged(self.label, problem)
        return fd

    def read_file(self, rel: str, ident: Ident) -> bytes:
        """The whole content of the inspected file `rel` (bounded by its inspected size)."""
        fd = self.open_file(rel, ident)
        try:
            data = read_exactly(fd, ident.size, ident.size)
        finally:
            os.close(fd)
        if len(data) != ident.size:
            raise FolderChanged(self.label, f"{rel} {'grew' if len(data) > ident.size else 'shrank'} while read")
        return data

    # -- walking ----------------------------------------------------------------------------

    def walk(self, rel: str, limits: Limits) -> list[tuple[str, str, os.stat_result]]:
        """Every regular file under the directory `rel`, recursively, dotfiles included.

        Out: `(arcname, path without symlinks, stat)` sorted by arcname ('/'-separated, relative to
        `rel`). A symlink inside the run folder is followed (a file is listed under the link's name, a
        directory is descended into). Raises `InvalidFolder` for a symlink leaving the folder, a broken
        symlink, a loop, a FIFO/socket/device, more than `limits.max_files` files (or directories: links
        can make a few directories into exponentially many paths), deeper than `limits.max_depth` or
        a path longer than 4096 bytes; `FolderChanged`/`OSError` when the tree changes under us."""
        top, st = self.resolve(rel)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(rel)
        root_key = (st.st_dev, st.st_ino)
        stack: list[tuple[str, str, int, tuple[int, int], frozenset[tuple[int, int]]]] = [
            (top, "", 0, root_key, frozenset({root_key}))]
        found: list[tuple[str, str, os.stat_result]] = []
        dirs = 0
        while stack:
            real, prefix, depth, dev_ino, ancestors = stack.pop()
            for name, est in self._list(real, dev_ino, f"{rel}/{prefix}"):
                arcname = prefix + name
                label = f"{rel}/{arcname}"
                if len(os.fsencode(label)) > MAX_PATH_BYTES:
                    raise InvalidFolder(self.label, f"{label[:80]}...: path longer than {MAX_PATH_BYTES} bytes")
                path = f"{real}/{name}" if real else name
                if stat.S_ISLNK(est.st_mode):
                    with self._changed(label, "vanished"):
                        path, est = self.resolve(path, label)  # noqa: PLW2901 - the link stands for its target
                if stat.S_ISDIR(est.st_mode):
                    key = (est.st_dev, est.st_ino)
                    if key in ancestors:
                        raise InvalidFolder(self.label, f"{label}: symlink loop")
                    if depth + 1 > limits.max_depth:
                        raise InvalidFolder(self.label, f"{rel}: deeper than {limits.max_depth} directories "
                                                        "(files.max_archive_depth)")
                    dirs += 1
                    if dirs > limits.max_files:
                        raise InvalidFolder(self.label, f"{rel}: more than {limits.max_files} directories "
                                                        "(files.max_archive_files)")
                    stack.append((path, arcname + "/", depth + 1, key, ancestors | {key}))
                elif stat.S_ISREG(est.st_mode):
                    found.append((arcname, path, est))
                    if len(found) > limits.max_files:
                        raise InvalidFolder(self.label, f"{rel}: more than {limits.max_files} files "
                                                        "(files.max_archive_files)")
                else:
                    raise InvalidFolder(self.label, f"{label}: not a regular file or directory "
                                                    f"({kind(est.st_mode)})")
        found.sort(key=lambda member: member[0])
        return found

    def _list(self, real: str, dev_ino: tuple[int, int], label: str) -> list[tuple[str, os.stat_result]]:
        """The entries of the directory `real`, which must still be the one seen (`dev_ino`)."""
        with self._changed(label.rstrip("/"), "was replaced"), self._open_dir(real.split("/") if real else []) as fd:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != dev_ino:
                raise FolderChanged(self.label, f"{label.rstrip('/')} was replaced while inspected")
            entries = []
            with os.scandir(fd) as it:
                for entry in it:
                    try:
                        entries.append((entry.name, entry.stat(follow_symlinks=False)))
                    except FileNotFoundError:
                        continue
            return entries

    @contextlib.contextmanager
    def _changed(self, label: str, what: str) -> Iterator[None]:
        """A directory on the way vanished or became a symlink (O_NOFOLLOW refused it): FolderChanged."""
        try:
            yield
        except (FileNotFoundError, NotADirectoryError):
            raise FolderChanged(self.label, f"{label} {what} while inspected") from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise FolderChanged(self.label, f"{label} {what} while inspected") from None

    def newest_mtime(self, skip_prefix: str, now: float, max_entries: int) -> float:
        """The newest st_mtime of every entry under the folder (lstat; symlinks not followed), root
        entries starting with `skip_prefix` left out; `-inf` when empty. An entry that vanishes during
        the walk counts as changed `now`; at most `max_entries` entries are looked at, and reopening
        a directory from the top costs one entry per level (a 100,000-level chain would otherwise cost
        5 * 10**9 opens)."""
        newest = float("-inf")
        seen = 0
        stack: list[str] = [""]
        while stack and seen < max_entries:
            real = stack.pop()
            parts = real.split("/") if real else []
            seen += len(parts)
            try:
                with self._open_dir(parts) as fd, os.scandir(fd) as it:
                    entries: list[tuple[str, os.stat_result]] = []
                    for entry in it:
                        if seen + len(entries) >= max_entries:
                            break   # one directory of millions of entries is not listed whole either
                        try:
                            entries.append((entry.name, entry.stat(follow_symlinks=False)))
                        except FileNotFoundError:
                            newest = max(newest, now)
            except PermissionError:
                if not real:
                    raise
                continue   # counted by its own mtime, from its parent's listing
            except OSError:
                if not real:
                    raise
                newest = max(newest, now)   # vanished or replaced during the walk: a change now
                continue
            for name, st in entries:
                if not real and name.startswith(skip_prefix):
                    continue
                seen += 1
                newest = max(newest, st.st_mtime)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(f"{real}/{name}" if real else name)
        return newest


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def _not_the_file(st: os.stat_result, ident: Ident, rel: str) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return f"{rel} is no longer a regular file ({kind(st.st_mode)})"
    if Ident.of(st) != ident:
        return f"{rel} changed since it was inspected"
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
