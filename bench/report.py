"""The one table: every figure next to its target from issue 5, the SDK beside the daemon, and the
emulator's CPU beside each figure; rendered as Markdown for the terminal and bench/RESULTS.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.backlog import Backlog
from bench.detection import Detection
from bench.floor import Floor
from bench.hostile_memory import Hostile
from bench.idle import Idle
from bench.memory import Memory, upload_limit
from bench.ratelimit import RateLimited
from bench.sidebyside import SideBySide
from bench.throughput import ROUND_TRIPS, Throughput

MET, MISSED, NO_TARGET, NOT_MEASURED = "met", "**MISSED**", "-", "n/a"
KEEP_MARKER = "<!-- Everything below this line is hand-written and kept when the file is regenerated. -->"


@dataclass
class Row:
    measurement: str
    daemon: str
    sdk: str = "-"
    target: str = "-"
    result: str = NO_TARGET
    emulator: str = "-"
    daemon_cpu: str = "-"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[tuple[str, str]] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def error(self, measurement: str, exc: BaseException) -> None:
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        self.rows.append(Row(measurement, f"ERROR: {text}", result="ERROR"))
        self.notes.append(f"{measurement}: {type(exc).__name__}: {str(exc).strip()[:1500]}")

    def table(self) -> str:
        head = ["Measurement", "Daemon", "SDK (official, loop)", "Target", "Result", "Emulator CPU",
                "Daemon CPU"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for r in self.rows:
            cells = [r.measurement, r.daemon, r.sdk, r.target, r.result, r.emulator, r.daemon_cpu]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines)


def verdict(ok: bool) -> str:
    return MET if ok else MISSED


def cpu(seconds: float, wall: float) -> str:
    """CPU seconds and the share of one core over the wall time."""
    return f"{seconds:.1f} s ({100 * seconds / wall:.0f}% of a core)" if wall > 0 else f"{seconds:.1f} s"


def per_run(t: Throughput) -> str:
    """The daemon's CPU: total, share of a core, per run, user + system."""
    text = cpu(t.own_cpu, t.seconds) + f", {1000 * t.own_cpu / t.n:.1f} ms/run"
    if t.user_sys:
        text += f" (user {t.user_sys[0]:.1f} s + sys {t.user_sys[1]:.1f} s)"
    return text


def _rate(t: Throughput) -> str:
    steady = f", steady {t.steady_rate:.0f}" if t.steady_rate else ""
    flag = "" if t.check == "ok" else f" [check: {t.check}]"
    return f"{t.rate:.1f} runs/s{steady}{flag}"


def _flight(t: Throughput) -> str:
    """The concurrency reached (folders in flight, from the daemon's log), and the share of its own bound."""
    f = t.flight
    if f is None:
        return ""
    reached = f.mean / (ROUND_TRIPS * t.latency)
    steady = t.steady_rate or t.rate
    return (f"; folders in flight: peak {f.peak} of W={t.workers}, mean {f.mean:.1f} (= {reached:.0f} runs/s at "
            f"3x{t.latency * 1000:.0f} ms; steady is {100 * steady / reached:.0f}% of it)" if reached > 0 else "")


def throughput_rows(report: Report, default: Throughput | None, best: Throughput | None,
                    sdk: Throughput | None, label: str, tried: str = "", need: float | None = None) -> None:
    """Rows for one latency/scheme: defaults vs SDK (target: `need` x, else issue 5's by latency and scheme),
    W/(RxL) where there is latency, best worker count."""
    if default is not None and need is None:
        need = 10.0 if default.latency > 0 else 4.0 if default.https else 2.0
    emu_sdk = f"; SDK run: {cpu(sdk.emu_cpu, sdk.seconds)}" if sdk else ""
    sdk_n = f" ({sdk.n} runs)" if sdk and default and sdk.n != default.n else ""
    sdk_cell = f"{sdk.rate:.1f} runs/s{sdk_n}" + ("" if sdk.check == "ok" else f" [check: {sdk.check}]") if sdk \
        else "ERROR (see notes)"
    best_is_default = best is not None and best is default
    if default is not None:
        ratio = default.rate / sdk.rate if sdk else None
        daemon = _rate(default) + (f" = **{ratio:.1f}x** SDK" if ratio else "")
        ok = ratio is not None and need is not None and ratio >= need and default.check == "ok"
        also = f"; also the best of W = {tried}" if best_is_default else ""
        report.add(Row(f"Throughput {label}, defaults (W={default.workers}{also})", daemon, sdk_cell,
                       f">= {need:g}x SDK", verdict(ok) if ratio is not None else NOT_MEASURED,
                       cpu(default.emu_cpu, default.seconds) + emu_sdk, per_run(default)))
        limit = default.limit()
        if limit:
            frac = default.rate / limit
            report.add(Row(f"Throughput {label}, defaults: share of W/(RxL) = {default.workers}/(3x"
                           f"{default.latency * 1000:.0f} ms) = {limit:.0f} runs/s",
                           f"**{100 * frac:.0f}%** (steady {100 * (default.steady_rate or 0) / limit:.0f}%)"
                           + _flight(default),
                           "-", ">= 80%", verdict(frac >= 0.8), "-", "-"))
    if best is not None and not best_is_default:
        ratio = best.rate / sdk.rate if sdk else None
        best_limit = best.limit()
        extra = f"; {100 * best.rate / best_limit:.0f}% of W/(RxL)" if best_limit else ""
        report.add(Row(f"Throughput {label}, best of W = {tried} (W={best.workers})",
                       _rate(best) + (f" = {ratio:.1f}x SDK" if ratio else "") + extra, sdk_cell, "-", NO_TARGET,
                       cpu(best.emu_cpu, best.seconds), per_run(best)))


def cpu_row(report: Report, pairs: list[tuple[Floor, Throughput]]) -> None:
    """The daemon's CPU per run after its start-up scan (at 20 ms) against the floor measured just before
    it (issue 13: <= 2x): the median of the pairs in the table, each pair in the notes."""
    ratios = sorted(((t.cpu_per_run_after_startup or 0.0) / f.cpu_per_run, f, t) for f, t in pairs)
    if not ratios:
        report.add(Row("CPU per tracked run, 20 ms HTTP, defaults, after start-up / floor", "ERROR (see notes)",
                       "-", "<= 2x floor", NOT_MEASURED, "-", "-"))
        return
    ratio, f, t = ratios[(len(ratios) - 1) // 2]
    per = t.cpu_per_run_after_startup or 0.0
    assert t.after_startup is not None
    median = f"median of {len(ratios)} pairs" if len(ratios) > 1 else "one pair"
    report.add(Row(f"CPU per tracked run, {t.latency * 1000:.0f} ms HTTP, defaults, after start-up "
                   f"({t.after_startup[1]} runs) / floor measured just before (one thread, 0 ms: "
                   f"{1000 * f.cpu_per_run:.2f} ms/run, {f.rate:.0f} runs/s); {median}",
                   f"{1000 * per:.2f} ms/run = **{ratio:.2f}x** floor", "-", "<= 2x floor",
                   verdict(ratio <= 2.0 and all(p.check == "ok" for _, p in pairs)), "-", per_run(t)))
    report.notes.append("CPU per run, each pair (floor, then the daemon at 20 ms with defaults, back to back): " +
                        "; ".join(f"{1000 * pf.cpu_per_run:.2f} ms / {1000 * (pt.cpu_per_run_after_startup or 0):.2f} "
                                  f"ms = {r:.2f}x ({pt.check})" for r, pf, pt in ratios) + ".")


def floor_row(report: Report, f: Floor) -> None:
    limit = f.workers / (3 * f.latency) if f.latency > 0 else None
    share = f"; {100 * f.rate / limit:.0f}% of W/(RxL)" if limit else ""
    report.add(Row(f"Reference (not the daemon): bare httpx, same 3-round-trip pattern, {f.latency * 1000:.0f} ms "
                   f"HTTP, W={f.workers} threads", f"{f.rate:.1f} runs/s{share}", "-", "-", NO_TARGET,
                   cpu(f.emu_cpu, f.seconds), f"{1000 * (f.user + f.sys) / f.n:.1f} ms/run (user "
                   f"{f.user:.1f} s + sys {f.sys:.1f} s)"))


def side_by_side_row(report: Report, s: SideBySide, sdk: Throughput | None) -> None:
    proto = "HTTPS" if s.https else "HTTP"
    times = f" = {s.rate / sdk.rate:.1f}x SDK" if sdk and sdk.rate > 0 else ""
    flag = "" if s.check == "ok" else f" [check: {s.check}]"
    per = s.cpu_per_run
    report.add(Row(f"Reference (not a configuration): {s.k} daemons side by side, each on {s.n // s.k} of the "
                   f"{s.n} folders (its own watched path and state directory), {s.latency * 1000:.0f} ms {proto}: "
                   f"what worker processes could give on this machine",
                   f"{s.rate:.1f} runs/s, steady {s.steady_rate or 0:.0f}{times}{flag}", "-", "-", NO_TARGET,
                   cpu(s.emu_cpu, s.seconds),
                   "-" if per is None else f"{1000 * per:.1f} ms/run after start-up, summed over the {s.k}"))


def detection_rows(report: Report, d: Detection) -> None:
    label = f"Detection latency, {d.mode}" + (" (default poll interval)" if d.mode == "polling" else "")
    if not d.supported:
        report.add(Row(f"{label}, p50 / p99", d.note or "not supported yet", "-",
                       "-" if d.mode == "polling" else "< 50 / < 250 ms", NOT_MEASURED))
        return
    if d.p50_ms is None or d.p99_ms is None:
        report.add(Row(f"{label}, p50 / p99", f"no result: {d.note}", result="ERROR"))
        return
    note = f" [{d.note}]" if d.note else ""
    if d.mode == "inotify":
        report.add(Row(f"{label}, p50 ({d.n} folders)", f"{d.p50_ms:.0f} ms{note}", "-", "< 50 ms",
                       verdict(d.p50_ms < 50 and not d.note), f"{d.emu_cpu:.1f} s", f"{d.own_cpu:.1f} s"))
        report.add(Row(f"{label}, p99 (max {d.max_ms:.0f} ms)", f"{d.p99_ms:.0f} ms", "-", "< 250 ms",
                       verdict(d.p99_ms < 250 and not d.note)))
    else:
        report.add(Row(f"{label}, p50 / p99 ({d.n} folders)", f"{d.p50_ms:.0f} / {d.p99_ms:.0f} ms{note}",
                       "-", "-", NO_TARGET, f"{d.emu_cpu:.1f} s", f"{d.own_cpu:.1f} s"))


def _gib(size: int) -> str:
    return f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / 2**20:g} MiB"


def memory_rows(report: Report, file_run: Memory | None, dir_run: Memory | None, sdk: Memory | None,
                size: int, parts: int) -> None:
    sdk_cell = f"{sdk.peak_mb:.0f} MB ({sdk.seconds:.1f} s)" if sdk and sdk.peak_mb else "ERROR (see notes)"
    raised = upload_limit(size)
    limits = f" (api.max_upload_bytes and the emulator's limit raised to {raised:,})" if raised > 500_000_000 else ""
    for run, what in ((file_run, f"{_gib(size)} output file"), (dir_run, f"{_gib(size)} output dir ({parts} files)")):
        if run is None:
            continue
        flag = "" if run.check == "ok" else f" [check: {run.check}]"
        mbps = run.size / 2**20 / run.seconds if run.seconds else 0
        emu = cpu(run.emu_cpu, run.seconds)
        if what.endswith("file") and sdk:
            emu += f"; SDK run: {sdk.emu_cpu:.1f} s"
        report.add(Row(f"Peak RSS tracking a {what}{limits}", f"{run.peak_mb:.0f} MB (tracked in {run.seconds:.1f} s, "
                       f"{mbps:.0f} MiB/s){flag}", sdk_cell if what.endswith("file") else "-", "< 100 MB",
                       verdict((run.peak_mb or 1e9) < 100 and run.check == "ok"), emu,
                       cpu(run.own_cpu, run.seconds)))


def backlog_rows(report: Report, b: Backlog) -> None:
    label = f"Backlog {b.total:,} folders ({b.pending:,} pending)"
    flag = "" if b.check == "ok" else f" [check: {b.check}]"
    first = "none" if b.first_put is None else f"{b.first_put:.2f} s"
    post = "" if b.first_post is None else f" (first POST {b.first_post:.2f} s)"
    report.add(Row(f"{label}: first upload after start", first + post, "-", "< 2 s",
                   verdict(b.first_put is not None and b.first_put < 2), "-", "-"))
    scan = "none" if b.scan_seconds is None else f"{b.scan_seconds:.1f} s"
    report.add(Row(f"{label}: start-up scan (startup_scan_done.seconds)", scan + flag, "-", "< 30 s",
                   verdict(b.scan_seconds is not None and b.scan_seconds < 30), "-", "-"))
    if b.scan_alone:
        report.add(Row(f"Reference (not the daemon): the same {b.total:,}-folder scan alone "
                       "(watcher.runfolder.scan.iter_folders + quick_state, one thread, nothing else running)",
                       f"{b.scan_alone[0]:.1f} s", "-", "-", NO_TARGET, "-", f"{b.scan_alone[1]:.1f} s"))
    wall = b.all_tracked_after or 0
    done = f"all {b.pending:,} tracked after {wall:.0f} s" if b.all_tracked_after else \
        f"{b.tracked:,}/{b.pending:,} tracked when measured"
    report.add(Row(f"{label}: peak RSS", f"{b.peak_mb:.0f} MB ({done})", "-", "< 200 MB",
                   verdict((b.peak_mb or 1e9) < 200), cpu(b.emu_cpu, wall) if wall else f"{b.emu_cpu:.1f} s",
                   cpu(b.own_cpu, wall) if wall else f"{b.own_cpu:.1f} s"))


def idle_rows(report: Report, i: Idle) -> None:
    extra = "" if i.requests == 0 else f", {i.requests} API requests during the window"
    how = "" if i.notifications is None else (" under systemd ($NOTIFY_SOCKET: STATUS= every 5 s; WatchdogSec=300: "
                                              f"WATCHDOG=1; {i.notifications} datagrams)")
    report.add(Row(f"Idle{how}, {i.folders:,} tracked folders", f"{i.per_minute:.3f} CPU s/min ({i.cpu:.2f} s over "
                   f"{i.window:.0f} s{extra}; RSS peak {i.peak_mb:.0f} MB)", "-", "< 0.5 CPU s/min",
                   verdict(i.per_minute < 0.5), f"{i.emu_cpu:.2f} s", "-"))


def kept_analysis(path: Path) -> str:
    """The hand-written part of an existing RESULTS.md (below KEEP_MARKER), or ''."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    _, found, after = text.partition(KEEP_MARKER)
    return after.strip() if found else ""


def hostile_rows(report: Report, h: Hostile) -> None:
    cap = "files.max_json_bytes set to it" if h.cap_configured else "no cap in this daemon: read whole"
    shared = f" in {h.processes} processes (peaks added up)" if h.processes > 1 else ""
    label = (f"Peak RSS, hostile: {h.folders} workers{shared} each on a folder with statistics/assets/metrics.json of "
             f"{_gib(h.json_bytes)} worst-case JSON ({cap}), plus a backlog of {h.backlog_total:,} folders "
             f"({h.backlog_pending:,} pending)")
    flag = "" if h.check == "ok" else f" [check: {h.check}]"
    when = []
    if h.peak_at is not None:
        when.append(f"highest VmRSS sample at {h.peak_at:.1f} s")
    if h.scan_done_at is not None:
        when.append(f"scan done at {h.scan_done_at:.1f} s")
    if h.hostile_done_at is not None:
        when.append(f"{h.tracked}/{h.folders} hostile folders tracked at {h.hostile_done_at:.1f} s")
    daemon = f"{h.peak_mb:.0f} MB ({'; '.join(when)}){flag}" if h.peak_mb else f"no reading{flag}"
    if h.memory_max_mb is None:
        target, result = "below the unit's MemoryMax= (not set)", NOT_MEASURED
    else:
        target = f"< MemoryMax= {h.memory_max_mb:.0f} MB (systemd unit)"
        result = verdict((h.peak_mb or 1e9) < h.memory_max_mb and h.check == "ok")
    report.add(Row(label, daemon, "-", target, result, "-", f"{h.own_cpu:.1f} s"))


def ratelimit_rows(report: Report, r: RateLimited, burst: int) -> None:
    """Three targets under a token-bucket limit on API calls: runs/s, the share answered 429, none failed."""
    label = f"Rate limit {r.limit:g} API calls/s (burst {burst}), defaults, {r.n} runs"
    flag = "" if r.check == "ok" else f" [check: {r.check}]"
    steady = f", steady {r.steady_rate:.1f}" if r.steady_rate else ""
    need = r.target_rate()
    retries = f"; {r.retrying} folder_retrying events" if r.retrying else ""
    report.add(Row(f"{label}: runs/s", f"{r.rate:.1f} runs/s{steady}{flag}{retries}", "-", f">= {need:g} runs/s",
                   verdict(r.rate >= need and r.check == "ok"), cpu(r.emu_cpu, r.seconds),
                   cpu(r.own_cpu, r.seconds) + f", {1000 * r.own_cpu / r.n:.1f} ms/run"))
    reached = []
    if r.flight is not None:
        reached.append(f"folders in flight: peak {r.flight.peak}, mean {r.flight.mean:.1f}")
    if r.peak_limit is not None:
        reached.append(f"concurrency limit: highest {r.peak_limit:g}")
    extra = f"; {', '.join(reached)}" if reached else ""
    report.add(Row(f"{label}: API calls (/v1, look-ups included, PUTs excluded) answered 429",
                   f"**{100 * r.throttled_share:.1f}%** ({r.api.throttled} of {r.api.calls}; {r.api.puts} PUTs "
                   f"not counted){extra}", "-", "<= 10%", verdict(r.throttled_share <= 0.10), "-", "-"))
    report.add(Row(f"{label}: folders marked failed", f"{r.failed} ({r.failed_events} folder_failed events, "
                   f"{r.failed_markers} failed markers)", "-", "0", verdict(r.failed == 0), "-", "-"))
    report.notes.append(f"{label}: 429s over time: {r.timeline or 'none'}. The daemon's concurrency limit "
                        f"(/metrics, every 0.5 s): {r.limit_series or 'no sample'}. Its api_pacing events: "
                        f"{r.pacing}.")
