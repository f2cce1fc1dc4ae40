"""What a reload changes: the key paths that differ between two configurations.

`diff(old, new)` walks the frozen configuration dataclasses and names every key whose value differs
(`retry.backoff_initial_seconds`, `watch[/srv/runs].application_id`, ...), the watched paths added
and removed, and which of the changes only take effect after a restart (the API's connection settings,
`state_dir`, `processes`).
Pure: the service applies the new configuration (`Service._apply_reload`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from watcher.config import API_CONNECTION, Config

# The HTTP client's connection settings and the state store are built once: a change takes effect at
# the next start. Every other key (the api limits included) applies at once.
RESTART_ONLY = (*(f"api.{k}" for k in API_CONNECTION), "state_dir", "processes")
NOT_KEYS = ("source", "file", "state_dir_from", "shard")   # where it was read from, not settings


@dataclass(frozen=True)
class Changes:
    changed: list[str]            # every key path whose value differs (restart_required included)
    restart_required: list[str]   # those that only take effect after a restart
    added: list[str]              # watched paths
    removed: list[str]

    @property
    def listeners(self) -> bool:
        """Whether the control socket or the metrics listener moves."""
        return any(k in ("control_socket", "metrics.listen") for k in self.changed)


def diff(old: Config, new: Config) -> Changes:
    changed: list[str] = []
    for f in dataclasses.fields(Config):
        if f.name in NOT_KEYS:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if f.name == "watch":
            changed += _watch_changes(a, b)
        else:
            changed += _paths(f.name, a, b)
    old_paths = {str(w.path) for w in old.watch}
    new_paths = {str(w.path) for w in new.watch}
    restart = [k for k in changed if k in RESTART_ONLY]
    return Changes(changed=changed, restart_required=restart, added=sorted(new_paths - old_paths),
                   removed=sorted(old_paths - new_paths))


def _watch_changes(old: tuple[Any, ...], new: tuple[Any, ...]) -> list[str]:
    before = {str(w.path): w for w in old}
    after = {str(w.path): w for w in new}
    changed = [f"watch[{p}]" for p in sorted(set(before) ^ set(after))]
    for path in sorted(set(before) & set(after)):
        changed += _paths(f"watch[{path}]", before[path], after[path])
    return changed


def _paths(prefix: str, a: Any, b: Any) -> list[str]:
    """The key paths under `prefix` whose values differ (dataclasses are compared field by field)."""
    if a == b:
        return []
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
        found: list[str] = []
        for f in dataclasses.fields(a):
            found += _paths(f"{prefix}.{f.name}", getattr(a, f.name), getattr(b, f.name))
        return found
    return [prefix]
