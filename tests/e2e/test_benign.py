"""Benign conditions are not bugs: the real daemon against the emulator (issue 11, findings 3, 4, 8, 9).

A file that changes during its upload, a full disk, a read-only watched path and a competing daemon
are expected on a server: each is logged at info or warning, without a traceback, never at error
level, and leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import subprocess
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
