"""How `nextmv-watcher status` shows things: the daemon's status dict as text, or a scan summary."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watcher.config import Config
from watcher.daemon.gate import GLOBAL
from watcher.errors import EXIT_OK, FolderError, StateError
from watcher.runfolder.markers import StateStore, utc_iso
from watcher.runfolder.scan import LOOKUP_INCONCLUSIVE, STATE_ERROR, STATES, counts_line, missing_paths, scan_all

OK = EXIT_OK


def format_status(st: dict[str, Any]) -> str:
    """The daemon's status dict as text. Missing keys are left out, so an older daemon still shows."""
    lines = [f"daemon: {st.get('state', '?')} (pid {st.get('pid', '?')}), up {_duration(st.get('uptime_seconds'))}"]
    if st.get("processes"):   # processes: N > 1, each on its share of the folders
        lines.append("processes: " + ", ".join(f"{p['shard']} pid {p['pid']}" + ("" if p["answering"] else
                                                                                 " NOT ANSWERING")
                                               for p in st["processes"]))
    if st.get("reload_pending"):
        lines.append("config: reload pending (the file changed since the daemon loaded it; "
                     "`systemctl reload nextmv-watcher` or SIGHUP applies it)")
    if st.get("watched"):
        lines.append(f"watched: {', '.join(st['watched'])}")
    lines.extend(f"watched path MISSING: {path} {why} (watched again as soon as a directory is back)"
                 for path, why in (st.get("watched_missing") or {}).items())
    oldest = st.get("oldest_pending_age_seconds")
    f = st.get("folders") or {"queued": st.get("queue_depth", 0), "in_flight": len(st.get("in_flight") or [])}
    lines.append(f"folders: {f.get('queued', 0)} queued, {f.get('in_flight', 0)} in flight, "
                 f"{f.get('retry_wait', 0)} waiting to retry, {f.get('parked', 0)} parked"
                 + (f"; oldest pending {_duration(oldest)}" if oldest is not None else ""))
    lines.extend(f"  in flight: {folder}" for folder in st.get("in_flight") or [])
    conc = st.get("concurrency")
    if conc:
        lines.append(f"concurrency: {conc.get('limit')} folders at once ({conc.get('mode')}, workers "
                     f"{conc.get('workers')})" + (f"; API calls held {st['api_held_seconds']:g} s more (429 "
                                                  "Retry-After)" if st.get("api_held_seconds") else ""))
    if "api_rate_limit" in st:
        rate = st["api_rate_limit"]
        lines.append("API calls: not paced" if rate is None else f"API calls: paced at {rate:g}/s (after 429s)")
    lines.extend(_listed(st.get("lookup_inconclusive") or {}, "waiting after an inconclusive run look-up (never "
                         "posted again; `nextmv-watcher track FOLDER --repost` posts anyway, a duplicate is possible)",
                         str))
    lines.extend(_listed(st.get("state_error") or {}, "waiting because the daemon could not write its own files "
                         "(disk full, read-only state directory; retried from 5 s, doubling to 5 min)",
                         lambda f: f"{f.get('folder')}: {f.get('error')}"))
    lines.extend(_newer(st.get("newer") or {}))
    paused = st.get("paused") or {}
    if not paused:
        lines.append("paused: no")
    for scope, p in sorted(paused.items()):
        what = "all work" if scope == GLOBAL else f"application {scope}"
        lines.append(f"paused: {what} since {_when(p.get('since'))} ({p.get('reason')}): {p.get('message')}")
    c = st.get("counters") or {}
    lines.append(f"counters: {c.get('tracked', 0)} tracked, {c.get('failed', 0)} failed, "
                 f"{c.get('retried', 0)} retried")
    lines.extend(_health(st))
    failures = st.get("recent_failures") or []
    lines.append(f"recent failures: {len(failures) or 'none'}")
    lines.extend(f"  {_when(f.get('at'))}  {f.get('folder')}  {f.get('reason')}: {f.get('error')}" for f in failures)
    return "\n".join(lines)


def _health(st: dict[str, Any]) -> list[str]:
    """The health line (observers, workers, folders incomplete for too long), or none."""
    health: list[str] = []
    if st.get("observer_wedged"):
        health.append(f"observer WEDGED (delivers no events) for {', '.join(st['observer_wedged'])}")
    elif st.get("observer_alive") is not None:
        health.append(f"observer {'alive' if st['observer_alive'] else 'DEAD'}")
    workers = st.get("workers_alive")
    if isinstance(workers, bool):
        health.append("workers alive" if workers else "workers DEAD")
    elif isinstance(workers, int):
        health.append(f"{workers} worker(s) alive")
    if st.get("incomplete_too_long"):
        health.append(f"{st['incomplete_too_long']} folder(s) incomplete for too long")
    return ["health: " + ", ".join(health)] if health else []


def _newer(newer: dict[str, Any]) -> list[str]:
    """The lines of the folders left alone because a newer nextmv-watcher wrote their state (none: none)."""
    return _listed(newer, "left alone, written by a newer nextmv-watcher (never tracked, claimed or changed by "
                   "this version; upgrade it)", lambda f: f"{f.get('folder')}: {f.get('problem')}")


def _listed(block: dict[str, Any], what: str, line: Callable[[Any], str]) -> list[str]:
    """A `{"count", "folders"}` block of the status as lines: the count and `what`, then the folders
    listed (the daemon names the first 20), each as `line` makes it (none when the count is 0)."""
    if not block.get("count"):
        return []
    listed = block.get("folders") or []
    return [f"  {block['count']} {what}:", *(f"    {line(f)}" for f in listed),
            *(["    ... (`nextmv-watcher scan` lists them all)"] if block["count"] > len(listed) else [])]


def print_scan_status(config: Config, *, json_output: bool) -> int:
    """No daemon: counts by state from a scan, and the failed folders with their reasons."""
    store = StateStore.of(config)
    counts = dict.fromkeys(STATES, 0)
    failed: list[dict[str, Any]] = []
    inconclusive: list[str] = []
    state_errors: list[dict[str, str]] = []
    newer: list[dict[str, str]] = []
    for report in scan_all(config, store, time.time()):
        counts[report.state] += 1
        if report.state == "pending" and report.reason.startswith(LOOKUP_INCONCLUSIVE):
            inconclusive.append(report.folder)
        if report.state == "pending" and report.reason.startswith(STATE_ERROR):
            state_errors.append({"folder": report.folder, "error": report.reason.removeprefix(f"{STATE_ERROR}: ")})
        if report.state == "newer":
            newer.append({"folder": report.folder, "problem": report.reason})
        if report.state == "failed":
            try:
                marker = store.failed(Path(report.folder)) or {}
            except (StateError, FolderError) as exc:
                marker = {"error": str(exc)}
            failed.append({"folder": report.folder, "application_id": report.application_id,
                           "reason": marker.get("reason"), "error": marker.get("error"),
                           "at": marker.get("failed_at")})
    if json_output:
        print(json.dumps({"state": "not running", "counts": counts, "failed": failed,
                          "lookup_inconclusive": inconclusive, "state_error": state_errors,
                          "newer": {"count": len(newer), "folders": newer},
                          "watched_missing": {str(g.path): g.problem for g in missing_paths(config)}}, indent=1))
        return OK
    print("daemon: not running")
    for gone in missing_paths(config):
        print(f"watched path MISSING: {gone.path} {gone.problem}")
    print("folders: " + counts_line(counts))
    for line in [*_listed({"count": len(inconclusive), "folders": inconclusive},
                          "pending after an inconclusive run look-up (`nextmv-watcher scan` says why)", str),
                 *_listed({"count": len(state_errors), "folders": state_errors},
                          "pending after the daemon could not write its own files",
                          lambda f: f"{f['folder']}: {f['error']}"),
                 *_listed({"count": len(newer), "folders": newer}, "left alone, written by a newer nextmv-watcher",
                          lambda f: f"{f['folder']}: {f['problem']}")]:
        print(line)
    for f in failed:
        print(f"  {f['at']}  {f['folder']}  {f['reason']}: {f['error']}")
    return OK


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    s = int(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}h {rest // 60:02d}m {rest % 60:02d}s" if h else f"{rest // 60}m {rest % 60:02d}s"


def _when(at: object) -> str:
    return utc_iso(at) if isinstance(at, int | float) else str(at)
