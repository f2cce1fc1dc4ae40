"""The emulated Nextmv endpoints: routing, the rate limit, authentication and one function per endpoint.

Endpoints take a parsed `Request` and return a `Response` (messages.py); they never write to the
socket, so the HTTP layer can discard a real answer and inject a fault after processing. Behaviour
follows docs/protocol.md ("The five steps", "The run listing and paging") and the service rules of
behaviour.py; the upload PUT imitates an S3 presigned URL (presigned.py). API errors are JSON
`{"error": ...}`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from urllib.parse import unquote

from watcher.fakecloud import presigned
from watcher.fakecloud.behaviour import Behaviours
from watcher.fakecloud.body import BodyError
from watcher.fakecloud.faults import FaultInjector
from watcher.fakecloud.holds import Holds
from watcher.fakecloud.messages import Request, Response, error_response, json_response
from watcher.fakecloud.ratelimit import RateLimiter
from watcher.fakecloud.records import RequestLog
from watcher.fakecloud.signing import UrlSigner
from watcher.fakecloud.store import PAGE_SIZE, Store, run_item
from watcher.fakecloud.validation import ApiError

__all__ = ["Api", "Request", "Response", "error_response", "json_response", "route"]

MAX_JSON_BODY = 16 * 2**20


# (method, path after /v1/applications/{app}, with "*" for the run id) -> endpoint name
_API_ROUTES = {
    ("GET", ()): "get_application",
    ("POST", ("runs", "uploadurl")): "uploadurl",
    ("POST", ("runs",)): "create_run",
    ("GET", ("runs",)): "list_runs",
    ("GET", ("runs", "*", "metadata")): "get_run",
}


def route(method: str, path: str) -> tuple[str, tuple[str, ...]]:
    """(endpoint name, path parameters) for a request; "control" for /_fake/*, "unknown" otherwise."""
    if path.startswith("/_fake/"):
        return "control", ()
    parts = path.split("/")
    if len(parts) == 3 and parts[1] == "_uploads" and parts[2] and method == "PUT":
        return "put", (unquote(parts[2]),)
    if len(parts) < 4 or parts[1] != "v1" or parts[2] != "applications" or not parts[3]:
        return "unknown", ()
    params = [unquote(parts[3])]
    tail = tuple(parts[4:])
    if len(tail) == 3 and tail[1]:
        params.append(unquote(tail[1]))
        tail = (tail[0], "*", tail[2])
    endpoint = _API_ROUTES.get((method, tail))
    return (endpoint, tuple(params)) if endpoint is not None else ("unknown", ())


class Api:
    """The endpoints over shared state. `base_url` must be set once the server is bound."""

    def __init__(
        self,
        *,
        store: Store,
        faults: FaultInjector,
        log: RequestLog,
        api_keys: Iterable[str],
        applications: Iterable[str] | None,
        holds: Holds | None = None,
        behaviours: Behaviours | None = None,
    ) -> None:
        self.store = store
        self.faults = faults
        self.behaviours = behaviours if behaviours is not None else Behaviours()
        self._limiter = RateLimiter()
        self.holds = holds if holds is not None else Holds()
        self.log = log
        self.signer = UrlSigner()
        self.base_url = ""
        self._applications = None if applications is None else frozenset(applications)
        self._api_keys = frozenset[str]()
        self.set_api_keys(api_keys)
        self._endpoints = {
            "get_application": self._get_application,
            "uploadurl": self._upload_url,
            "create_run": self._create_run,
            "list_runs": self._list_runs,
            "get_run": self._get_run,
        }

    def set_api_keys(self, keys: Iterable[str]) -> None:
        """Replace the accepted keys (one atomic attribute swap, so no lock is needed)."""
        if isinstance(keys, str):
            raise TypeError("api_keys must be a collection of keys, not one string")
        checked = frozenset(keys)
        if any(not isinstance(key, str) or not key for key in checked):
            raise ValueError("API keys must be non-empty strings")
        self._api_keys = checked

    def handle(self, req: Request) -> Response:
        """Answer one non-control request. For /v1/*: the rate limit, auth, then the application check."""
        if req.endpoint == "put":
            rules = self.behaviours.current
            return presigned.put(req, store=self.store, signer=self.signer, max_upload_bytes=rules.max_upload_bytes)
        if req.path.startswith("/v1/"):
            refused = self._rate_limit() or self._authenticate(req.authorization)
            if refused is not None:
                return refused
        if req.endpoint == "unknown":
            return error_response(404, "not found")
        app = req.params[0]
        if self._applications is not None and app not in self._applications:
            return error_response(404, f"application {app!r} not found")
        try:
            return self._endpoints[req.endpoint](app, req)
        except ApiError as exc:
            return error_response(exc.status, exc.message)

    def _rate_limit(self) -> Response | None:
        rules = self.behaviours.current
        if rules.rate_limit_per_second is None:
            return None
        wait = self._limiter.take(rules.rate_limit_per_second, rules.rate_limit_burst)
        if wait is None:
            return None
        message = f"rate limit exceeded: at most {rules.rate_limit_per_second:g} requests per second"
        return error_response(429, message, (("Retry-After", str(wait)),))

    def _authenticate(self, authorization: str | None) -> Response | None:
        # The messages never repeat the presented key.
        if authorization is None:
            return error_response(401, "missing Authorization header")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return error_response(401, "the Authorization header must be 'Bearer <api key>'")
        if key.strip() not in self._api_keys:
            return error_response(401, "invalid API key")
        return None

    def _get_application(self, app: str, req: Request) -> Response:
        return json_response({"id": app, "name": app})

    def _upload_url(self, app: str, req: Request) -> Response:
        upload_id = self.store.new_upload(app)
        url = self.signer.url(self.base_url, upload_id, self.faults.current.url_lifetime_seconds)
        return json_response({"upload_id": upload_id, "upload_url": url})

    def _create_run(self, app: str, req: Request) -> Response:
        rules = self.behaviours.current
        instance = req.query.get("instance_id")
        if rules.instances is not None and instance is not None and instance != "latest" \
                and instance not in rules.instances:
            return error_response(404, f"instance not found: {instance!r}")
        try:
            raw = req.body.read(MAX_JSON_BODY)
        except BodyError:
            return error_response(413, "request body too large")
        try:
            body = json.loads(raw)
        except ValueError:
            return error_response(400, "the request body is not valid JSON")
        run = self.store.create_run(app, body, req.query, rules)
        delay = self.faults.current.post_delay_seconds
        if delay > 0:
            # Recorded but not yet answered: what a client sees when the API is slow to respond.
            time.sleep(delay)
        return json_response({"run_id": run.run_id})

    def _list_runs(self, app: str, req: Request) -> Response:
        lag = self.faults.current.list_lag_seconds
        oldest_first = self.behaviours.current.list_order == "oldest"
        if req.query.get("pagereturn", "").lower() != "true":
            runs, _ = self.store.list_runs(
                app, lag_seconds=lag, page_token=None, page_size=None, oldest_first=oldest_first
            )
            return json_response([run_item(run) for run in runs])
        runs, token = self.store.list_runs(
            app, lag_seconds=lag, page_token=req.query.get("pagetoken") or None, page_size=PAGE_SIZE,
            oldest_first=oldest_first,
        )
        return json_response({"runs": [run_item(run) for run in runs], "next_page_token": token})

    def _get_run(self, app: str, req: Request) -> Response:
        run_id = req.params[1]
        run = self.store.get_run(app, run_id)
        if run is None:
            return error_response(404, f"run {run_id!r} not found")
        return json_response(run_item(run))
