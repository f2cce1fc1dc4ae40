"""`FakeCloud`, the emulator's public face, and `serve()`, which runs one in the foreground."""

from __future__ import annotations

import enum
import signal
import ssl
import sys
import threading
from collections.abc import Iterable
from types import FrameType, TracebackType
from typing import Any, TextIO

from watcher.fakecloud.api import Api
from watcher.fakecloud.behaviour import Behaviour, Behaviours
from watcher.fakecloud.control import stats
from watcher.fakecloud.faults import FaultInjector, Faults
from watcher.fakecloud.holds import Hold, Holds
from watcher.fakecloud.records import RequestLog, RequestRecord
from watcher.fakecloud.server import Server
from watcher.fakecloud.store import RecordedRun, RecordedUpload, Store

_POLL_SECONDS = 0.02  # how soon the accept loop notices stop(); idle wakeups cost next to nothing
_UNSET: Any = object()  # a Behaviour field not given to FakeCloud(...)


class State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class FakeCloud:
    """A local emulator of the Nextmv runs API on a real socket (see docs/protocol.md, "The emulator").

    `applications=None` accepts every application id; otherwise other ids answer 404. Uploads larger
    than `max_stored_bytes` keep only their size and sha256. `behaviour` (default `Behaviour()`: the
    real service as far as known) sets the service's rules; its fields can also be given one by one
    (`FakeCloud(list_order="oldest")`), over `behaviour`. Raises ValueError or TypeError for a bad
    fault or behaviour value. Lifecycle: NEW -> RUNNING (`start`) -> STOPPED (`stop`); a stopped
    instance cannot be restarted. All methods are thread-safe.
    """

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = ("test-key",),
        applications: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        behaviour: Behaviour | None = None,
        max_stored_bytes: int = 64 * 2**20,
        ssl_context: ssl.SSLContext | None = None,
        list_order: str = _UNSET,
        max_name_length: int | None = _UNSET,
        max_description_length: int | None = _UNSET,
        over_limit: str = _UNSET,
        instances: Iterable[str] | None = _UNSET,
        batch_experiments: Iterable[str] | None = _UNSET,
        max_upload_bytes: int | None = _UNSET,
        rate_limit_per_second: float | None = _UNSET,
        rate_limit_burst: int = _UNSET,
    ) -> None:
        given = {
            "list_order": list_order, "max_name_length": max_name_length,
            "max_description_length": max_description_length, "over_limit": over_limit,
            "instances": instances, "batch_experiments": batch_experiments,
            "max_upload_bytes": max_upload_bytes, "rate_limit_per_second": rate_limit_per_second,
            "rate_limit_burst": rate_limit_burst,
        }  # fmt: skip
        self._behaviours = Behaviours(behaviour, {k: v for k, v in given.items() if v is not _UNSET})
        self._address = (host, port)
        self._ssl_context = ssl_context
        self._faults = FaultInjector(faults)
        self._store = Store(max_stored_bytes)
        self._log = RequestLog()
        self._holds = Holds()
        self._api = Api(
            store=self._store,
            faults=self._faults,
            log=self._log,
            api_keys=api_keys,
            applications=applications,
            holds=self._holds,
            behaviours=self._behaviours,
        )
        self._state = State.NEW
        self._state_lock = threading.Lock()
        self._running: tuple[Server, threading.Thread] | None = None

    @property
    def state(self) -> State:
        return self._state

    @property
    def url(self) -> str:
        """Base URL, e.g. "http://127.0.0.1:41234". Raises RuntimeError before `start()`."""
        if not self._api.base_url:
            raise RuntimeError("FakeCloud has no URL before start()")
        return self._api.base_url

    def start(self) -> FakeCloud:
        """Bind (port 0 picks a free one) and serve on a daemon thread. Raises RuntimeError unless NEW."""
        with self._state_lock:
            if self._state is not State.NEW:
                raise RuntimeError(f"cannot start a FakeCloud that is {self._state.value}")
            server = Server(self._address, self._api, self._ssl_context)
            host, port = server.server_address[:2]
            host = "127.0.0.1" if host in ("", "0.0.0.0") else str(host)  # noqa: S104 - matching, not binding
            host = f"[{host}]" if ":" in host else host
            scheme = "https" if self._ssl_context is not None else "http"
            self._api.base_url = f"{scheme}://{host}:{port}"
            thread = threading.Thread(
                target=server.serve_forever, args=(_POLL_SECONDS,), name=f"fakecloud-{port}", daemon=True
            )
            thread.start()
            self._running = (server, thread)
            self._state = State.RUNNING
        return self

    def stop(self) -> None:
        """Release every hold, stop serving and close the listening socket and open connections. Idempotent."""
        with self._state_lock:
            self._state = State.STOPPED
            running, self._running = self._running, None
        self._holds.close()
        if running is None:
            return
        server, thread = running
        server.shutdown()
        server.server_close()
        server.close_connections()
        thread.join()

    def __enter__(self) -> FakeCloud:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- configuration at runtime ----------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """A copy of the faults in force."""
        return self._faults.current

    def set_faults(self, **changes: Any) -> None:
        """Change some `Faults` fields atomically; ValueError/TypeError for unknown fields or bad values."""
        self._faults.update(changes)

    @property
    def behaviour(self) -> Behaviour:
        """The service behaviour in force (frozen)."""
        return self._behaviours.current

    def set_behaviour(self, **changes: Any) -> None:
        """Change some `Behaviour` fields atomically; ValueError/TypeError for unknown fields or bad values."""
        self._behaviours.update(changes)

    def set_api_keys(self, keys: Iterable[str]) -> None:
        """Replace the accepted API keys; requests with other keys answer 401 from now on."""
        self._api.set_api_keys(keys)

    def fail_next(
        self,
        endpoint: str,
        status: int | None = None,
        *,
        after_processing: bool = False,
        count: int = 1,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        """Make the next `count` requests to `endpoint` fail, in order, ahead of any random fault.

        `status=None` resets the connection. With `after_processing` the request is carried out
        first (a create_run records the run, a put stores the bytes) and then answered `status` or
        reset. `retry_after` adds a Retry-After header. On `put` the answer is S3's XML error with
        `code` (e.g. "ExpiredToken", "RequestTimeout"); without one, a neutral code per status
        (s3errors.DEFAULT_CODES: 400 InvalidRequest, 403 AccessDenied, 404 NoSuchBucket, 500
        InternalError, 503 SlowDown, ...), or a gateway's HTML page for a status S3 does not send
        itself (502, 504, 429, ...). Raises ValueError for an unknown endpoint, a bad status, or a
        code on another endpoint than put.
        """
        self._faults.fail_next(
            endpoint, status, after_processing=after_processing, count=count, retry_after=retry_after, code=code
        )

    def hold(self, endpoint: str, *, content_length: int | None = None) -> Hold:
        """Hold every later request to `endpoint` (declaring `content_length`, when given) until released.

        A held request waits before faults and processing (see holds.py): a test acts at a known point
        of a client's work, e.g. while the client has asked for an upload URL and before it uploads.
        Returns the `Hold` (`wait_held(timeout)`, `release()`). Raises ValueError for an unknown
        endpoint, RuntimeError once stopped.
        """
        return self._holds.hold(endpoint, content_length=content_length)

    # --- what happened ---------------------------------------------------------------------------

    def runs(self, application_id: str | None = None) -> list[RecordedRun]:
        """Runs created so far, oldest first, of one application or of all."""
        return self._store.runs(application_id)

    def upload(self, upload_id: str) -> RecordedUpload | None:
        """The content last PUT to `upload_id`, or None if unknown or never PUT."""
        return self._store.upload(upload_id)

    def uploads(self) -> list[RecordedUpload]:
        """The content of every upload id PUT so far, referenced by a run or not, in no set order."""
        return self._store.uploads()

    def requests(self) -> list[RequestRecord]:
        """Every request seen, in order of completion (control requests included, as "control")."""
        return self._log.records()

    def stats(self) -> dict[str, Any]:
        """Counts per endpoint and status, connections accepted, runs, uploads, process CPU seconds.

        `internal_errors` lists emulator bugs hit while serving; tests expect it to be empty.
        """
        return stats(self._api)


def serve(
    port: int,
    api_keys: Iterable[str],
    applications: Iterable[str] | None = None,
    faults: Faults | None = None,
    *,
    behaviour: Behaviour | None = None,
    host: str = "127.0.0.1",
    out: TextIO | None = None,
) -> None:
    """Run a FakeCloud in the foreground until SIGINT or SIGTERM; must be called from the main thread.

    Prints exactly one line, `fake-cloud listening on <url>`, to `out` (stdout by default) once
    requests are accepted. Returns after stopping the server.
    """
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()  # only a flag: the loop below does the work

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        cloud = FakeCloud(
            api_keys=api_keys, applications=applications, host=host, port=port, faults=faults, behaviour=behaviour
        )
        with cloud:
            stream = out if out is not None else sys.stdout
            print(f"fake-cloud listening on {cloud.url}", file=stream, flush=True)
            while not stop.wait(1.0):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
