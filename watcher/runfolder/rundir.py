"""A run folder, open: its files resolved, opened and walked through one directory descriptor.

A run folder belongs to its producer, who may be hostile (see README, "Security"). So a run
folder is opened once per attempt (`RunDir.open`: the watched path by name, then the folder with
`O_DIRECTORY|O_NOFOLLOW` relative to it) and everything afterwards goes through that descriptor
(`watcher.runfolder.dirhandle.DirHandle` for writes and state files):

- a symlink the contract allows (one that stays inside the run folder) is resolved here, by reading
  it, never by the kernel following a path (`resolve`, after systemd's `chase()`);
- every file is opened `O_NOFOLLOW|O_NONBLOCK`, one component at a time, `fstat`ed, and must be the
  regular file that was inspected (`Ident`), or the folder "changed" (`open_file`);
- directories are walked with bounds (`walk`, `Limits`; `newest_mtime`).

Nothing here follows a symlink, blocks on a FIFO or reads without a bound.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from watcher.errors import FolderChanged, FolderUnreadable, InvalidFolder
from watcher.runfolder.dirhandle import O_DIR, O_READ, DirHandle, kind, read_exactly

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
        return cls(path, fd)

    def __init__(self, path: Path, fd: int) -> None:
        super().__init__(path, fd)
        self._roots: tuple[str, ...] | None = None

    def _root_names(self) -> tuple[str, ...]:
        """The names an absolute symlink inside may give the folder: its path, and the same with the watched
        path's symlinks resolved. Resolved on the first absolute symlink met (a realpath is a stat of every
        ancestor; most folders have no such symlink), then kept."""
        if self._roots is None:
            folder = str(self.path)
            self._roots = (folder, os.path.join(os.path.realpath(self.path.parent), self.path.name))
        return self._roots

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
        parts = _parts(rel)
        if len(parts) == 1 and parts[0] != "..":   # an entry of the folder itself: one stat unless a symlink
            st = os.stat(parts[0], dir_fd=self.fileno(), follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                return parts[0], st
        return self._follow(parts, rel, rel_label)

    def _follow(self, parts: list[str], rel: str, rel_label: str) -> tuple[str, os.stat_result]:
        """`resolve`, component by component."""
        todo = deque(parts)
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
        for root in self._root_names():
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
        """A descriptor of the directory `parts` (no symlinks), opened component by component; the
        folder's own for no parts (neither copied nor closed)."""
        if not parts:
            yield self.fileno()
            return
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
