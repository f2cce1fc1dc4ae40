"""`fake-cloud` and `demo`: the local emulator of the runs API, and the daemon on sample folders;
`example`: the example configuration and the systemd unit that the package carries."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from typing import Any

from watcher.cli.common import OK, USAGE, CommandError

# Behaviour fields set by `fake-cloud` flags of the same name (absent from the namespace unless given).
BEHAVIOUR_FLAGS = (
    "list_order", "max_name_length", "max_description_length", "over_limit", "instances",
    "batch_experiments", "max_upload_bytes", "rate_limit_per_second", "rate_limit_burst",
)  # fmt: skip

FAKE_CLOUD_EPILOG = """\
The presigned PUT answers as S3 does, with XML errors (<Error><Code>..</Code>..): chunked 501
NotImplemented, no length 411 MissingContentLength, an Authorization header 400 InvalidArgument,
over --max-upload-bytes 400 EntityTooLarge (answered before the body is read), an expired URL 403
AccessDenied, a bad signature 403 SignatureDoesNotMatch. API errors (/v1/...) are JSON.

fault fields (--faults JSON, or one flag each; rates are fractions 0..1 of the requests):
  latency_seconds, error_rate (5xx), throttle_rate (429 with and without Retry-After:
  throttle_retry_after), reset_rate (reset, not processed), reset_after_rate (processed, then
  reset), url_lifetime_seconds (900), post_delay_seconds (a run recorded, answered late),
  list_lag_seconds (a run listed only once that old), endpoints (the endpoints those faults hit,
  default all), seed; and on presigned PUTs only: put_request_timeout_rate (400 RequestTimeout),
  put_slow_down_rate (503 SlowDown), put_signature_mismatch_rate (403 SignatureDoesNotMatch).
  One random draw per request decides, in this order: reset, error, throttle, then the put_* rates.
  On PUTs, error_rate answers 500 InternalError, 503 SlowDown or a gateway's 502/504, and
  throttle_rate 503 SlowDown (S3 never answers 429).

admin endpoints (no auth, never faulted or rate-limited; JSON bodies; 400 with the reason if bad):
  GET  /_fake/runs       every run recorded: body, query, created_at, artifacts (size, sha256)
  GET  /_fake/stats      requests by endpoint and status, PUT errors by S3 code, connections, runs,
                         uploads
  GET  /_fake/faults     the faults in force
  POST /_fake/faults     {"<field>": value, ...}: change fault fields; answers them all
  GET  /_fake/behaviour  the service behaviour in force
  POST /_fake/behaviour  {"<field>": value, ...}: change behaviour fields (the flags above, with
                         underscores: list_order, max_name_length (null: no limit), ..., instances,
                         batch_experiments (lists, null: any), rate_limit_per_second, rate_limit_burst)
  POST /_fake/keys       {"api_keys": ["k1", ...]}: replace the accepted API keys
  POST /_fake/fail_next  {"endpoint": E, "status": S|null, "after_processing": false, "count": 1,
                         "retry_after": null, "code": null}: the next COUNT requests to E answer S
                         (null: reset the connection), after carrying them out with after_processing;
                         on put, code names the S3 error code (e.g. "ExpiredToken", "RequestTimeout")
  endpoints: get_application, uploadurl, put, create_run, list_runs, get_run

example: nextmv-watcher fake-cloud --list-order oldest --instance inst-1 --put-slow-down-rate 0.1
"""


def cmd_fake_cloud(args: argparse.Namespace) -> int:
    from watcher.fakecloud import Behaviour, Faults, serve
    from watcher.fakecloud.behaviour import checked_behaviour
    from watcher.fakecloud.faults import checked_changes

    try:
        behaviour = Behaviour(**checked_behaviour(
            {name: getattr(args, name) for name in BEHAVIOUR_FLAGS if hasattr(args, name)}))  # type: ignore[arg-type]
        faults = Faults(**checked_changes(_fault_changes(args)))  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise CommandError(USAGE, f"fake-cloud: {exc}") from None
    serve(args.port, [args.api_key], args.applications, faults, behaviour=behaviour)
    return OK


def _fault_changes(args: argparse.Namespace) -> dict[str, Any]:
    """--faults JSON, then the one-field flags over it."""
    changes: dict[str, Any] = {}
    if getattr(args, "faults", None) is not None:
        try:
            loaded = json.loads(args.faults)
        except ValueError:
            raise ValueError("--faults must be a JSON object of fault fields") from None
        if not isinstance(loaded, dict):
            raise TypeError("--faults must be a JSON object of fault fields")
        changes.update(loaded)
    changes.update({name[len("fault_"):]: value for name, value in vars(args).items() if name.startswith("fault_")})
    return changes


# `example WHAT` -> the file in watcher/data (symlinks, in the repository, to config.example.yaml and
# systemd/nextmv-watcher.service; the wheel stores the files themselves).
EXAMPLES = {"config": "config.example.yaml", "unit": "nextmv-watcher.service"}


def cmd_example(args: argparse.Namespace) -> int:
    """Print the example configuration or the systemd unit byte for byte, as installed with the package."""
    data = (resources.files("watcher") / "data" / EXAMPLES[args.what]).read_bytes()
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return OK


def cmd_demo(args: argparse.Namespace) -> int:
    from watcher.demo import run_demo

    return run_demo(keep=args.keep)
