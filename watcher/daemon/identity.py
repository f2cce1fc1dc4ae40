"""Which daemon answers on a control socket, and whether it runs the configuration a command was given.

Two daemons whose configurations leave `state_dir` and `control_socket` to the same defaults meet on
one socket; an admin command must not take the other one's answer for its own (nor tell it about a
folder). The daemon's every answer carries `describe(config)`: its pid, its configuration file (the
resolved path, device, inode and the digest of what it loaded), `state_dir`, control socket and
watched paths. The command compares it with the configuration it loaded itself:

    match(daemon, config) -> Match.SAME            the daemon runs this file, as it is now
                           | Match.RELOAD_PENDING  this file, edited since the daemon loaded it
                           | Match.OTHER           another file (or a daemon that does not say)

The same file is the same resolved path (an editor that writes a new file and renames it keeps the
path) or the same device and inode (another name of it). Pure.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from watcher.config import Config


class Match(enum.Enum):
    SAME = "same"
    RELOAD_PENDING = "reload pending"
    OTHER = "other"


def config_path(config: Config) -> str:
    """The configuration file `config` was read from, resolved (its source when it was not read from one)."""
    return config.file.path if config.file is not None else os.path.abspath(config.source)


def describe(config: Config, pid: int) -> dict[str, Any]:
    """What a daemon running `config` says about itself in every control-socket answer."""
    file = config.file
    return {
        "pid": pid,
        "config": config_path(config),
        "config_file": None if file is None else {"dev": file.dev, "ino": file.ino, "sha256": file.sha256},
        "state_dir": str(config.state_dir),
        "control_socket": str(config.control_socket),
        "watched": [str(w.path) for w in config.watch],
    }


def match(daemon: object, config: Config) -> Match:
    """Whether the daemon described by `daemon` (an answer's "daemon" value) runs `config`'s file."""
    if not isinstance(daemon, Mapping) or not isinstance(daemon.get("config"), str):
        return Match.OTHER
    theirs = daemon.get("config_file")
    theirs = theirs if isinstance(theirs, Mapping) else {}
    mine = config.file
    same_path = daemon["config"] == config_path(config)
    same_inode = mine is not None and (theirs.get("dev"), theirs.get("ino")) == (mine.dev, mine.ino)
    if not (same_path or same_inode):
        return Match.OTHER
    if mine is not None and theirs.get("sha256") != mine.sha256:
        return Match.RELOAD_PENDING
    return Match.SAME


def config_of(daemon: object) -> str:
    """The configuration file a daemon says it runs, for messages ("?" when it does not say)."""
    if isinstance(daemon, Mapping) and isinstance(daemon.get("config"), str):
        return str(daemon["config"])
    return "?"


def watches(daemon: object, folder: Path) -> bool:
    """Whether the daemon described by `daemon` watches the watched path `folder` is in."""
    watched = daemon.get("watched") if isinstance(daemon, Mapping) else None
    return isinstance(watched, list) and str(folder.parent) in watched
