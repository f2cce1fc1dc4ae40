"""What a hostile producer plants in its run folder, for the attack tests (real filesystem only:
pyfakefs has no FIFOs or sockets and answers some errors differently from Linux)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SECRET = b"nxmv_live_API-KEY-that-must-never-leave"
TOO_DEEP = sys.getrecursionlimit() + 200   # directory levels that a recursive walk cannot take


def put(root: Path, files: dict[str, bytes]) -> None:
    """Files (with their directories) under `root`."""
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)


def open_fds() -> int:
    """How many descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def loaded_fifo(path: Path) -> Iterator[Callable[[], bool]]:
    """A FIFO at `path` holding SECRET (our end stays open, so a reader would get it at once).
    Yields `untouched()`: whether SECRET is still in the pipe, i.e. nobody read from it."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    os.write(fd, SECRET)

    def untouched() -> bool:
        try:
            data = os.read(fd, 4 * len(SECRET))
        except BlockingIOError:
            return False
        os.write(fd, data)   # put it back: the check can be repeated
        return data == SECRET

    try:
        yield untouched
    finally:
        os.close(fd)


@contextlib.contextmanager
def unix_socket(path: Path) -> Iterator[None]:
    """A listening Unix socket at `path` (anyone may create one; open() on it fails with ENXIO)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        yield
    finally:
        sock.close()


@contextlib.contextmanager
def planted(path: Path, kind: str, target: Path | None = None) -> Iterator[None]:
    """A `kind` at `path`: "fifo" (nobody writes: a blocking open would hang), "symlink" (to
    `target`), "directory", "socket" (for the duration)."""
    if kind == "socket":
        with unix_socket(path):
            yield
        return
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        assert target is not None
        path.symlink_to(target)
    else:
        path.mkdir()
    yield


def deep_dirs(root: Path, depth: int, name: str = "d") -> str:
    """`depth` nested directories `name/name/...` under `root`, made relative to descriptors (a
    path that long could not be named at once); returns the relative path. Remove them with
    `remove_all()`: pytest's own clean-up recurses and fails on them (for every session on the host)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    return "/".join([name] * depth)


def remove_all(path: Path) -> None:
    """Remove `path` and everything under it, however deep (`rm -rf` does not recurse on the stack)."""
    subprocess.run(["rm", "-rf", "--", str(path)], check=False)


def chown_or_skip(path: Path, uid: int) -> None:
    """Give `path` (not a symlink's target) to `uid`; skip the test when we may not (not root)."""
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    os.chown(path, uid, uid, follow_symlinks=False)


class OpenCounter:
    """Counts os.open calls (install with monkeypatch): the cost of resolving a path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = os.open

        def counting(*args: Any, **kwargs: Any) -> int:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(os, "open", counting)
