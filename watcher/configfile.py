"""Reading the configuration file: its YAML, and which file it is.

`read_config_file(path)` returns the parsed YAML and a `ConfigFile`: the file's resolved path, device
and inode, and the SHA-256 of the bytes parsed. A running daemon reports its `ConfigFile`, so that an
admin command can tell whether the daemon runs the file the command was given, and whether that file
was edited since (a reload pending). A YAML syntax error names the file, line and column (yaml's own
message says `in "<unicode string>"`, since it parses a string). Raises ConfigError.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from watcher.errors import ConfigError


@dataclass(frozen=True)
class ConfigFile:
    """The configuration file as it was read."""

    path: str     # resolved (symlinks followed)
    dev: int
    ino: int
    sha256: str   # of the bytes parsed: a daemon's differs from the file's once it is edited and not reloaded


def read_config_file(path: Path) -> tuple[object, ConfigFile]:
    """The YAML document at `path` (None when empty) and the file it came from. Raises ConfigError
    (one problem: unreadable, not UTF-8, not valid YAML)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the configuration file: {exc.strerror}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text (byte {exc.start})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [yaml_problem(text, exc)]) from None
    return raw, ConfigFile(os.path.realpath(path), st.st_dev, st.st_ino, hashlib.sha256(data).hexdigest())


def yaml_problem(text: str, exc: yaml.YAMLError) -> str:
    """A YAML error as one line naming the line and column (both counted from 1); the ConfigError that
    carries it names the file."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        context = ""
        if exc.context and exc.context_mark is not None:
            context = f" ({exc.context} at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}{context}"
    position = getattr(exc, "position", None)   # a ReaderError: a character YAML does not allow
    if isinstance(position, int):
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        reason = getattr(exc, "reason", "") or "a character YAML does not allow"
        return f"not valid YAML at line {line}, column {column}: {reason}"
    return f"not valid YAML: {exc}"
