"""Run the benchmark of issue 5 and write the table: `python -m bench.run [--quick]` (or `make bench`).

Every measurement starts its own emulator process (bench.emulator) and the real daemon process,
waits with a time limit and stops both in `finally`. One failed measurement is reported as ERROR
in the table and the others still run. The full run writes bench/RESULTS.md; `--quick` (smaller N,
fewer configurations, 128 MiB instead of 1 GiB, a 10,000-folder backlog) writes
bench/.work/RESULTS-quick.md unless `--output` says otherwise.
"""

from __future__ import annotations

import argparse
import compileall
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import TypeVar

from bench import backlog, detection, floor, hostile_memory, idle, memory, ratelimit, sidebyside, throughput
from bench.certs import Tls, make_tls
from bench.common import REPO, WORK, machine
from bench.report import (
    KEEP_MARKER,
    Report,
    backlog_rows,
    cpu_row,
    detection_rows,
    floor_row,
    hostile_rows,
    idle_rows,
    kept_analysis,
    memory_rows,
    ratelimit_rows,
    side_by_side_row,
    throughput_rows,
)
from watcher.fakecloud import Behaviour

CPU_LATENCY = 0.02   # CPU per run is judged at 20 ms (issue 13), against the floor at 0 ms
SECTIONS = ("cpu", "throughput", "latency", "ratelimit", "detection", "memory", "backlog", "idle", "hostile")
T = TypeVar("T")
RATE_BURST = Behaviour().rate_limit_burst   # the emulator's default token-bucket size, which the case keeps


@dataclass(frozen=True)
class Plan:
    n: int
    latencies: tuple[float, ...]
    https: tuple[bool, ...]
    worker_counts: tuple[int, ...]      # tried besides the default, for "best worker count"
    detect_n: int
    detect_gap: float
    mem_size: int
    mem_parts: int
    backlog_total: int
    backlog_pending: int
    backlog_timeout: float
    idle_folders: int
    idle_window: float
    profile: bool
    hostile_workers: int = 64           # = hostile folders tracked at once (the default `workers`, all in flight)
    hostile_json_bytes: int = 16 << 20  # each of statistics/assets/metrics.json: the cap of issue 8
    hostile_processes: tuple[int, int] | None = (1, 32)   # a reference row: processes, workers (None: none)
    slow_latency: float = 0.1           # "latency": the daemon (plan.n runs) against the SDK loop at 100 ms
    slow_sdk_n: int = 50                # the SDK loop's runs at that latency (about 2 runs/s: enough for its rate)
    slow_need: float = 50.0             # the target: at least this many times the SDK loop's rate (issue 13)
    ratelimit_n: int = 400              # "ratelimit": runs tracked under the limit
    idle_systemd_folders: int = 100_000  # "idle" again as systemd runs it (notify socket, watchdog)
    side_by_side: int = 2               # daemons side by side for the reference rows at 0 and 100 ms (0: none)
    rate_limit: float = 30.0            # API calls per second the emulator allows (burst: its default, 10)
    cpu_pairs: int = 3                  # "cpu": floor and daemon measured back to back, this many times


FULL = Plan(n=500, latencies=(0.0, 0.02), https=(False, True), worker_counts=(16, 32), detect_n=200,
            detect_gap=0.05, mem_size=1 << 30, mem_parts=16, backlog_total=100_000, backlog_pending=10_000,
            backlog_timeout=420, idle_folders=10_000, idle_window=60, profile=True)
QUICK = Plan(n=100, latencies=(0.0, 0.02), https=(False, True), worker_counts=(), detect_n=50, detect_gap=0.05,
             mem_size=128 << 20, mem_parts=16, backlog_total=10_000, backlog_pending=1_000, backlog_timeout=120,
             idle_folders=2_000, idle_window=15, profile=False, hostile_json_bytes=4 << 20, slow_sdk_n=20,
             ratelimit_n=100, idle_systemd_folders=10_000, hostile_processes=None, cpu_pairs=1)


def say(text: str) -> None:
    print(text, flush=True)


def attempt(report: Report, label: str, fn: Callable[[], T]) -> T | None:
    """Run one measurement; on failure note it in the report and carry on."""
    started = time.monotonic()
    try:
        result = fn()
    except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
        say(f"  {label}: FAILED after {time.monotonic() - started:.0f} s: {str(exc).splitlines()[0][:200]}")
        report.error(label, exc)
        return None
    say(f"  {label}: done in {time.monotonic() - started:.0f} s")
    return result


def run_cpu(plan: Plan, report: Report) -> None:
    """The daemon's CPU per run at 20 ms against the floor, in pairs measured back to back (this machine's
    speed drifts by a third within minutes); the table gives the median pair and the notes every pair."""
    tls = make_tls()
    n = plan.n
    pairs: list[tuple[floor.Floor, throughput.Throughput]] = []
    for i in range(1, plan.cpu_pairs + 1):
        f = attempt(report, f"floor {i}: one thread, a run's five requests in turn, 0 ms HTTP",
                    partial(floor.measure, n, 0.0, 1, timeout=60 + n * 0.5, sequential=True))
        t = attempt(report, f"daemon {i}: {CPU_LATENCY * 1000:.0f} ms HTTP, defaults",
                    partial(throughput.daemon_run, n, CPU_LATENCY, None, tls.ca, None, timeout=60 + n * 0.5))
        if f and t and t.cpu_per_run_after_startup:
            say(f"    pair {i}: floor {1000 * f.cpu_per_run:.2f} ms, daemon {1000 * t.cpu_per_run_after_startup:.2f} "
                f"ms of CPU per run ({t.check})")
            pairs.append((f, t))
    cpu_row(report, pairs)


def run_throughput(plan: Plan, report: Report) -> None:
    tls = make_tls()
    n = plan.n
    for latency in plan.latencies:
        for https in plan.https:
            label = f"{latency * 1000:.0f} ms {'HTTPS' if https else 'HTTP'}"
            t = tls if https else None
            sdk_timeout = 60 + n * (8 * latency + 0.2)
            sdk = attempt(report, f"SDK loop {label}",
                          partial(throughput.sdk_run, n, latency, t, tls.ca, timeout=sdk_timeout))
            if sdk:
                say(f"    SDK: {sdk.rate:.1f} runs/s ({sdk.check})")
            default: throughput.Throughput | None = None
            runs: list[throughput.Throughput] = []
            for workers in (None, *plan.worker_counts):
                got = attempt(report, f"daemon {label} workers={workers or 'default'}",
                              partial(throughput.daemon_run, n, latency, t, tls.ca, workers, timeout=60 + n * 0.5))
                if got:
                    say(f"    daemon W={got.workers}: {got.rate:.1f} runs/s, steady {got.steady_rate or 0:.1f} "
                        f"({got.check}); daemon CPU {got.own_cpu:.1f} s, emulator CPU {got.emu_cpu:.1f} s "
                        f"in {got.seconds:.1f} s")
                    runs.append(got)
                    if workers is None:
                        default = got
            best = max(runs, key=lambda r: r.rate) if len(runs) > 1 else None
            tried = "/".join(str(r.workers) for r in runs)
            throughput_rows(report, default, best, sdk, label, tried)
            if latency == 0.0:
                run_side_by_side(plan, report, latency, t, sdk)
            if not https:
                workers = default.workers if default and default.workers else 8
                floor_run = attempt(report, f"reference bare httpx {label}",
                                    partial(floor.measure, n, latency, workers, timeout=60 + n * 0.5))
                if floor_run:
                    say(f"    bare httpx W={workers}: {floor_run.rate:.1f} runs/s")
                    floor_row(report, floor_run)
    if plan.profile:
        for latency, gil in ((0.02, False), (0.0, True)):
            label = f"profile {latency * 1000:.0f} ms HTTP, defaults{' (--gil)' if gil else ''}"
            out = WORK / f"profile-{int(latency * 1000)}ms{'-gil' if gil else ''}.txt"
            profiled = attempt(report, label, partial(throughput.daemon_run, n, latency, None, tls.ca, None,
                                                      timeout=60 + n * 0.5, profile=out, gil=gil))
            if profiled and profiled.profile:
                report.profiles.append((f"{label}: {profiled.rate:.1f} runs/s while profiled; raw stacks in "
                                        f"{out.relative_to(REPO)}", profiled.profile))


def run_side_by_side(plan: Plan, report: Report, latency: float, tls: Tls | None,
                     sdk: throughput.Throughput | None) -> None:
    """The reference rows: `plan.side_by_side` daemons at once, each on its share of the N folders."""
    if plan.side_by_side < 2:
        return
    label = f"{latency * 1000:.0f} ms {'HTTPS' if tls else 'HTTP'}"
    got = attempt(report, f"reference {plan.side_by_side} daemons side by side {label}",
                  partial(sidebyside.measure, plan.n, latency, tls, make_tls().ca, plan.side_by_side,
                          timeout=60 + plan.n * 0.5))
    if got:
        say(f"    {got.k} daemons side by side: {got.rate:.1f} runs/s, steady {got.steady_rate or 0:.1f} ({got.check})")
        side_by_side_row(report, got, sdk)


def run_latency(plan: Plan, report: Report) -> None:
    """The daemon at its defaults against the SDK loop with `slow_latency` on every API call and PUT."""
    tls = make_tls()
    latency, n, sdk_n = plan.slow_latency, plan.n, plan.slow_sdk_n
    label = f"{latency * 1000:.0f} ms HTTP"
    sdk = attempt(report, f"SDK loop {label} ({sdk_n} runs)",
                  partial(throughput.sdk_run, sdk_n, latency, None, tls.ca, timeout=60 + sdk_n * (8 * latency + 0.2)))
    if sdk:
        say(f"    SDK: {sdk.rate:.2f} runs/s over {sdk_n} runs ({sdk.check})")
    got = attempt(report, f"daemon {label} workers=default",
                  partial(throughput.daemon_run, n, latency, None, tls.ca, None, timeout=60 + n * 0.5))
    if got:
        flight = f", in flight peak {got.flight.peak} mean {got.flight.mean:.1f}" if got.flight else ""
        times = f" = {got.rate / sdk.rate:.1f}x SDK" if sdk else ""
        say(f"    daemon W={got.workers}: {got.rate:.1f} runs/s{times}, steady {got.steady_rate or 0:.1f} "
            f"({got.check}){flight}")
    throughput_rows(report, got, None, sdk, label, need=plan.slow_need)
    run_side_by_side(plan, report, latency, None, sdk)
    if got and got.flight:
        report.notes.append(f"Throughput {label}, defaults: folders in flight over time (the most in each 2 s from "
                            f"the first attempt, from the daemon's log): {got.flight.timeline}.")


def run_ratelimit(plan: Plan, report: Report) -> None:
    """The daemon at its defaults under a token-bucket limit on API calls."""
    n = plan.ratelimit_n
    got = attempt(report, f"rate limit {plan.rate_limit:g}/s",
                  partial(ratelimit.measure, n, plan.rate_limit, timeout=60 + 3 * n / plan.rate_limit * 4))
    if got:
        say(f"    {got.rate:.1f} runs/s, steady {got.steady_rate or 0:.1f} ({got.check}); {got.api.throttled} of "
            f"{got.api.calls} API calls answered 429 ({100 * got.throttled_share:.1f}%); {got.failed} failed, "
            f"{got.retrying} folder_retrying; concurrency limit highest {got.peak_limit}")
        say(f"    429s: {got.timeline}")
        say(f"    limit: {got.limit_series}")
        say(f"    pacing: {got.pacing}")
        ratelimit_rows(report, got, burst=RATE_BURST)


def run_detection(plan: Plan, report: Report) -> None:
    for mode in ("inotify", "polling"):
        got = attempt(report, f"detection {mode}",
                      partial(detection.measure, plan.detect_n, plan.detect_gap, mode, timeout=60))
        if got:
            say(f"    {mode}: p50 {got.p50_ms} ms, p99 {got.p99_ms} ms {got.note}")
            detection_rows(report, got)
            if got.note and got.supported:
                report.notes.append(f"Detection ({mode}): {got.note}")


def run_memory(plan: Plan, report: Report) -> None:
    timeout = 120 + plan.mem_size / 2**20  # a generous MiB per second
    f = attempt(report, "memory daemon file", lambda: memory.daemon_peak("file", plan.mem_size, plan.mem_parts,
                                                                         timeout=timeout))
    d = attempt(report, "memory daemon dir", lambda: memory.daemon_peak("dir", plan.mem_size, plan.mem_parts,
                                                                        timeout=timeout))
    s = attempt(report, "memory SDK file", lambda: memory.sdk_peak(plan.mem_size, timeout=timeout))
    for m in (f, d, s):
        if m:
            say(f"    {m.who} {m.what}: peak {m.peak_mb:.0f} MB in {m.seconds:.1f} s ({m.check})")
    memory_rows(report, f, d, s, plan.mem_size, plan.mem_parts)


def run_backlog(plan: Plan, report: Report) -> None:
    got = attempt(report, "backlog", lambda: backlog.measure(plan.backlog_total, plan.backlog_pending,
                                                             timeout=plan.backlog_timeout, log=say))
    if got:
        say(f"    first PUT {got.first_put} s, scan {got.scan_seconds} s, peak {got.peak_mb} MB, "
            f"{got.tracked}/{got.pending} tracked ({got.check})")
        backlog_rows(report, got)


def run_idle(plan: Plan, report: Report) -> None:
    for folders, systemd in ((plan.idle_folders, False), (plan.idle_systemd_folders, True)):
        got = attempt(report, "idle", partial(idle.measure, folders, plan.idle_window, systemd=systemd, log=say))
        if got:
            say(f"    {got.cpu:.2f} CPU s over {got.window:.0f} s = {got.per_minute:.3f} s/min, {got.requests} requests"
                f"{'' if got.notifications is None else f', {got.notifications} notify datagrams'}")
            idle_rows(report, got)


def run_hostile(plan: Plan, report: Report) -> None:
    got = attempt(report, "hostile memory", lambda: hostile_memory.measure(
        plan.hostile_workers, plan.hostile_json_bytes, plan.backlog_total, plan.backlog_pending,
        timeout=plan.backlog_timeout + 300, log=say))
    if got:
        say(f"    peak {got.peak_mb} MB at {got.peak_at} s; scan done at {got.scan_done_at} s, hostile folders "
            f"tracked at {got.hostile_done_at} s ({got.check}); unit MemoryMax {got.memory_max_mb} MB")
        hostile_rows(report, got)
    if plan.hostile_processes is None:
        return
    processes, workers = plan.hostile_processes
    got = attempt(report, "hostile memory, processes", lambda: hostile_memory.measure(
        workers, plan.hostile_json_bytes, plan.backlog_total, plan.backlog_pending,
        timeout=plan.backlog_timeout + 300, processes=processes, log=say))
    if got:
        say(f"    processes {processes}, workers {workers}: peaks added up {got.peak_mb} MB ({got.check})")
        hostile_rows(report, got)


def versions() -> str:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,  # noqa: S603,S607
                                  timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "watcher")
    try:
        sdk = version("nextmv")
    except PackageNotFoundError:
        sdk = "not installed"
    return (f"daemon: watcher/ at git {commit}{' with uncommitted changes in watcher/' if dirty else ''}; "
            f"SDK: nextmv {sdk}")


def render(plan: Plan, report: Report, argv: list[str], quick: bool, seconds: float, output: Path) -> str:
    m = machine()
    cmd = "make bench" + (f" BENCH_ARGS={shlex.quote(' '.join(argv))}" if argv else "")
    lines = [
        "# Benchmark: nextmv-watcher against the official SDK (issue 5)",
        "",
        f"- Command: `{cmd}` (runs `.venv/bin/python -m bench.run{' ' + ' '.join(argv) if argv else ''}`"
        f" after installing bench/requirements.txt); took {seconds / 60:.1f} min.",
        f"- Machine: {m.line()}.",
        f"- Versions: {versions()}.",
        f"- Mode: {'QUICK smoke run: smaller sizes, NOT the figures of the targets' if quick else 'full'}. "
        f"N = {plan.n} small runs per throughput figure; detection over {plan.detect_n} folders "
        f"({plan.detect_gap * 1000:.0f} ms apart); memory with {plan.mem_size / 2**20:.0f} MiB; backlog of "
        f"{plan.backlog_total:,} folders ({plan.backlog_pending:,} pending); idle over {plan.idle_window:.0f} s "
        f"with {plan.idle_folders:,} tracked folders.",
        "",
        report.table(),
        "",
        "How to read it: runs/s for the daemon count from spawning the process (interpreter start-up, imports of",
        "the byte-compiled checkout, as a wheel installs it, and the start-up scan included) to the N-th",
        "`.nextmv-tracked.json`; *steady* is the rate between the first",
        "and the last run created at the emulator. The SDK loop is timed from its first `track_run` to its last",
        "(imports excluded) and reads input.json/output.json as a user's script would. W/(RxL) uses R = 3",
        "round trips (upload URL, PUT with a run's artifacts in parallel, POST); W is `workers`, the bound, and the",
        "folders actually in flight (those rows and the rate-limit rows) count from a folder's `folder_complete`",
        "event to the event ending its attempt (`run_tracked`) in the daemon's log. At 100 ms the SDK loop tracks",
        f"{plan.slow_sdk_n} runs, not N. Under the rate limit, API calls are the requests to /v1 (look-ups included),",
        "not the presigned PUTs; its runs/s counts to the N-th attempt ended (tracked or failed).",
        "Emulator CPU is the CPU time",
        "of the emulator process during the measurement (\"of a core\": divided by the wall time); the emulator",
        "is a threaded Python server, so near 100% of a core it would be the bottleneck. Every throughput run",
        "is checked: N markers on disk, exactly N runs at the emulator, N distinct names (`[check: ...]`",
        "otherwise). Detection latency is the emulator's `created_at` of the run minus the time the marker",
        "file was closed (same clock), so it includes the two uploads before the POST. Peak RSS is VmHWM.",
        "The *Reference* rows are not the daemon: `bench/floor.py` drives the same three round trips per run",
        "from W threads on one pooled httpx client, with no files, state or logging, to show what Python and",
        "httpx reach on this machine and so how much of any gap is the daemon's own per-run work. Daemon CPU",
        "per run is the daemon's total CPU (start-up included) divided by N.",
    ]
    if report.notes:
        lines += ["", "## Notes from this run", ""]
        lines += [f"- {note}" for note in report.notes]
    if report.profiles:
        lines += ["", "## Profiles (py-spy, separate runs, not the measured ones)", ""]
        for title, text in report.profiles:
            lines += [f"<details><summary>{title}</summary>", "", "```", text, "```", "", "</details>", ""]
    kept = kept_analysis(output)
    lines += ["", KEEP_MARKER, ""]
    if kept:
        lines += [kept, ""]
    return "\n".join(lines)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # SIGTERM (and SIGINT, which a background job inherits as ignored) unwind through the `with`
    # blocks, so the emulator and daemon processes of the measurement in progress are stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--quick", action="store_true", help="a fast smoke run (about 3 minutes)")
    p.add_argument("--only", help=f"comma-separated sections to run: {','.join(SECTIONS)}")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    p.add_argument("--hostile-json-mib", type=float, metavar="MIB",
                   help="size of each worst-case JSON file in the hostile section (default: 16, --quick: 4)")
    p.add_argument("--hostile-workers", type=int, metavar="N",
                   help="workers, and hostile folders, in the hostile section (default: 64, the daemon's default, "
                        "in its default processes); a second row has processes: 1 with 32")
    p.add_argument("--output", type=Path, help="where to write the Markdown (default: bench/RESULTS.md, "
                                               "or bench/.work/RESULTS-quick.md with --quick)")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.no_profile:
        plan = Plan(**{**plan.__dict__, "profile": False})
    if args.hostile_json_mib:
        plan = Plan(**{**plan.__dict__, "hostile_json_bytes": int(args.hostile_json_mib * 2**20)})
    if args.hostile_workers:
        plan = Plan(**{**plan.__dict__, "hostile_workers": args.hostile_workers})
    sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    output = args.output or (WORK / "RESULTS-quick.md" if args.quick else REPO / "bench" / "RESULTS.md")
    WORK.mkdir(parents=True, exist_ok=True)
    # The daemon runs from this checkout as an installed wheel would, byte-compiled (pip compiles at
    # install): with PYTHONDONTWRITEBYTECODE set (as on these machines) a checkout's modules would be
    # compiled again at every start of every process, 0.15 s each, counted in runs/s from spawning.
    compileall.compile_dir(str(REPO / "watcher"), quiet=1)

    report = Report()
    started = time.monotonic()
    steps = {"cpu": run_cpu, "throughput": run_throughput, "latency": run_latency, "ratelimit": run_ratelimit,
             "detection": run_detection, "memory": run_memory,
             "backlog": run_backlog, "idle": run_idle, "hostile": run_hostile}
    for name in sections:
        say(f"== {name} ({time.monotonic() - started:.0f} s elapsed)")
        steps[name](plan, report)
    seconds = time.monotonic() - started
    text = render(plan, report, argv, args.quick, seconds, output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    say("")
    say(report.table())
    for note in report.notes:
        say(f"note: {note[:400]}")
    say(f"\nwritten to {output} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
