"""The arguments of every command (`nextmv-watcher --help`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from watcher import __version__
from watcher.cli.tools import FAKE_CLOUD_EPILOG

# The numeric `Faults` fields, each a `fake-cloud` flag (--error-rate X ...); `--faults JSON` sets any field.
FAULT_FLAGS = (
    "latency_seconds", "error_rate", "throttle_rate", "throttle_retry_after", "reset_rate", "reset_after_rate",
    "put_request_timeout_rate", "put_slow_down_rate", "put_signature_mismatch_rate", "url_lifetime_seconds",
    "post_delay_seconds", "list_lag_seconds",
)  # fmt: skip


def parser() -> argparse.ArgumentParser:
    """The arguments of every command."""
    p = argparse.ArgumentParser(prog="nextmv-watcher",
                                description="Track run folders in Nextmv Cloud, exactly once. See README.md.")
    p.add_argument("--version", action="version", version=f"nextmv-watcher {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_)

    def with_config(c: argparse.ArgumentParser) -> None:
        c.add_argument("--config", metavar="F", help="config file (default: $NEXTMV_WATCHER_CONFIG, "
                                                     "else /etc/nextmv-watcher/config.yaml)")

    with_config(cmd("run", "run the daemon in the foreground"))
    c = cmd("track", "track one folder now, ignoring completion rules")
    c.add_argument("folder", type=Path)
    c.add_argument("--application-id", metavar="A", help="application to track it in (default: its watched path's)")
    c.add_argument("--repost", action="store_true",
                   help="drop the folder's open intents and post again without looking the run up "
                        "(after an inconclusive look-up; may create a duplicate run; asks first)")
    c.add_argument("--yes", action="store_true", help="with --repost: do not ask for confirmation")
    with_config(c)
    c = cmd("scan", "list every folder under the watched paths with its state, uploading nothing")
    c.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    with_config(c)
    c = cmd("check", "validate the configuration and the API key, and that each application exists")
    c.add_argument("--offline", action="store_true",
                   help="check the configuration only: no API calls, and no API key needed (it is not checked)")
    c.add_argument("--roundtrip", action="store_true",
                   help="post a probe run to each application and check what exactly-once relies on: the "
                        "run accepted at the maximum name and description lengths, listed within the grace "
                        "period with its description verbatim, the list newest first (the probe stays in "
                        "the run history)")
    c.add_argument("--application", metavar="ID", help="with --roundtrip: only this application")
    c.add_argument("--yes", action="store_true", help="with --roundtrip: do not ask before posting")
    with_config(c)
    c = cmd("retry", "forget the failed marker of a folder (or of every failed folder) so that it is tracked again")
    c.add_argument("folder", type=Path, nargs="?", help="the failed folder (or --all-failed)")
    c.add_argument("--all-failed", action="store_true", help="every failed folder under the watched paths")
    c.add_argument("--application", metavar="A", help="with --all-failed: only folders of application A")
    with_config(c)
    c = cmd("forget", "remove a folder's tracked marker so that it is tracked again (as a new run)")
    c.add_argument("folder", type=Path)
    c.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    with_config(c)
    c = cmd("status", "show the running daemon's state (or, without one, a scan summary)")
    c.add_argument("--json", action="store_true", help="print JSON instead of text")
    with_config(c)
    c = cmd("sync", "track every complete folder once, without a daemon, then exit")
    c.add_argument("--timeout", type=_seconds, default=300.0, metavar="SECONDS",
                   help="give up after this long without progress (no folder finished, no byte uploaded: "
                        "the API unreachable or paused, folders claimed by another process); exit 1 naming "
                        "the wait (default 300; 0: no limit)")
    with_config(c)
    _fake_cloud(sub.add_parser(
        "fake-cloud", help="run a local emulator of the Nextmv runs API (for trying things out)",
        description="Run a local emulator of the Nextmv runs API and of S3's presigned uploads, "
                    "behaving like the real services by default.",
        epilog=FAKE_CLOUD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter))
    c = cmd("example", "print the example configuration or the systemd unit that came with this version")
    c.add_argument("what", choices=("config", "unit"),
                   help="config: the example /etc/nextmv-watcher/config.yaml; "
                        "unit: the systemd unit (nextmv-watcher.service)")
    c = cmd("demo", "run the emulator and the daemon on sample folders in a temporary directory")
    c.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
    return value


def _fake_cloud(c: argparse.ArgumentParser) -> None:
    c.add_argument("--port", type=int, default=8765)
    c.add_argument("--api-key", default="demo-key", help="the API key it accepts (default: demo-key)")
    c.add_argument("--application", dest="applications", action="append", metavar="ID",
                   help="a known application id (repeatable); others answer 404 (default: any id)")
    b = c.add_argument_group("service behaviour (defaults: the real service's, as far as known)")
    unset = argparse.SUPPRESS  # flags not given leave the field to its default
    b.add_argument("--list-order", choices=("newest", "oldest"), default=unset,
                   help="the run list's order (default: newest)")
    b.add_argument("--max-name-length", type=_limit, metavar="N", default=unset,
                   help="longest run name in characters (default: 128; 0 or none: no limit)")
    b.add_argument("--max-description-length", type=_limit, metavar="N", default=unset,
                   help="longest run description in characters (default: 256; 0 or none: no limit)")
    b.add_argument("--over-limit", choices=("refuse", "truncate"), default=unset,
                   help="a name or description over its limit: 400, or cut silently (default: refuse)")
    b.add_argument("--instance", dest="instances", action="append", metavar="ID", default=unset,
                   help="a known instance id (repeatable); others answer 404 on POST .../runs "
                        "(default: any id)")
    b.add_argument("--batch-experiment", dest="batch_experiments", action="append", metavar="ID",
                   default=unset, help="a known batch experiment id (repeatable; default: any id)")
    b.add_argument("--max-upload-bytes", type=_limit, metavar="N", default=unset,
                   help="largest presigned PUT (default: 500000000; 0 or none: no limit)")
    b.add_argument("--rate-limit", dest="rate_limit_per_second", type=_rate, metavar="R", default=unset,
                   help="API calls per second, token bucket; 429 with Retry-After (default: none)")
    b.add_argument("--rate-burst", dest="rate_limit_burst", type=int, metavar="B", default=unset,
                   help="the token bucket's size (default: 10)")
    f = c.add_argument_group("faults (default: none; see the fault fields below)")
    f.add_argument("--faults", metavar="JSON", help='a JSON object of fault fields, e.g. \'{"error_rate": 0.1}\'')
    for name in FAULT_FLAGS:
        f.add_argument("--" + name.replace("_", "-"), dest=f"fault_{name}", type=float, metavar="X", default=unset)
    f.add_argument("--seed", dest="fault_seed", type=int, metavar="N", default=unset, help="the faults' random seed")


def _limit(text: str) -> int | None:
    """A limit flag's value: a positive integer, or 0 or "none" for no limit."""
    if text.strip().lower() in ("0", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number or none: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _rate(text: str) -> float | None:
    if text.strip().lower() in ("0", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or none: {text!r}") from None
