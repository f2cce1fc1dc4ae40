"""The layout version of the daemon's state files, so that hosts of different versions can share a volume.

Every tracked marker, failed marker and journal this version writes carries `"schema": SCHEMA` at its
top level; a file without `schema` was written by 0.1, whose layout is schema 1. A version that
changes what a field means, or adds one an older version must not ignore, raises `SCHEMA`; fields an
older version may safely ignore go at the journal's top level without a new schema (0.1 refuses
unknown keys inside `intents` and `uploads`, so those keep their shape).

A file whose schema is newer than `SCHEMA` was written by a newer nextmv-watcher: nothing in it is
trusted (`check` raises `NewerState`), and its folder is never tracked, claimed or changed by this
version. `first_newer` finds such a file among a folder's state files; `refuse_newer` raises for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from watcher.errors import InvalidFolder, NewerState, StateError

SCHEMA = 1


def schema_of(data: dict[str, Any], where: str) -> int:
    """The schema of a state file's JSON object: its `schema`, or 1 when it has none (written by 0.1).
    Raises StateError when `schema` is not a whole number from 1 (edited by hand?)."""
    value = data.get("schema", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise StateError(f"{where}: schema {value!r} is not a whole number from 1 (edited by hand?)")
    return value


def check(data: dict[str, Any], folder: str, name: str) -> dict[str, Any]:
    """`data` (the state file `name` of `folder`) when this version can read it. Raises NewerState when a
    newer nextmv-watcher wrote it, StateError when its schema is not a number."""
    schema = schema_of(data, f"{folder}/{name}")
    if schema > SCHEMA:
        raise NewerState(folder, name, schema)
    return data


def first_newer(read: Callable[[str], object], names: Iterable[str]) -> NewerState | None:
    """The first of the state files `names` that `read(name)` finds written by a newer nextmv-watcher, as
    the error reading it raised; None when there is none. Files that cannot be read, or are not ours,
    are left to the readers that act on them (they raise there)."""
    for name in names:
        try:
            read(name)
        except NewerState as exc:
            return exc
        except (StateError, InvalidFolder):
            continue
    return None


def refuse_newer(read: Callable[[str], object], names: Iterable[str]) -> None:
    """Raise the `NewerState` of the first of `names` written by a newer nextmv-watcher (see `first_newer`),
    before anything is changed in its folder."""
    newer = first_newer(read, names)
    if newer is not None:
        raise newer
