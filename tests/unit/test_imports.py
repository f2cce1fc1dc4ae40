"""What a daemon process imports at start: every process of `processes: N` pays for it, and `make bench`
measures runs/s from the daemon's spawn."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import watcher.cli, watcher.daemon.service, watcher.daemon.supervisor
print(sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'pygments'}))
"""

CONSOLE = """
import io
from watcher import logs
import structlog
out = io.StringIO()
logs.configure("info", "console", stream=out)
try:
    raise ValueError("the cause")
except ValueError:
    structlog.get_logger("t").exception("it_failed")
print(out.getvalue())
"""


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_the_daemon_does_not_import_rich() -> None:
    # structlog imports rich (and pygments) for tracebacks that watcher.logs never renders with it:
    # 60-80 ms of each process's start. `sync` imports it for its progress bar.
    assert run(PROBE).strip() == "[]"


def test_the_console_format_still_shows_a_trace() -> None:
    text = run(CONSOLE)
    assert "it_failed" in text and "Traceback" in text and "ValueError: the cause" in text, text
