"""One attempt to track a folder under its claim: the one way the daemon, `track` and `sync` do it.

    with attempts.claimed(d) as held:        # None: another live process holds the folder
        state = held.recheck()               # markers again, now that the folder is ours
        journal = held.journal()             # read once per attempt, handed to the tracker
        run = held.inspect(job)              # the run-folder contract
        outcome = held.track(run, job)       # upload, POST, tracked marker
    # the claim is released here, whatever happened

The claim's lease is renewed by the `LeaseKeeper` for as long as it is held (the keeper must be
running: the daemon's, or one the caller starts). A claim file that was not ours (a FIFO, a stranger's)
was moved out of the way when the claim was taken; `recheck` then raises `UnsafeStateFile` so that
the caller fails the folder while it still holds the claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from watcher.cloud.tracker import Outcome, Tracker
from watcher.config import FilesConfig, FormatConfig
from watcher.daemon.lease import LeaseKeeper
from watcher.errors import UnsafeStateFile
from watcher.runfolder.claims import CLAIM, Claim, Claims
from watcher.runfolder.folder import RunFolder, inspect_folder
from watcher.runfolder.markers import Journal, StateStore
from watcher.runfolder.rundir import RunDir
from watcher.runfolder.runjson import Turn, json_turn


@dataclass(frozen=True)
class Job:
    """What to track a folder as: its application, instance and the contract's settings."""

    application_id: str
    instance_id: str | None
    files: FilesConfig
    formats: FormatConfig
    marker: str | None


class Held:
    """A folder this process has claimed, for one attempt."""

    def __init__(self, d: RunDir, claim: Claim, claims: Claims, store: StateStore, tracker: Tracker,
                 turn: Turn) -> None:
        self.d = d
        self.claim = claim
        self._claims = claims
        self._store = store
        self._tracker = tracker
        self._turn = turn
        self._journal: Journal | None = None

    def recheck(self) -> str | None:
        """'tracked' or 'failed' when another process finished the folder before we claimed it, else
        None. Raises UnsafeStateFile for a claim or marker file that is not ours."""
        if self.claim.replaced is not None:
            raise UnsafeStateFile(self.d.label, CLAIM, self.claim.replaced)
        return self._store.finished(self.d)

    def journal(self) -> Journal:
        """The folder's journal, read once per attempt (the tracker updates this very object)."""
        if self._journal is None:
            self._journal = self._store.journal(self.d)
            # The last attempt's state error is history now: this attempt's saves drop it (the worker
            # saves a new one when this attempt meets one too).
            self._journal.state_error = None
        return self._journal

    @property
    def journal_read(self) -> Journal | None:
        """The journal as the attempt left it, or None when it was never (or could not be) read."""
        return self._journal

    def inspect(self, job: Job) -> RunFolder:
        """The folder checked against the contract (see `inspect_folder`)."""
        return inspect_folder(self.d, job.files, job.formats, job.marker, self._turn)

    def track(self, run: RunFolder, job: Job) -> Outcome:
        """Track the inspected folder (see `Tracker.track`), with this attempt's journal; the claim is
        verified right before the POST."""
        return self._tracker.track(run, job.application_id, run.instance_id or job.instance_id,
                                   lambda: self._claims.verify(self.claim), self.journal())


class Attempts:
    def __init__(self, store: StateStore, claims: Claims, keeper: LeaseKeeper, tracker: Tracker,
                 turn: Turn = json_turn) -> None:
        """`turn`: big JSON documents' (see `runjson`), shared by the daemon's processes when several."""
        self.store = store
        self.claims = claims
        self.keeper = keeper
        self.tracker = tracker
        self.turn = turn

    @contextmanager
    def claimed(self, d: RunDir) -> Iterator[Held | None]:
        """Claim the open folder for the block (None when another live process holds it); the lease is
        kept alive meanwhile and the claim released afterwards. Raises StateError when the claim file
        cannot be written."""
        claim = self.claims.acquire(d)
        if claim is None:
            yield None
            return
        self.keeper.hold(claim)
        try:
            yield Held(d, claim, self.claims, self.store, self.tracker, self.turn)
        finally:
            self.keeper.drop(claim)
            self.claims.release(claim)
