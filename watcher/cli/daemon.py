"""`run` (the daemon in the foreground) and `sync` (every complete folder once, then exit)."""

from __future__ import annotations

import argparse
import sys
from types import FrameType
from typing import TextIO, cast

from watcher import logs
from watcher.cli.common import FAILED, OK, api_key, load, log
from watcher.config import LOG_LEVELS


def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from watcher.daemon.service import Service

    config = load(args)
    logs.configure(config.logging.level, config.logging.format)
    # Threads that come back from I/O (the start-up scan's stats, HTTP answers) wait for the GIL at most
    # this long instead of the default 5 ms; measured: the 100,000-folder scan under load goes faster.
    sys.setswitchinterval(0.001)
    service = Service(config, api_key(config, scrub_env=True),
                      on_reload=lambda new: logs.configure(new.logging.level, new.logging.format))

    def on_stop(signum: int, frame: FrameType | None) -> None:
        service.request_stop()

    def on_reload(signum: int, frame: FrameType | None) -> None:
        service.request_reload()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    try:
        service.start()
    except OSError as exc:
        log.error("start_failed", error=str(exc))
        service.shutdown()
        return FAILED
    service.run()
    return OK


def cmd_sync(args: argparse.Namespace) -> int:
    from watcher.daemon.sync import run_sync

    config = load(args)
    if sys.stderr.isatty():
        # The progress bar owns the terminal: only warnings and errors are logged, above it.
        level = config.logging.level if LOG_LEVELS.index(config.logging.level) >= LOG_LEVELS.index("warning") \
            else "warning"
        logs.configure(level, config.logging.format, stream=cast(TextIO, _CurrentStderr()))
    else:
        logs.configure(config.logging.level, config.logging.format)
    return run_sync(config, api_key(config), out=sys.stdout, err=sys.stderr, timeout=args.timeout)


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time, so that log lines go through the progress bar's
    redirection and appear above it instead of tearing it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()
