"""Hardening the process against its own environment, and checking the host's link protections.

`scrub_variable`: `os.environ.pop` and unsetenv(3) only take a variable out of the C library's
`environ` array. The string itself stays in the block the kernel copied onto the stack at exec
time, and /proc/<pid>/environ reads that block (mm->env_start to env_end) for as long as the
process lives: the daemon's user, root and anything that may ptrace it could read the API key
there. `scrub_variable` overwrites the value's bytes in that block with zero bytes and then
unsets the variable. Linux only; elsewhere it only unsets the variable and says so.

`disabled_link_protections`: with fs.protected_hardlinks = 0 a producer can hardlink into its run
folder a file it may not read but the daemon may (the API key file, another team's output): a
hard link is a regular file, so no symlink check sees it, and the daemon would upload its bytes.
With fs.protected_symlinks = 0 a symlink in a world-writable sticky directory is followed
whoever planted it. `nextmv-watcher check` (the unit's ExecStartPre) warns about both.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

PROC_ENVIRON = "/proc/self/environ"
PROC_STAT = "/proc/self/stat"
PROC_SYS_FS = Path("/proc/sys/fs")
# Each sysctl under PROC_SYS_FS that should read 1 (or more), and what a 0 lets a producer do.
LINK_PROTECTIONS = {
    "protected_hardlinks": "a producer can hardlink a file it may not read (the API key file, another "
                           "team's output) into its run folder, and the daemon would upload it",
    "protected_symlinks": "a symlink in a world-writable sticky directory is followed whoever planted it",
}
# /proc/<pid>/stat field 50 is env_start (proc(5), Linux >= 3.5); fields after the command name start at 3.
_ENV_START_FIELD = 50 - 3


def scrub_variable(name: str) -> bool:
    """Unset the environment variable `name` and zero its value where /proc/self/environ shows it.

    Every `name=value` entry of the initial environment block gets its value overwritten in
    place (the name stays visible, followed by zero bytes); the variable is then removed from
    `os.environ` and the C library's environment, so child processes do not inherit it either.
    Call it before starting threads (getenv(3) and unsetenv(3) are not thread-safe). Returns
    True when the block no longer holds a non-empty value for `name` (also when it never did),
    False when that could not be done or checked (no /proc, an unexpected layout). Never raises.
    """
    prefix = os.fsencode(name) + b"="
    os.environ.pop(name, None)
    os.unsetenv(name)   # also when os.environ never had it (set after start-up by a C extension)
    try:
        block = _read(PROC_ENVIRON)
        start = int(_read(PROC_STAT).rpartition(b")")[2].split()[_ENV_START_FIELD])
    except (OSError, IndexError, ValueError):
        return False
    # The kernel reads the block from this address; compare before writing, so that a layout we do
    # not expect (prctl(PR_SET_MM) moved it) is left alone rather than overwritten.
    if not start or ctypes.string_at(start, len(block)) != block:
        return False
    offset = 0
    for entry in block.split(b"\0"):
        if entry.startswith(prefix) and len(entry) > len(prefix):
            ctypes.memset(start + offset + len(prefix), 0, len(entry) - len(prefix))
        offset += len(entry) + 1
    try:
        block = _read(PROC_ENVIRON)
    except OSError:
        return False
    return not any(e.startswith(prefix) and e != prefix for e in block.split(b"\0"))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def disabled_link_protections(fs_dir: Path | None = None) -> list[tuple[str, str]]:
    """The link protections that are off: (sysctl name, e.g. "fs.protected_hardlinks", what that
    allows) for each file of `LINK_PROTECTIONS` under `fs_dir` (default `PROC_SYS_FS`) that reads
    0. A file that is missing or unreadable (not Linux, a restricted /proc) is not reported."""
    fs_dir = PROC_SYS_FS if fs_dir is None else fs_dir
    off = []
    for name, risk in LINK_PROTECTIONS.items():
        try:
            value = (fs_dir / name).read_text().strip()
        except OSError:
            continue
        if value == "0":
            off.append((f"fs.{name}", risk))
    return off
