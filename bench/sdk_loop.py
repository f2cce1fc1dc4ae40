"""The baseline: the official SDK (`nextmv`) tracking runs in a sequential loop, in its own process.

`python -m bench.sdk_loop loop --root DIR` tracks every run folder of DIR, in name order, the way a
user's script would: read input.json and output.json, `Application.track_run(TrackedRun(...))`.
`python -m bench.sdk_loop big --file F` tracks one run whose output is the file F read into memory.
The endpoint and key come from NEXTMV_ENDPOINT / NEXTMV_API_KEY (REQUESTS_CA_BUNDLE for HTTPS).
Prints one JSON line: seconds (first track_run to last), tracked, cpu_seconds, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import nextmv
from nextmv import TrackedRun, TrackedRunStatus
from nextmv.cloud import Application, Client


def _usage() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024  # Linux: ru_maxrss in KiB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.sdk_loop")
    p.add_argument("mode", choices=["loop", "big"])
    p.add_argument("--root", type=Path)
    p.add_argument("--file", type=Path)
    p.add_argument("--app", default="bench-app")
    args = p.parse_args(argv)

    client = Client(api_key=os.environ["NEXTMV_API_KEY"], url=os.environ["NEXTMV_ENDPOINT"])
    app = Application(id=args.app, client=client)
    tracked = 0
    errors: list[str] = []
    cpu0, _ = _usage()
    started = time.perf_counter()
    if args.mode == "loop":
        for folder in sorted(p for p in args.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                run = TrackedRun(
                    status=TrackedRunStatus.SUCCEEDED,
                    input=json.loads((folder / "input.json").read_bytes()),
                    output=json.loads((folder / "output.json").read_bytes()),
                    name=folder.name,
                )
                app.track_run(run)
                tracked += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported, the loop goes on
                errors.append(f"{folder.name}: {type(exc).__name__}: {exc}"[:300])
    else:
        # The least memory a caller can get away with: the file as one str, handed over as the output.
        text = args.file.read_text()
        run = TrackedRun(status=TrackedRunStatus.SUCCEEDED, input={"big": True}, output=text, name=args.file.name)
        app.track_run(run)
        tracked = 1
    seconds = time.perf_counter() - started
    cpu1, peak = _usage()
    print(json.dumps({"seconds": seconds, "tracked": tracked, "errors": errors[:5], "error_count": len(errors),
                      "cpu_seconds": cpu1 - cpu0, "peak_rss_mb": peak, "sdk_version": nextmv.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
