"""`fake-cloud` and `demo`: the local emulator of the runs API, and the daemon on sample folders."""

from __future__ import annotations

import argparse

from watcher.cli.common import OK


def cmd_fake_cloud(args: argparse.Namespace) -> int:
    from watcher.fakecloud import serve

    serve(args.port, [args.api_key], None, None)
    return OK


def cmd_demo(args: argparse.Namespace) -> int:
    from watcher.demo import run_demo

    return run_demo(keep=args.keep)
