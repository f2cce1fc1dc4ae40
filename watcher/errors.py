"""The one error tree of nextmv-watcher.

Callers decide what to do from the type alone; nothing outside `client.py`
ever sees an httpx exception and nothing outside `state.py` guesses at errno.

    WatcherError
    ├── ConfigError            the configuration is wrong (exit code 2); lists every problem
    ├── FolderError            the run folder itself is the problem
    │   ├── InvalidFolder      it breaks the run-folder contract: mark failed at once, never retried
    │   │   └── UnsafeStateFile  a `.nextmv-*` file that is not ours (a FIFO, a symlink, too big, a
    │   │                      stranger's): never read, never trusted; the folder is invalid
    │   └── FolderChanged      a file changed or vanished while we worked: retry later from the start
    │       └── FolderUnreadable an I/O error that is no change (EIO, a name too long): retried, but
    │                          the same one 3 times in a row makes the folder invalid
    ├── StateError             a claim, marker, journal or spool file could not be written (disk full,
    │   │                      EROFS): not the folder's fault; retried with a backoff of its own
    │   └── SpoolFull          the spool has no room for an archive: says how many bytes it needs
    ├── StateDirInUse          another daemon holds the state directory's lock: `run` exits 2
    ├── ListenerError          a listener cannot bind its address (names the key and the address):
    │                          `run` exits 2 at start-up; a reload is refused
    ├── ClaimLost              another process holds or took over the folder's claim
    ├── NewerState             a marker or journal written by a newer nextmv-watcher (its `schema`):
    │                          nothing in it is trusted; the folder is left alone (never tracked,
    │                          claimed or changed), logged once as `state_newer`
    ├── RetryLater             not a failure: come back at `at` (the run listing may lag)
    ├── LookupInconclusive     the run look-up could not see every run that could match (page limit,
    │                          a page that failed): never post again on it; look again with backoff
    └── ApiError               the Nextmv API answered badly or not at all
        ├── TransientError     connection refused/reset, timeout, 429, 5xx: retry with backoff
        │   ├── UploadFailed   a presigned PUT failed (S3's `code`, if any): a fresh URL, upload again
        │   │   ├── UploadExpired  403 AccessDenied "Request has expired" (or a 403 without an S3 body)
        │   │   └── UploadRefused  403 with another code (SignatureDoesNotMatch, ...): a proxy, clock skew
        │   └── UncertainError the request may have been processed (POST runs cut off after sending)
        ├── UploadTooLarge     400 EntityTooLarge on a PUT: the tracker makes the folder invalid
        ├── AuthError          401/403 on an API call: pause all work until the key works
        ├── ApplicationNotFound 404 on an application, confirmed: pause that application
        └── RejectedError      `POST .../runs` answered 400/409/413/422, or 404 with the application
                               present: the API refused this run; mark the folder failed
"""

from __future__ import annotations

# The exit codes of every command: success, an operational failure (a folder could not be tracked,
# the API refused the key), a usage or configuration error (`ConfigError`).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class WatcherError(Exception):
    """Root of every error raised by nextmv-watcher."""


class ConfigError(WatcherError):
    """The configuration is invalid; `problems` holds one line per problem, each naming its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration {source}:\n{lines}")


class FolderError(WatcherError):
    """A problem with one run folder; `folder` names it."""

    def __init__(self, folder: str, problem: str) -> None:
        self.folder = folder
        self.problem = problem
        super().__init__(f"{folder}: {problem}")


class InvalidFolder(FolderError):
    """The folder breaks the run-folder contract. Permanent: the folder is marked failed."""


class UnsafeStateFile(InvalidFolder):
    """A `.nextmv-*` state file we did not write: not a regular file, too big, or owned by a user that is
    neither ours, root nor one of `state_owners` (`untrusted`; `uid` is its owner)."""

    def __init__(self, folder: str, name: str, problem: str, *, uid: int | None = None) -> None:
        self.name = name
        self.reason = problem   # what is wrong with it, without its name
        self.uid = uid
        self.untrusted = problem.startswith("is owned by")
        super().__init__(folder, f"{name} {problem}")


class FolderChanged(FolderError):
    """A file of the folder changed or vanished during tracking. Retried later from the start."""


class FolderUnreadable(FolderChanged):
    """Reading the folder failed with an I/O error that says nothing changed. Retried; the same error
    several times in a row makes the folder invalid (see `worker.SAME_ERROR_LIMIT`)."""


class StateError(WatcherError):
    """Our own state (marker, journal, claim, spool file) could not be read or written."""


class SpoolFull(StateError):
    """A spool file could not be written for lack of space (ENOSPC, EDQUOT): `needed` is how many bytes the
    artifact can take at most, `free` how many the spool's filesystem had free afterwards (None: unknown)."""

    def __init__(self, directory: str, strerror: str, what: str, needed: int, free: int | None) -> None:
        self.needed = needed
        self.free = free
        room = "" if free is None else f", {free:,} free"
        super().__init__(f"spool directory {directory}: {strerror}: {what} needs up to {needed:,} bytes{room}")


class StateDirInUse(WatcherError):
    """Another daemon (`pid`, running `config`; None when it did not say) holds `<state_dir>/daemon.lock`:
    two daemons must not share a state directory (exit code 2)."""

    def __init__(self, state_dir: str, pid: int | None, config: str | None) -> None:
        self.state_dir, self.pid, self.config = state_dir, pid, config
        holder = f"pid {pid if pid is not None else '?'}, config {config or '?'}"
        super().__init__(f"state_dir {state_dir} is in use by another daemon ({holder}); daemons on one "
                         "host need their own state_dir")


class ListenerError(WatcherError):
    """A listener could not bind: `key` (`metrics.listen`, `control_socket`) names the setting, `address`
    its value, `error` why (`address already in use`). At start-up the daemon exits 2; on a reload the
    reload is refused and the running listeners stay."""

    def __init__(self, key: str, address: str, error: str) -> None:
        self.key, self.address, self.error = key, address, error
        super().__init__(f"{key} {address}: {error}")


class ClaimLost(WatcherError):
    """Another process holds the folder's claim, or took it over while we worked."""


class NewerState(WatcherError):
    """The state file `name` of `folder` was written by a newer nextmv-watcher (`schema` is newer than this
    version's): this version leaves the folder alone, whatever the file says."""

    def __init__(self, folder: str, name: str, schema: int) -> None:
        self.folder, self.name, self.schema = folder, name, schema
        self.problem = f"{name} written by a newer nextmv-watcher (schema {schema})"
        super().__init__(f"{folder}: {self.problem}; left alone")


class ApiError(WatcherError):
    """The Nextmv API failed. `status` is the HTTP status when there was a response."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class TransientError(ApiError):
    """Worth retrying later: the network failed, the API was throttling or failing (429, 5xx)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status)


class UploadFailed(TransientError):
    """A presigned PUT failed: S3 answered an error (its `code`, e.g. RequestTimeout, SlowDown; None when the
    body held none) or the connection failed. Never the folder's fault: upload again with a fresh URL."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 code: str | None = None) -> None:
        self.code = code
        super().__init__(message, status=status, retry_after=retry_after)


class UploadExpired(UploadFailed):
    """A presigned upload URL expired (403 AccessDenied "Request has expired", or a 403 without an S3
    error body). Ask for a new one."""


class UploadRefused(UploadFailed):
    """A presigned PUT was refused with another 403 code (SignatureDoesNotMatch, ...): most likely a proxy
    that rewrites requests, or clock skew. Retried with a fresh URL; refusals of every upload pause work."""


class UploadTooLarge(ApiError):
    """The storage refused an upload as too large (400 EntityTooLarge). Permanent for the artifact."""


class UncertainError(TransientError):
    """The request was sent but its outcome is unknown; the run may or may not exist."""


class AuthError(ApiError):
    """The API key was rejected (401/403 on an API call). Not the folder's fault."""


class ApplicationNotFound(ApiError):
    """The application does not exist (`GET /v1/applications/{id}` answered 404). A configuration error for
    that application only."""

    def __init__(self, application_id: str) -> None:
        self.application_id = application_id
        super().__init__(f"application {application_id!r} not found (check watch[].application_id)", status=404)


class RejectedError(ApiError):
    """The API refused the run (`POST .../runs` answered 400, 409, 413, 422, or 404 while the application
    exists: an unknown instance or batch experiment). Permanent for this folder."""


class RetryLater(WatcherError):
    """Not a failure: the work cannot go on before `at` (e.g. waiting for the run listing to catch up)."""

    def __init__(self, message: str, at: float) -> None:
        self.at = at
        super().__init__(message)


_LOOKUP_CAUSES = {"page_limit": "the page limit was hit", "page_error": "a page of the run list could not be read"}


class LookupInconclusive(WatcherError):
    """The run look-up ended without seeing every run that could match an open intent, and found none:
    `cause` is "page_limit" (`api.lookup_max_pages` pages read, more to come) or "page_error" (a page
    could not be read; `detail` says why). The run may exist: nothing may be posted on the strength of
    this look-up. Not the folder's fault."""

    def __init__(self, application_id: str, cause: str, detail: str) -> None:
        self.application_id = application_id
        self.cause = cause
        self.detail = detail
        super().__init__(f"run look-up in application {application_id!r} inconclusive: "
                         f"{_LOOKUP_CAUSES.get(cause, cause)} ({detail}); not posting again")
