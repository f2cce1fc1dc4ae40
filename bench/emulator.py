"""The emulator in its own process, with the options `nextmv-watcher fake-cloud` does not take.

As a program (`python -m bench.emulator --latency 0.02 --cert server.pem`) it runs
`watcher.fakecloud.FakeCloud` with injected per-request latency, optional TLS, a small
`max_stored_bytes`, and optionally a token-bucket rate limit on API calls (`--rate-limit`) or another
upload size limit (`--max-upload-bytes`; `Behaviour` fields, as `nextmv-watcher fake-cloud` sets them),
prints one JSON line `{"url": ..., "pid": ...}` and serves until SIGTERM.
`Emulator` starts such a process and reads its /_fake/ control endpoints.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, cast
from urllib.parse import urlsplit

from bench.common import API_KEY, PYTHON, REPO, BenchError, stop_process
from watcher.fakecloud import Behaviour, FakeCloud, Faults
from watcher.fakecloud.behaviour import checked_behaviour


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.emulator")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every API and upload request")
    p.add_argument("--cert", help="PEM file holding the server's key and certificate chain (enables HTTPS)")
    p.add_argument("--max-stored-bytes", type=int, default=1 << 20)
    p.add_argument("--api-key", default=API_KEY)
    p.add_argument("--rate-limit", type=float, metavar="R",
                   help="API calls (/v1/...) per second, token bucket of the emulator's default burst (10); "
                        "429 with Retry-After beyond it (default: no limit)")
    p.add_argument("--max-upload-bytes", type=int, metavar="N",
                   help="largest presigned PUT accepted (default: the emulator's, 500000000)")
    args = p.parse_args(argv)
    changes: dict[str, object] = {}
    if args.rate_limit is not None:
        changes["rate_limit_per_second"] = args.rate_limit
    if args.max_upload_bytes is not None:
        changes["max_upload_bytes"] = args.max_upload_bytes
    behaviour = Behaviour(**checked_behaviour(changes))  # type: ignore[arg-type]

    ctx = None
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cloud = FakeCloud(api_keys=[args.api_key], faults=Faults(latency_seconds=args.latency),
                      max_stored_bytes=args.max_stored_bytes, ssl_context=ctx, behaviour=behaviour)
    with cloud:
        print(json.dumps({"url": cloud.url, "pid": os.getpid()}), flush=True)
        while not stop.wait(0.5):
            pass
    return 0


class Emulator:
    """A `bench.emulator` process; `stats()`/`runs()` read its control endpoints. Use as a context manager."""

    def __init__(self, *, latency: float = 0.0, cert: Path | None = None, ca: Path | None = None,
                 max_stored_bytes: int = 1 << 20, rate_limit: float | None = None,
                 max_upload_bytes: int | None = None) -> None:
        self.latency = latency
        self.rate_limit = rate_limit
        self.max_upload_bytes = max_upload_bytes
        self.cert = cert
        self.ca = ca
        self.max_stored_bytes = max_stored_bytes
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.pid = 0
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> Emulator:
        cmd = [PYTHON, "-m", "bench.emulator", "--latency", str(self.latency),
               "--max-stored-bytes", str(self.max_stored_bytes)]
        if self.cert is not None:
            cmd += ["--cert", str(self.cert)]
        if self.rate_limit is not None:
            cmd += ["--rate-limit", str(self.rate_limit)]
        if self.max_upload_bytes is not None:
            cmd += ["--max-upload-bytes", str(self.max_upload_bytes)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE)  # noqa: S603 - our own argv
        try:
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], 20)
            line = self.proc.stdout.readline() if ready else b""
        except BaseException:
            stop_process(self.proc)
            raise
        if not line:
            stop_process(self.proc)
            raise BenchError("the emulator did not start within 20 s")
        info = json.loads(line)
        self.url, self.pid = info["url"], info["pid"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
        stop_process(self.proc)

    def _get(self, path: str, timeout: float = 30.0) -> Any:
        for attempt in range(2):
            if self._conn is None:
                parts = urlsplit(self.url)
                if parts.scheme == "https":
                    ctx = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
                    self._conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout,
                                                             context=ctx)
                else:
                    self._conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
            try:
                self._conn.request("GET", path)
                resp = self._conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise BenchError(f"emulator {path}: HTTP {resp.status}")
                return json.loads(body)
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def stats(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._get("/_fake/stats"))

    def runs(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self._get("/_fake/runs", timeout=120))

    def cpu(self) -> float:
        return float(self.stats()["cpu_seconds"])

    def count(self, endpoint: str) -> int:
        """Requests to `endpoint` ("put", "create_run", ...) answered 2xx so far."""
        by = self.stats()["by_endpoint"].get(endpoint, {})
        return sum(n for status, n in by.items() if status.startswith("2"))


if __name__ == "__main__":
    sys.exit(main())
