"""The command line: parse, call, print. `main(argv) -> exit code`; the only place that configures
logging or exits, and nothing else imports it (but `watcher/__main__.py`).

    parser.py    the arguments of every command
    common.py    CommandError, exit codes, loading the configuration and the key, the daemon's socket
    daemon.py    run, sync: the long-running commands
    folders.py   track, scan, retry, forget: one folder or every folder, on disk
    checks.py    check, status: is it configured right, what is it doing
    status.py    the daemon's status as text; a scan summary when no daemon runs
    hardening.py the key out of /proc/<pid>/environ; the host's link-protection sysctls
    tools.py     fake-cloud, demo, example (the example configuration and the unit, from the package)

A handler returns an exit code or raises `CommandError(code, message)`, printed once here.
Exit codes: 0 success, 1 an operational failure (a folder could not be tracked, the API refused
the key), 2 a usage or configuration error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from watcher.cli.checks import cmd_check, cmd_status
from watcher.cli.common import FAILED, USAGE, CommandError
from watcher.cli.daemon import cmd_run, cmd_sync
from watcher.cli.folders import cmd_forget, cmd_retry, cmd_scan, cmd_track
from watcher.cli.parser import parser
from watcher.cli.tools import cmd_demo, cmd_example, cmd_fake_cloud
from watcher.errors import ConfigError

COMMANDS: dict[str, Callable[[Any], int]] = {
    "run": cmd_run, "track": cmd_track, "scan": cmd_scan, "check": cmd_check, "retry": cmd_retry,
    "forget": cmd_forget, "status": cmd_status, "sync": cmd_sync, "fake-cloud": cmd_fake_cloud, "demo": cmd_demo,
    "example": cmd_example,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except CommandError as exc:
        print(f"nextmv-watcher: {exc.message}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"nextmv-watcher: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return FAILED


__all__ = ["main"]
