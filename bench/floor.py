"""A reference point, not a target: the daemon's request pattern with nothing else around it.

`python -m bench.floor --url U --runs N --workers W` runs W threads on one pooled httpx client
(the daemon's HTTP stack, with its pool size of max(16, 4 W)); each run asks for two upload URLs
and PUTs two small bodies in parallel (the second artifact on a shared executor, as the daemon
does), then POSTs the run: R = 3 round trips. No files, no state, no logging. It shows what
Python and httpx reach on this machine for the same work, i.e. how much of the gap to W/(RxL) is
the daemon's own per-run overhead. Prints one JSON line: seconds, runs, user/sys CPU seconds.

`--sequential` is the floor of CPU per run (issue 13): one thread, one keep-alive client, the five
requests of a run one after the other (upload URL, PUT, upload URL, PUT, POST), no executor. Run
against the emulator with no added latency, its CPU per run is the pure cost of a run's requests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from bench.common import API_KEY, APP, PYTHON, REPO, BenchError
from bench.emulator import Emulator
from bench.folders import INPUT, OUTPUT


@dataclass
class Floor:
    latency: float
    workers: int
    n: int
    sequential: bool
    seconds: float
    user: float
    sys: float
    emu_cpu: float

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    @property
    def cpu_per_run(self) -> float:
        return (self.user + self.sys) / self.n


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.floor")
    p.add_argument("--url", required=True)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--sequential", action="store_true", help="one thread, a run's five requests in turn")
    args = p.parse_args(argv)
    if args.sequential:
        args.workers = 1
    pool = max(16, args.workers * 4)
    client = httpx.Client(limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool))
    auth = {"Authorization": f"Bearer {API_KEY}"}
    base = f"{args.url}/v1/applications/{APP}/runs"
    uploads = ThreadPoolExecutor(max_workers=max(4, args.workers * 2))
    left = iter(range(args.runs))
    lock = threading.Lock()
    errors: list[str] = []

    def upload(data: bytes) -> str:
        target = client.post(f"{base}/uploadurl", headers=auth).raise_for_status().json()
        client.put(target["upload_url"], content=data).raise_for_status()
        return str(target["upload_id"])

    def work() -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            try:
                if args.sequential:
                    input_id, output_id = upload(INPUT), upload(OUTPUT)
                else:
                    second = uploads.submit(upload, OUTPUT)
                    input_id, output_id = upload(INPUT), second.result()
                body: dict[str, Any] = {"upload_id": input_id, "name": "floor",
                                        "result": {"status": "succeeded", "output_upload_id": output_id}}
                client.post(base, json=body, headers=auth).raise_for_status()
            except httpx.HTTPError as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=work) for _ in range(args.workers)]
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    uploads.shutdown()
    client.close()
    print(json.dumps({"seconds": seconds, "runs": args.runs - len(errors), "errors": errors[:3],
                      "user": u1.ru_utime - u0.ru_utime, "sys": u1.ru_stime - u0.ru_stime}))
    return 0


def measure(n: int, latency: float, workers: int, *, timeout: float, sequential: bool = False) -> Floor:
    """W threads on one client (`sequential`: one thread, a run's requests in turn) against a fresh emulator."""
    with Emulator(latency=latency) as emu:
        emu_cpu0 = emu.cpu()
        proc = subprocess.run(  # noqa: S603 - our own argv
            [PYTHON, "-m", "bench.floor", "--url", emu.url, "--runs", str(n), "--workers", str(workers),
             *(["--sequential"] if sequential else [])],
            cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False, env=dict(os.environ))
        emu_cpu = emu.cpu() - emu_cpu0
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BenchError(f"bench.floor failed ({proc.returncode}): {proc.stderr[-1500:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["runs"] != n:
        raise BenchError(f"bench.floor: {n - result['runs']} runs failed, e.g. {result['errors'][:1]}")
    return Floor(latency, 1 if sequential else workers, n, sequential, result["seconds"], result["user"],
                 result["sys"], emu_cpu)


if __name__ == "__main__":
    sys.exit(_main())
