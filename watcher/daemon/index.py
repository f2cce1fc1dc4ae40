"""What the daemon knows about each folder, and when each is due: the one owner of that knowledge.

    offer() ----> NEW --take()--> IN_FLIGHT --settle(Next)--> INCOMPLETE | QUEUED | RETRY_WAIT
                                                              | PARKED | FINISHED | (gone: forgotten)

The start-up scan, the reconcile and the observers `offer` folders; a worker `take`s one and, when it
is done with it, `settle`s it with what it found (`Next`). Status, metrics and health read `counts`,
`oldest_pending_since`, `incomplete` and `is_finished`; nothing else keeps a copy. Parked folders wait
for their pause to end (`unpark(scope)`); finished ones keep only their inode, so that the reconcile
skips them (a new folder reusing the name has another inode); an entry is removed when its folder is
gone (`forget`, `prune`) or its watched path is no longer watched (`drop_under`). Finished entries are
kept apart (`Entries`), so that those reads cost what is pending, not what was ever tracked.

It is the work queue too (`WorkQueue`: each folder at most once, in order of its due time, never to two
workers at once), under the queue's one lock, which is never held while calling anything else.
Counted as pending (the `folders_pending` gauge): `queued` (NEW or QUEUED and due now), `in_flight`,
`retry_wait` (due later: a backoff, our own state error, a run look-up), `parked`. Folders not yet
complete are not counted.
"""

from __future__ import annotations

import enum
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from watcher.daemon.queue import WorkQueue
from watcher.daemon.shard import ALL, Shard


class Stage(enum.Enum):
    NEW = "new"                  # offered, not looked at yet
    INCOMPLETE = "incomplete"    # not complete: waits for an event or its re-check time
    QUEUED = "queued"            # complete, due now
    IN_FLIGHT = "in_flight"
    RETRY_WAIT = "retry_wait"    # complete, due at a later time
    PARKED = "parked"            # held by an API or application pause
    FINISHED = "finished"        # tracked or failed
    GONE = "gone"                # (for `Next` only) the folder vanished: forget it


PENDING = ("queued", "in_flight", "retry_wait", "parked")
# A FINISHED folder's reason when a newer nextmv-watcher wrote its marker or journal: left alone.
NEWER_SCHEMA = "newer_schema"


@dataclass(frozen=True)
class Next:
    """What a worker found, for `settle`: the folder's stage, when to look again (`at`), the pause it
    waits for (`scope`, PARKED), its directory's inode (FINISHED), why it waits (`reason`, RETRY_WAIT:
    the failure table's, e.g. "lookup_inconclusive"; INCOMPLETE: the completion rules', e.g. "output.json
    is not complete JSON"; FINISHED: why it is left alone, `NEWER_SCHEMA`), `detail`: the error, for status)."""

    stage: Stage
    at: float | None = None
    scope: str | None = None
    inode: int | None = None
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """A folder as the index knows it (a snapshot: `entry()` returns copies)."""

    stage: Stage
    complete_since: float | None = None     # when it was first seen complete (oldest pending age)
    incomplete_since: float | None = None   # when it was first seen incomplete
    scope: str | None = None
    inode: int | None = None
    warned: bool = False                    # logged as incomplete for too long
    seen: bool = False                      # a worker has looked at it (folder_detected was logged)
    reason: str | None = None               # why it waits to be retried (RETRY_WAIT), is incomplete, or is
                                            # left alone (FINISHED: NEWER_SCHEMA; kept when offered again)
    detail: str | None = None               # ... and the error that made it wait
    state_errors: int = 0                   # state errors in a row (their backoff grows with them)


class Entries:
    """The index's entries, the finished ones kept apart (`live`, `finished`): with 100,000 folders tracked
    nearly every entry is finished, and the reads behind status, metrics, health and the main loop's
    chores go over the live ones only. A finished entry is kept small: its folder's path as a string and
    its inode (the whole Entry only when it says why it is left alone): about 210 bytes a folder, against
    about 590 for a Path and an Entry (tracemalloc, the whole process). Not thread-safe: the index's lock
    guards it."""

    def __init__(self) -> None:
        self.live: dict[Path, Entry] = {}
        self.finished: dict[str, int | Entry] = {}

    def get(self, folder: Path) -> Entry | None:
        entry = self.live.get(folder)
        return entry if entry is not None else _unpacked(self.finished.get(str(folder)))

    def __getitem__(self, folder: Path) -> Entry:
        entry = self.get(folder)
        if entry is None:
            raise KeyError(folder)
        return entry

    def __setitem__(self, folder: Path, entry: Entry) -> None:
        if entry.stage is Stage.FINISHED:
            self.live.pop(folder, None)
            plain = entry.inode is not None and entry == Entry(Stage.FINISHED, inode=entry.inode)
            self.finished[str(folder)] = entry.inode if plain and entry.inode is not None else entry
        else:
            self.finished.pop(str(folder), None)
            self.live[folder] = entry

    def pop(self, folder: Path) -> None:
        self.live.pop(folder, None)
        self.finished.pop(str(folder), None)

    def explained(self, stage: Stage) -> list[tuple[Path, Entry]]:
        """The entries of `stage` that may carry a reason (finished ones kept as an inode carry none)."""
        if stage is not Stage.FINISHED:
            return [(f, e) for f, e in self.live.items() if e.stage is stage]
        return [(Path(f), e) for f, e in self.finished.items() if isinstance(e, Entry)]

    def names(self) -> list[tuple[str, Stage]]:
        """(path as a string, stage) of every entry, finished ones included (for the rare prunes)."""
        return [*((str(f), e.stage) for f, e in self.live.items()),
                *((f, Stage.FINISHED) for f in self.finished)]

    def __contains__(self, folder: object) -> bool:
        return folder in self.live or (isinstance(folder, Path) and str(folder) in self.finished)

    def __len__(self) -> int:
        return len(self.live) + len(self.finished)


def _unpacked(kept: int | Entry | None) -> Entry | None:
    return Entry(Stage.FINISHED, inode=kept) if isinstance(kept, int) else kept


class FolderIndex(WorkQueue):
    """Thread-safe. `take` blocks until a folder is due (see `WorkQueue.get`)."""

    def __init__(self, clock: Callable[[], float], shard: Shard | tuple[int, int] = ALL) -> None:
        super().__init__(clock)
        self._entries = Entries()
        self.shard = shard if isinstance(shard, Shard) else Shard(*shard)

    def owns(self, folder: Path) -> bool:
        """Whether `folder` is this process's to track (see `watcher.daemon.shard`); others are never offered."""
        return self.shard.owns(folder)

    # -- offering and taking work -----------------------------------------------------------

    def offer(self, folder: Path, at: float | None = None) -> None:
        """Queue `folder` (an event, a scan): due now, or at `at`. A parked folder stays parked; another
        shard's folder is ignored."""
        if not self.shard.owns(folder):
            return
        with self._cond:
            entry = self._entries.get(folder)
            if entry is not None and entry.stage is Stage.PARKED:
                return
            if entry is None or entry.stage is Stage.FINISHED:
                # A folder left alone keeps why, so that finding it so again is not said again.
                kept = entry if entry is not None and entry.reason == NEWER_SCHEMA else Entry(Stage.NEW)
                self._entries[folder] = Entry(Stage.NEW, reason=kept.reason, detail=kept.detail)
        self.put(folder, at)

    def take(self, timeout: float | None = None) -> Path | None:
        """The next due folder (now in flight), or None after `timeout` or once closed."""
        folder = self.get(timeout)
        if folder is not None:
            with self._cond:
                entry = self._entries.get(folder) or Entry(Stage.NEW)
                self._entries[folder] = replace(entry, stage=Stage.IN_FLIGHT)
        return folder

    def settle(self, folder: Path, nxt: Next) -> None:
        """The worker is done with `folder`: record what it found and when it is due again."""
        now = self._clock()
        with self._cond:
            entry = self._entries.get(folder) or Entry(Stage.NEW)
            if nxt.stage is Stage.GONE:
                self._entries.pop(folder)
            elif nxt.stage is Stage.FINISHED:
                self._entries[folder] = Entry(Stage.FINISHED, inode=nxt.inode, reason=nxt.reason, detail=nxt.detail)
            elif nxt.stage is Stage.INCOMPLETE:
                since = entry.incomplete_since if entry.incomplete_since is not None else now
                self._entries[folder] = Entry(Stage.INCOMPLETE, incomplete_since=since, warned=entry.warned,
                                              seen=True, reason=nxt.reason)
            else:
                since = entry.complete_since if entry.complete_since is not None else now
                stage = Stage.QUEUED if nxt.stage is Stage.RETRY_WAIT and (nxt.at or now) <= now else nxt.stage
                waits = nxt.stage is Stage.RETRY_WAIT
                self._entries[folder] = Entry(stage, complete_since=since, scope=nxt.scope, seen=True,
                                              reason=nxt.reason if waits else None,
                                              detail=nxt.detail if waits else None,
                                              state_errors=entry.state_errors + 1
                                              if waits and nxt.reason == "state_error" else 0)
        again = nxt.at if nxt.stage in (Stage.INCOMPLETE, Stage.RETRY_WAIT, Stage.QUEUED) else None
        if nxt.stage is Stage.QUEUED and again is None:
            again = now
        # An event during the attempt brings an incomplete or finished folder back at once (the marker
        # may have appeared, or been removed); a folder waiting to retry keeps its time: the change that
        # made the attempt fail is what such an event reports, and the wait is there to let it finish.
        self.done(folder, again, hold=nxt.stage is Stage.RETRY_WAIT)

    def unpark(self, scope: str) -> int:
        """A pause ended: every folder parked behind `scope` is due now. Returns how many."""
        with self._cond:
            parked = [f for f, e in self._entries.live.items() if e.stage is Stage.PARKED and e.scope == scope]
            for folder in parked:
                self._entries[folder] = replace(self._entries[folder], stage=Stage.QUEUED, scope=None)
        for folder in parked:
            self.put(folder)
        return len(parked)

    # -- facts --------------------------------------------------------------------------------

    def finished(self, folder: Path, inode: int) -> None:
        """`folder` (this inode) is tracked or failed: the reconcile may skip it."""
        with self._cond:
            self._entries[folder] = Entry(Stage.FINISHED, inode=inode)

    def is_finished(self, folder: Path, inode: int) -> bool:
        with self._cond:
            entry = self._entries.get(folder)
            return entry is not None and entry.stage is Stage.FINISHED and entry.inode == inode

    def entry(self, folder: Path) -> Entry | None:
        with self._cond:
            return self._entries.get(folder)

    def forget(self, folder: Path) -> None:
        """`folder` is gone (moved, deleted): drop it, and its place in the queue."""
        with self._cond:
            self._entries.pop(folder)
            self._ready_at.pop(folder, None)

    def prune(self, present: Iterable[str], roots: Iterable[Path]) -> int:
        """After a full listing of `roots` (`present`: the paths found, as strings, which cost a third of
        Paths): forget the finished and incomplete folders under them that are no longer there (the others
        are forgotten by the worker that finds them gone). Returns how many."""
        keep, under = set(present), {str(r) for r in roots}
        with self._cond:
            stale = [f for f, stage in self._entries.names() if os.path.dirname(f) in under and f not in keep
                     and stage in (Stage.FINISHED, Stage.INCOMPLETE)]
            for folder in stale:
                self._entries.pop(Path(folder))
        return len(stale)

    def drop_under(self, roots: Iterable[Path]) -> list[Path]:
        """Watched paths `roots` are no longer watched: forget their folders except those in flight
        (they finish). Returns the folders dropped."""
        gone = {str(r) for r in roots}
        with self._cond:
            dropped = [Path(f) for f, stage in self._entries.names()
                       if os.path.dirname(f) in gone and stage is not Stage.IN_FLIGHT]
            for folder in dropped:
                self._entries.pop(folder)
                self._ready_at.pop(folder, None)
        return dropped

    def counts(self) -> dict[str, int]:
        """Pending folders by state (every state present, 0 when none): see the module docstring."""
        now = self._clock()
        result = dict.fromkeys(PENDING, 0)
        with self._cond:
            for folder, entry in self._entries.live.items():
                state = _pending_state(entry, self._ready_at.get(folder), now)
                if state is not None:
                    result[state] += 1
        return result

    def oldest_pending_since(self) -> float | None:
        """When the oldest pending folder was first seen complete (None when none is)."""
        with self._cond:
            times = [e.complete_since for e in self._entries.live.values()
                     if e.complete_since is not None and e.stage in _COMPLETE_PENDING]
        return min(times, default=None)

    def incomplete(self) -> dict[Path, float]:
        """Incomplete folders with the time each was first seen incomplete."""
        with self._cond:
            return {f: e.incomplete_since for f, e in self._entries.live.items()
                    if e.stage is Stage.INCOMPLETE and e.incomplete_since is not None}

    def incomplete_too_long(self, limit: float) -> list[tuple[Path, float]]:
        """Incomplete folders first seen more than `limit` seconds ago and not reported yet (each is
        returned once, then marked reported)."""
        now = self._clock()
        with self._cond:
            due = [(f, e.incomplete_since) for f, e in self._entries.live.items()
                   if e.stage is Stage.INCOMPLETE and not e.warned and e.incomplete_since is not None
                   and now - e.incomplete_since > limit]
            for folder, _ in due:
                self._entries[folder] = replace(self._entries[folder], warned=True)
        return due

    def waiting_for(self, reason: str) -> list[Path]:
        """The folders waiting to be retried because of `reason` (e.g. "lookup_inconclusive"), sorted."""
        return [f for f, _ in self.waiting_with(reason)]

    def waiting_with(self, reason: str) -> list[tuple[Path, str | None]]:
        """(folder, error) of the folders waiting to be retried because of `reason`, sorted."""
        return self._details(Stage.RETRY_WAIT, reason)

    def left_alone(self) -> list[tuple[Path, str | None]]:
        """(folder, why) of the finished folders left alone because a newer version wrote their state, sorted."""
        return self._details(Stage.FINISHED, NEWER_SCHEMA)

    def _details(self, stage: Stage, reason: str) -> list[tuple[Path, str | None]]:
        """(folder, detail) of the folders in `stage` for `reason`, sorted by folder."""
        with self._cond:
            return sorted((f, e.detail) for f, e in self._entries.explained(stage) if e.reason == reason)

    def waiting_reasons(self) -> dict[str, int]:
        """How many folders wait to be retried, by reason ("backoff" when the attempt named none)."""
        with self._cond:
            waiting = [e for e in self._entries.live.values() if e.stage is Stage.RETRY_WAIT]
        return dict(Counter(e.reason or "backoff" for e in waiting))

    def parked_scopes(self) -> set[str]:
        """The pauses some folder is parked behind."""
        with self._cond:
            return {e.scope for e in self._entries.live.values() if e.stage is Stage.PARKED and e.scope is not None}

    def __contains__(self, folder: object) -> bool:
        with self._cond:
            return folder in self._entries

    def size(self) -> int:
        """How many folders the index holds (it is bounded by the folders present)."""
        with self._cond:
            return len(self._entries)


_COMPLETE_PENDING = (Stage.QUEUED, Stage.IN_FLIGHT, Stage.RETRY_WAIT, Stage.PARKED)


def _pending_state(entry: Entry, due_at: float | None, now: float) -> str | None:
    if entry.stage is Stage.IN_FLIGHT:
        return "in_flight"
    if entry.stage is Stage.PARKED:
        return "parked"
    if entry.stage in (Stage.NEW, Stage.QUEUED, Stage.RETRY_WAIT):
        if due_at is None:
            return None if entry.stage is Stage.NEW else "queued"
        return "queued" if due_at <= now else "retry_wait"
    return None
