"""The Nextmv runs API over keep-alive httpx clients, one per calling thread (`pools`), each speaking
HTTP/1.1 on its own connections (`transport`).

httpx's exceptions and the answers' status codes (`statuses`) become the errors of `watcher.errors`
here and nowhere else. API requests that are safe to repeat are retried a
bounded number of times with jittered exponential backoff (honouring Retry-After) when the
network failed or the API answered 408, 429 or 5xx; `POST .../runs` is repeated only when the
request certainly never reached the server, otherwise `UncertainError` tells the caller to look
the run up instead of posting blindly. Only `POST .../runs` is ever refused (`RejectedError`:
400, 409, 413, 422, or a 404 while the application exists); a 404 on an application's endpoint
is confirmed with `GET /v1/applications/{id}` before it is called `ApplicationNotFound`.

A presigned PUT is tried once: its failures are `UploadFailed` (with S3's error code, read from a
bounded part of the body, see `s3error`), and the caller uploads again with a fresh URL.

Secrets: the API key goes only in the Authorization header of API calls, never on the
presigned PUT; neither the key, nor an upload URL, nor S3's signing material (StringToSign,
CanonicalRequest) ever appears in an error message.
"""

from __future__ import annotations

import contextlib
import io
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from watcher import __version__
from watcher.cloud import putbody, s3error
from watcher.cloud.answers import AnswerTooLarge, read_bounded
from watcher.cloud.backoff import Backoff
from watcher.cloud.pools import ThreadClients
from watcher.cloud.statuses import PUT, NotFound, json_object, retryable, status_error
from watcher.cloud.tlsbio import ContextOnce
from watcher.cloud.transport import H11Transport, for_thread, plain_target
from watcher.errors import (
    ApiError,
    ApplicationNotFound,
    AuthError,
    RejectedError,
    TransientError,
    UncertainError,
    UploadFailed,
)

USER_AGENT = f"nextmv-watcher/{__version__}"
RETRY_AFTER_CAP = 120.0
# Errors raised before a single byte of the request could reach the server.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# What a probe uploads to test that uploads work again.
PROBE_BYTES = b"{}"


@dataclass(frozen=True)
class UploadTarget:
    upload_id: str
    upload_url: str
    obtained_at: float


@dataclass(frozen=True)
class RequestOutcome:
    """What one HTTP attempt did, for observers (metrics, the circuit breaker)."""

    endpoint: str
    status: int | None
    seconds: float
    error: type[ApiError] | None   # None for a success, else the error's type (UploadExpired, AuthError, ...)
    code: str | None = None        # S3's error code of a failed PUT (RequestTimeout, SignatureDoesNotMatch, ...)
    size: int = 0                  # the request body's bytes (a PUT's Content-Length): PUT time is judged per MB
    retry_after: float | None = None   # the answer's Retry-After, in seconds (a 429's: see the gate's hold)


Observer = Callable[[RequestOutcome], None]
Hold = Callable[[], float]   # seconds every API call must still wait (a 429's Retry-After, for the whole key)
Transport = httpx.BaseTransport   # what tests hand in (httpx.MockTransport), so that no caller needs httpx


class NextmvClient:
    """Thread-safe: one instance serves every worker."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 32,
        attempts: int = 4,
        backoff: Backoff | None = None,
        cancel: threading.Event | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
        hold: Hold | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.attempts = attempts
        self.backoff = backoff or Backoff(0.5, 10.0)
        self.cancel = cancel or threading.Event()
        self.observer = observer
        self.clock = clock
        self.hold = hold
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=read_timeout)
        self._timeout = timeout.as_dict()
        self._base_headers = {"User-Agent": USER_AGENT, "Accept": "*/*"}
        tls = ContextOnce(lambda: verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify))

        def thread_client() -> httpx.Client:   # httpx's own transport (a proxy) needs the context at once
            own = transport or for_thread(tls)
            return httpx.Client(timeout=timeout, verify=True if own else tls(), transport=own,
                                headers={"User-Agent": USER_AGENT}, follow_redirects=False,
                                limits=httpx.Limits(max_connections=max_connections,
                                                    max_keepalive_connections=max_connections))
        self._http = ThreadClients(thread_client)

    def close(self) -> None:
        self._http.close()

    def set_api_key(self, api_key: str) -> None:
        self._api_key = api_key

    # -- the API ---------------------------------------------------------------------------

    def get_application(self, application_id: str, attempts: int | None = None) -> dict[str, Any]:
        """The application; ApplicationNotFound when it does not exist, AuthError when the key is refused."""
        resp = self._call("get_application", "GET", self._app_url(application_id), app=application_id,
                          attempts=attempts)
        return json_object(resp)

    def new_upload(self, application_id: str, attempts: int | None = None) -> UploadTarget:
        """A fresh (upload_id, presigned URL) pair, valid for 15 minutes."""
        return self._target(self._app_call("uploadurl", "POST", self._app_url(application_id, "/runs/uploadurl"),
                                           app=application_id, attempts=attempts))

    def new_uploads(self, application_id: str, count: int) -> list[UploadTarget | Exception]:
        """`count` fresh upload URLs in one round trip (`_in_flight`), each asked once: an error stands in
        its place, for the caller to ask again with `new_upload` (retries; a 404 confirmed)."""
        url, headers = self._app_url(application_id, "/runs/uploadurl"), self._api_headers("POST")
        targets: list[UploadTarget | Exception] = []
        for got in self._in_flight("uploadurl", "POST", [(url, headers, lambda: b"", 0)] * count, app=application_id,
                                   paced=True):
            try:
                targets.append(got if isinstance(got, Exception) else self._target(got))
            except TransientError as exc:
                targets.append(exc)
        return targets

    def _target(self, resp: httpx.Response) -> UploadTarget:
        data = json_object(resp)
        upload_id, url = data.get("upload_id"), data.get("upload_url")
        if not isinstance(upload_id, str) or not isinstance(url, str):
            raise TransientError("uploadurl: response lacks upload_id/upload_url", status=resp.status_code)
        return UploadTarget(upload_id, url, self.clock())

    def put_file(self, target: UploadTarget, source: Callable[[], BinaryIO], size: int,
                 progress: Callable[[int], None] | None = None, *, folder: str = "", label: str = "upload") -> None:
        """Stream the bytes of `source()` (a reader of exactly `size` bytes) to the presigned URL with a
        Content-Length (presigned PUTs refuse chunked bodies) and neither Authorization nor Content-Type.
        Tried once (the same URL is never tried again): UploadExpired (403 AccessDenied "Request has
        expired", or a 403 without an S3 body), UploadRefused (another 403 code), UploadTooLarge (400
        EntityTooLarge), else UploadFailed (any other answer, a reset, a timeout), each with S3's code
        when the body had one. A source that gives more or fewer than `size` bytes raises FolderChanged
        (`folder`, naming `label`; see `putbody`), whichever layer notices. Whatever opening or reading
        the source raises (the folder's errors, OSError) propagates unchanged."""
        [error] = self.put_files([(target, source, size, label)], progress, folder=folder)
        if error is not None:
            raise error

    def put_files(self, uploads: Sequence[tuple[UploadTarget, Callable[[], BinaryIO], int, str]],
                  progress: Callable[[int], None] | None = None, *, folder: str = "") -> list[Exception | None]:
        """`put_file` for each (target, source, size, label) in one round trip (`_in_flight`): None where
        it succeeded, else what `put_file` would have raised. Raises what opening a source raises: each is
        opened before anything is sent, so that a file we may not read fails here, not mid-request."""
        with contextlib.ExitStack() as stack:
            srcs = [putbody.Source(stack.enter_context(source()), size, folder, label)
                    for _, source, size, label in uploads]
            got = self._in_flight(PUT, "PUT", [(t.upload_url, {"Content-Length": str(src.size)},
                                                partial(putbody.counted, src, progress), src.size)
                                               for (t, *_), src in zip(uploads, srcs, strict=True)],
                                  body_limit=s3error.MAX_BYTES)
            # Judged while the sources are open: `library_noticed` looks at each file's size now.
            return [None if isinstance(g, httpx.Response) else putbody.library_noticed(src, g) or g
                    for g, src in zip(got, srcs, strict=True)]

    def try_upload(self, application_id: str) -> None:
        """Upload `{}` once with a fresh URL, without retries: the probe that tells whether uploads work.
        Raises what `new_upload` and `put_file` raise."""
        target = self.new_upload(application_id, attempts=1)
        self.put_file(target, lambda: io.BytesIO(PROBE_BYTES), len(PROBE_BYTES))

    def create_run(self, application_id: str, body: dict[str, Any], instance_id: str | None) -> str:
        """POST the run; returns its id. Repeated only when the request never reached the server;
        otherwise an unclear outcome raises UncertainError (the run may exist). RejectedError for 400,
        409, 413, 422, and for a 404 while the application exists (an unknown instance or batch
        experiment: the API's message says which); ApplicationNotFound when it does not."""
        params = {"instance_id": instance_id} if instance_id else None
        resp = self._app_call("create_run", "POST", self._app_url(application_id, "/runs"), app=application_id,
                              json_body=body, params=params, uncertain_after_send=True)
        try:
            run_id = json_object(resp).get("run_id")
        except TransientError as exc:  # a 2xx: the run was created, so it must be looked up, not re-posted
            raise UncertainError(f"create_run: {exc}", status=resp.status_code) from None
        if not isinstance(run_id, str):
            raise UncertainError("create_run: response lacks run_id", status=resp.status_code)
        return run_id

    def list_runs(self, application_id: str, page_token: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the application's runs, in the API's order (undocumented: see `lookup.py`), and the
        next page's token (None at the end)."""
        params = {"pagereturn": "true"}
        if page_token:
            params["pagetoken"] = page_token
        resp = self._app_call("list_runs", "GET", self._app_url(application_id, "/runs"), app=application_id,
                              params=params)
        data = json_object(resp)
        runs = data.get("runs") or []
        if not isinstance(runs, list):
            raise TransientError("list_runs: unexpected response shape", status=resp.status_code)
        token = data.get("next_page_token") or None
        return [r for r in runs if isinstance(r, dict)], token if isinstance(token, str) else None

    # -- plumbing --------------------------------------------------------------------------

    def _app_url(self, application_id: str, suffix: str = "") -> str:
        return f"{self.base_url}/v1/applications/{quote(application_id, safe='')}{suffix}"

    def _app_call(self, endpoint: str, method: str, url: str, *, app: str, **kwargs: Any) -> httpx.Response:
        """`_call` for an endpoint under an application, whose 404 does not prove the application missing
        (an unknown instance, a bad page token, a route the API moved): confirmed with one `GET` of the
        application. Missing: ApplicationNotFound. Present: the 404 refuses a run (`create_run`,
        RejectedError with the API's message), else it is transient. The GET failed: transient."""
        try:
            return self._call(endpoint, method, url, app=app, **kwargs)
        except NotFound as exc:
            not_found = str(exc)
        try:
            self.get_application(app, attempts=1)   # ApplicationNotFound, AuthError: raised as they are
        except (ApplicationNotFound, AuthError):
            raise
        except ApiError as exc:
            raise TransientError(f"{not_found}; the application could not be confirmed ({exc})",
                                 status=404) from None
        if endpoint == "create_run":
            raise RejectedError(not_found, status=404)
        raise TransientError(not_found, status=404)

    def _call(self, endpoint: str, method: str, url: str, *, app: str | None = None,
              json_body: dict[str, Any] | None = None, params: dict[str, str] | None = None,
              uncertain_after_send: bool = False, attempts: int | None = None) -> httpx.Response:
        """An API call (presigned PUTs go through `put_files`), repeated as the module's docstring says."""
        hdrs = self._api_headers(method)
        body_bytes = None
        if json_body is not None:
            body_bytes = json.dumps(json_body, separators=(",", ":")).encode()
        elif method == "POST":
            body_bytes = b""
        attempt = 0
        while True:
            attempt += 1
            self._wait_for_hold()
            got = self._judge(endpoint, time.monotonic(), lambda: self._send(method, url, params, hdrs, body_bytes),
                              app=app, uncertain_after_send=uncertain_after_send)
            if not isinstance(got, ApiError):
                return got
            err = got
            if not retryable(err) or attempt >= (attempts or self.attempts) or self.cancel.is_set():
                raise err
            retry_after = err.retry_after if isinstance(err, TransientError) else None
            delay = self.backoff.delay(attempt)
            if retry_after is not None:
                delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
            if self.cancel.wait(delay):
                raise err

    def _in_flight(self, endpoint: str, method: str,
                   sends: list[tuple[str, dict[str, str], Callable[[], bytes | Iterator[bytes]], int]], *,
                   app: str | None = None, body_limit: int | None = None, paced: bool = False,
                   ) -> list[httpx.Response | Exception]:
        """Several attempts at once from this thread, with no thread to hand them to: each (url, headers,
        body, size) is sent in turn on a connection of its own (`paced`: each as soon as it has its turn,
        `_wait_for_hold`), then each answer is read and judged as `_call` judges one attempt; an answer,
        or the error in its place. Sent one after the other where a request needs an httpx.Request (a
        proxy, a URL `plain_target` leaves to httpx)."""
        own = self._http.get()._transport   # private, see `_send`
        begun: list[Callable[[], httpx.Response]] = []
        started: list[float] = []
        for url, headers, body, _ in sends:
            if paced:
                self._wait_for_hold()
            started.append(time.monotonic())
            try:
                if isinstance(own, H11Transport) and (to := plain_target(url)) is not None:
                    sent = own.start(to, method, {**self._base_headers, **headers}, body(), self._timeout)
                    begun.append(lambda sent=sent: read_bounded(sent.finish(), body_limit))  # type: ignore[misc]
                else:
                    begun.append(partial(self._send, method, url, None, headers, body(), body_limit))
            except Exception as exc:  # noqa: BLE001 - judged below, in its turn
                begun.append(partial(_raise, exc))
        results: list[httpx.Response | Exception] = []
        for (_, _, _, size), answer, since in zip(sends, begun, started, strict=True):
            try:
                results.append(self._judge(endpoint, since, answer, app=app, size=size))
            except Exception as exc:  # noqa: BLE001 - what the caller would have seen raised
                results.append(exc)
        return results

    def _api_headers(self, method: str) -> dict[str, str]:
        # Content-Type as the docs' curl sends it, the empty upload-URL POST included.
        auth = {"Authorization": f"Bearer {self._api_key}"}
        return {**auth, "Content-Type": "application/json"} if method in ("POST", "PUT") else auth

    def _judge(self, endpoint: str, started: float, exchange: Callable[[], httpx.Response], *, app: str | None,
               uncertain_after_send: bool = False, size: int = 0) -> httpx.Response | ApiError:
        """One attempt: `exchange()`'s answer when it succeeded, else its error (network failures and
        answers alike), observed either way. Whatever else `exchange` raises propagates."""
        status: int | None = None
        try:
            resp = exchange()
        except httpx.TransportError as exc:   # timeouts included
            err: ApiError = self._network_error(endpoint, exc, uncertain_after_send)
        except AnswerTooLarge as exc:   # a success: for `POST .../runs`, the run may exist
            status = exc.status
            err = (UncertainError if uncertain_after_send else TransientError)(f"{endpoint}: {exc}", status=status)
        else:
            status = resp.status_code
            err_or_none = status_error(endpoint, resp, app, uncertain_after_send)
            if err_or_none is None:
                self._observe(endpoint, status, started, None, size=size)
                return resp
            err = err_or_none
        self._observe(endpoint, status, started, type(err), getattr(err, "code", None), size=size,
                      retry_after=getattr(err, "retry_after", None))
        return err

    def _send(self, method: str, url: str, params: dict[str, str] | None, headers: dict[str, str],
              content: bytes | Iterator[bytes] | None, body_limit: int | None = None) -> httpx.Response:
        """One request straight to the thread's transport, its answer read with a bound (see `answers`):
        a presigned PUT's first `body_limit` bytes. The Client's own layers (cookies, auth flows,
        redirects, header merging) do nothing for us, and a plain URL (`plain_target`) needs no
        httpx.Request either (its URL parsing cost 40-100 us). The Client still chooses the transport:
        httpx's own for a proxy from the environment, else the thread's `H11Transport` (`for_thread`)."""
        client, headers = self._http.get(), {**self._base_headers, **headers}
        own, to = client._transport, None   # private, see the docstring
        if params is None and isinstance(own, H11Transport) and (to := plain_target(url)) is not None:
            response = own.send(to, method, headers, content, self._timeout)
        else:
            request = httpx.Request(method, url, params=params, headers=headers, content=content,
                                    extensions={"timeout": self._timeout})
            response = client._transport_for_url(request.url).handle_request(request)
        return read_bounded(response, body_limit)

    def _network_error(self, endpoint: str, exc: httpx.HTTPError, uncertain_after_send: bool) -> ApiError:
        # The message names the kind of failure only: httpx messages can carry URLs.
        kind = type(exc).__name__
        if endpoint == PUT:
            return UploadFailed(f"{endpoint}: {kind}")
        if uncertain_after_send and not isinstance(exc, NOT_SENT):
            return UncertainError(f"{endpoint}: {kind} after the request was sent; outcome unknown")
        return TransientError(f"{endpoint}: {kind}")

    def _wait_for_hold(self) -> None:
        """An API call waits while the key is held (a 429's Retry-After, for every application: the gate's
        hold), unless the client is cancelled. Presigned PUTs go to the storage and never wait."""
        if self.hold is None:
            return
        wait = self.hold()
        while wait > 0 and not self.cancel.wait(min(wait, RETRY_AFTER_CAP)):
            wait = self.hold()

    def _observe(self, endpoint: str, status: int | None, started: float, error: type[ApiError] | None,
                 code: str | None = None, *, size: int = 0, retry_after: float | None = None) -> None:
        if self.observer is not None:
            self.observer(RequestOutcome(endpoint, status, time.monotonic() - started, error, code, size,
                                         retry_after))


def _raise(exc: Exception) -> httpx.Response:
    raise exc

