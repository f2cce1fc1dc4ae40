"""`nextmv-watcher demo`: the emulator and the real daemon process on sample folders.

It starts the local emulator, writes a config for a temporary watched path, starts
`nextmv-watcher run` as a child process (its logs appear on stderr), drops sample run folders
the safe way (written as dot-folders, then renamed), waits for each to get a marker, prints
what the emulator recorded, stops the daemon with SIGTERM and exits 0 when all went as expected.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from watcher.fakecloud import FakeCloud
from watcher.runfolder.markers import FAILED, TRACKED

API_KEY = "demo-key"
APP = "demo-app"

SAMPLES: dict[str, dict[str, str]] = {
    "routing-succeeded": {
        "input.json": json.dumps({"stops": [{"id": "a"}, {"id": "b"}], "vehicles": 1}),
        "output.json": json.dumps({"solutions": [{"route": ["a", "b"]}], "statistics": {"result": {"value": 42}}}),
        "status.json": json.dumps({"duration": 1234, "description": "nightly routing run",
                                   "options": {"solve.duration": "5s"}}),
        "metrics.json": json.dumps({"value": 42}),
    },
    "routing-failed-with-logs": {
        "input.json": json.dumps({"stops": []}),
        "logs.txt": "loading input\nerror: no stops to route\n",
        "status.json": json.dumps({"status": "failed", "error": "no stops to route", "duration": 12}),
    },
    "scheduling-multi-file": {
        "input/shifts.csv": "shift,start\nmorning,06:00\n",
        "input/workers.csv": "worker,skill\nann,driver\n",
        "output/plan.csv": "worker,shift\nann,morning\n",
        "statistics.json": json.dumps({"run": {"duration": 0.5}}),
    },
    "broken-ambiguous-input": {
        "input.json": "{}",
        "input/data.csv": "a,b\n",
        "output.json": "{}",
    },
}
EXPECTED = {"routing-succeeded": TRACKED, "routing-failed-with-logs": TRACKED,
            "scheduling-multi-file": TRACKED, "broken-ambiguous-input": FAILED}


def _drop(watched: Path, name: str, files: dict[str, str]) -> None:
    tmp = watched / f".tmp-{name}"
    for rel, text in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    (tmp / "DONE").touch()
    tmp.rename(watched / name)


def _wait_for_markers(watched: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((watched / n / TRACKED).exists() or (watched / n / FAILED).exists() for n in SAMPLES):
            return True
        time.sleep(0.1)
    return False


def run_demo(keep: bool = False) -> int:
    root = Path(tempfile.mkdtemp(prefix="nextmv-watcher-demo-"))
    watched = root / "runs"
    watched.mkdir()
    with FakeCloud(api_keys=[API_KEY]) as cloud:
        config = root / "config.yaml"
        config.write_text(json.dumps({
            "api": {"url": cloud.url},
            "state_dir": str(root / "state"),
            "watch": [{"path": str(watched), "application_id": APP}],
            "completion": {"marker": "DONE"},
            "workers": 2,
            "logging": {"format": "console"},
        }, indent=1))
        print(f"demo directory: {root}\nemulator: {cloud.url}\nstarting: nextmv-watcher run --config {config}\n",
              flush=True)
        env = {**os.environ, "NEXTMV_API_KEY": API_KEY}
        daemon = subprocess.Popen([sys.executable, "-m", "watcher", "run", "--config", str(config)], env=env)
        try:
            for name, files in SAMPLES.items():
                _drop(watched, name, files)
            done = _wait_for_markers(watched, timeout=60)
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=60)
        ok = done and code == 0
        print("\nwhat the emulator recorded:")
        for run in cloud.runs():
            result = run.body.get("result", {})
            fields = sorted(k for k in result if k.endswith("_upload_id"))
            fmt = run.body.get("configuration", {}).get("format", {})
            print(f"  {run.run_id}  name={run.body.get('name')!r:30} status={result.get('status'):9} "
                  f"input={fmt.get('input', {}).get('type'):10} artifacts={fields}")
        print("\nmarkers:")
        for name, expected in EXPECTED.items():
            marker = watched / name / expected
            got = json.loads(marker.read_text()) if marker.exists() else None
            ok = ok and got is not None
            summary = (f"run {got['run_id']}" if expected == TRACKED else got["error"]) if got else "MISSING"
            print(f"  {name:26} {expected:22} {summary}")
    print(f"\ndaemon exited with {code}; demo {'passed' if ok else 'FAILED'}")
    if keep:
        print(f"demo directory kept: {root} (the config, the watched folders with their markers, the state)")
    else:
        shutil.rmtree(root, ignore_errors=True)
        print(f"demo directory {root} removed (`nextmv-watcher demo --keep` keeps it)")
    return 0 if ok else 1
