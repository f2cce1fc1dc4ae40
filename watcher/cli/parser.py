"""The arguments of every command (`nextmv-watcher --help`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from watcher import __version__


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
    with_config(c)
    c = cmd("scan", "list every folder under the watched paths with its state, uploading nothing")
    c.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    with_config(c)
    c = cmd("check", "validate the configuration and the API key, and that each application exists")
    c.add_argument("--offline", action="store_true", help="check the configuration only, no API calls")
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
    with_config(c)
    c = cmd("fake-cloud", "run a local emulator of the Nextmv runs API (for trying things out)")
    c.add_argument("--port", type=int, default=8765)
    c.add_argument("--api-key", default="demo-key", help="the API key it accepts (default: demo-key)")
    c = cmd("demo", "run the emulator and the daemon on sample folders in a temporary directory")
    c.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p
