"""Benign conditions are not bugs: the real daemon against the emulator (issue 11, findings 3, 4, 8, 9).

A file that changes during its upload, a full disk, a read-only watched path and a competing daemon
are expected on a server: each is logged at info or warning, without a traceback, never at error
level, and leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TRACKED, Daemon, marker, wait_for, write_config, write_folder

from watcher.fakecloud import FakeCloud
from watcher.runfolder.markers import StateStore

pytestmark = pytest.mark.e2e

BIG = 16 << 20   # larger than any loopback socket buffer: a held PUT stops the daemon mid-body


def _errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events at error level or carrying a traceback."""
    return [e for e in events if e.get("level") in ("error", "critical") or "exception" in e]


def _output(size: int) -> bytes:
    return json.dumps({"pad": "x" * (size - 20)}).encode()


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_a_file_changed_during_its_upload_is_retried_quietly(cloud: FakeCloud, watched: Path, daemon_factory,
                                                            change: str) -> None:
    output = _output(BIG)
    hold = cloud.hold("put", content_length=len(output))
    daemon: Daemon = daemon_factory([(watched, "app-1")]).start()
    folder = write_folder(watched, "changing", {"input.json": "{}", "output.json": output})
    hold.wait_held(30)
    final = output + b"\n" if change == "grow" else output[:-1000] + b'"}'
    with open(folder / "output.json", "r+b") as f:   # in place: the inode the daemon has open
        f.write(final)
        f.truncate(len(final))
    hold.release()
    wait_for(lambda: marker(folder), 60, "the folder tracked after the change")
    assert daemon.stop() == 0
    events = daemon.events()
    assert _errors(events) == []
    retried = [e for e in events if e.get("event") == "folder_retrying"]
    assert retried and {e["reason"] for e in retried} == {"changed"}
    assert {e["level"] for e in retried} == {"info"}
    (run,) = cloud.runs()
    upload = cloud.upload(run.body["result"]["output_upload_id"])
    assert upload is not None and upload.data == final


def test_two_live_daemons_on_300_folders_never_lose_a_claim(cloud: FakeCloud, watched: Path,
                                                           tmp_path: Path) -> None:
    daemons = []
    for i in range(2):
        config = write_config(tmp_path / f"host-{i}.yaml", cloud.url, [(watched, "app-1")], tmp_path / f"state-{i}",
                              control_socket=str(tmp_path / f"c{i}.sock"), workers=8)
        daemons.append(Daemon(config, tmp_path / f"host-{i}.log").start())
    for d in daemons:
        d.wait_ready()
    names = [f"shared-{i:03d}" for i in range(300)]
    try:
        for n in names:
            write_folder(watched, n, {"input.json": "{}", "output.json": "{}"})
        wait_for(lambda: all(marker(watched / n) for n in names), 180, "all 300 tracked")
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0]
    counts = Counter(r.body["name"] for r in cloud.runs())
    assert counts == Counter(dict.fromkeys(names, 1)), "each folder tracked exactly once"
    events = [e for d in daemons for e in d.events()]
    assert [e for e in events if e.get("event") == "folder_claim_lost"] == []
    assert _errors(events) == []
    assert not [p for n in names for p in (watched / n).iterdir() if p.name.startswith(".nextmv-claim")]


@pytest.fixture
def read_only_path(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(writable, read-only): one directory, and a read-only bind mount of it that the daemon watches."""
    writable, ro = tmp_path / "producer", tmp_path / "ro-runs"
    writable.mkdir()
    ro.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(writable), str(ro)], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot bind-mount here (needs root and mount rights): {exc}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True, capture_output=True, timeout=30)
        yield writable, ro
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False, capture_output=True, timeout=30)


def test_a_read_only_watched_path_is_tracked_quietly_with_its_state_in_the_state_dir(
        cloud: FakeCloud, read_only_path: tuple[Path, Path], tmp_path: Path, daemon_factory) -> None:
    writable, ro = read_only_path
    daemon: Daemon = daemon_factory([(ro, "app-1")]).start()
    daemon.wait_ready()
    names = ["ro-1", "ro-2", "ro-3"]
    for n in names:
        write_folder(writable, n, {"input.json": "{}", "output.json": "{}"})
    store = StateStore(tmp_path / "state")
    wait_for(lambda: all(store.finished(ro / n) == "tracked" for n in names), 30, "the read-only folders tracked")
    assert daemon.stop() == 0
    events = daemon.events()
    assert _errors(events) == []
    assert len(cloud.runs()) == 3
    for n in names:
        assert [p.name for p in (ro / n).iterdir() if p.name.startswith(".nextmv-")] == []
        assert sorted(p.name for p in store.fallback_dir(ro / n).iterdir()) == [TRACKED], \
            "no journal (or anything else) beside the tracked marker"


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """The daemon's spool directory (`<state_dir>/spool`) on a 1 MiB tmpfs."""
    spool = tmp_path / "state" / "spool"
    spool.mkdir(parents=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(spool)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {exc}")
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False, capture_output=True, timeout=30)


def _cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "watcher", *args], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def test_a_spool_too_small_backs_off_says_the_bytes_it_needs_and_tracks_once_there_is_room(
        cloud: FakeCloud, watched: Path, small_spool: Path, tmp_path: Path, daemon_factory) -> None:
    daemon: Daemon = daemon_factory([(watched, "app-1")], control_socket=str(tmp_path / "control.sock")).start()
    daemon.wait_ready()
    folder = write_folder(watched, "big", {"input.json": "{}", "output/data.bin": os.urandom(3 << 20)})

    def state_errors() -> list[dict[str, Any]]:
        return [e for e in daemon.events() if e.get("event") == "state_error"]

    (first,) = wait_for(state_errors, 30, "a state error")
    assert first["retry_in"] == 5.0 and "needs up to" in first["error"] and "No space left on device" in first["error"]
    status = json.loads(_cli("status", "--json", "--config", str(daemon.config)))
    assert status["folders"]["retry_wait"] == 1
    (waiting,) = status["state_error"]["folders"]
    assert waiting["folder"] == str(folder) and "needs up to" in waiting["error"]
    assert f"{folder}: spool directory" in _cli("status", "--config", str(daemon.config))
    scanned = {r["folder"]: r for r in json.loads(_cli("scan", "--json", "--config", str(daemon.config)))}
    assert scanned[str(folder)]["state"] == "pending"
    assert scanned[str(folder)]["reason"].startswith("state_error: spool directory")
    assert "needs up to" in scanned[str(folder)]["reason"]

    wait_for(lambda: len(state_errors()) >= 2, 30, "a second state error")
    assert [e["retry_in"] for e in state_errors()][:2] == [5.0, 10.0], "backs off, doubling"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_spool)], check=True, capture_output=True, timeout=30)
    wait_for(lambda: marker(folder), 60, "tracked once the spool has room")
    assert daemon.stop() == 0
    events = daemon.events()
    assert _errors(events) == []
    assert {e["level"] for e in state_errors()} == {"warning"}
    assert not [e for e in events if e.get("event") == "folder_retrying"], "a state error is no attempt"
    assert list(small_spool.iterdir()) == [], "no partial spool file left"
    assert len(cloud.runs()) == 1
