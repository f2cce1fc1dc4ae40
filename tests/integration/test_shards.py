"""Several processes' worth of the daemon on one watched path and one state directory (`processes`):
each takes only its own folders (`watcher.daemon.shard`), so every folder is tracked once, by its owner.
In-process: two real Services with their shard's configuration, real inotify, the emulator on loopback."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from helpers import API_KEY, marker, wait_for, write_config, write_folder

from watcher.config import load_config
from watcher.daemon.service import JSON_TURN_FILE, Service
from watcher.daemon.shard import Shard
from watcher.fakecloud import FakeCloud
from watcher.runfolder.runjson import BIG_JSON_BYTES

FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1]}', "output.json": b'{"solution": 7}'}


def open_in(directory: Path) -> list[str]:
    """This process's open files under `directory`."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory) + "/"):
            names.append(target)
    return sorted(names)


def test_two_shards_track_every_folder_once_each_its_own(cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    early = [write_folder(watched, f"early-{n}", FILES) for n in range(12)]   # the start-up scans'
    path = write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                        processes=2, workers=4)
    services = [Service(load_config(path, env={"NEXTMV_WATCHER_SHARD": f"{i}/2"}), API_KEY) for i in range(2)]
    try:
        for service in services:
            service.start()
        late = [write_folder(watched, f"late-{n}", FILES) for n in range(12)]   # both observers see these
        folders = early + late
        wait_for(lambda: all(marker(f) is not None for f in folders), 30, "every folder tracked")
        for service in services:
            assert service.run_until_idle(timeout=20)
    finally:
        for service in services:
            service.shutdown()
    assert open_in(tmp_path / "state") == [], "the shared files are closed with the services"
    runs = cloud.runs("app-1")
    assert sorted(r.body["name"] for r in runs) == sorted(f.name for f in folders), "each folder once"
    for i, service in enumerate(services):
        own = [f for f in folders if Shard(i, 2).owns(f)]
        assert 0 < len(own) < len(folders)
        assert service.outcomes.totals()["tracked"] == len(own), f"shard {i}/2 tracked only its own"
        assert service.config.workers == 2


def test_a_big_json_document_waits_for_the_daemons_turn_held_by_another_process(
        cloud: FakeCloud, watched: Path, tmp_path: Path) -> None:
    """One big JSON document at a time in the whole daemon, not per process: another process's turn (the
    state directory's `json-turn` flocked through its own open file) holds this shard's big document back,
    never its small ones."""
    path = write_config(tmp_path / "config.yaml", cloud.url, [(watched, "app-1")], tmp_path / "state",
                        processes=2, workers=4)
    config = load_config(path, env={"NEXTMV_WATCHER_SHARD": "0/2"})
    big_name, small_name = [n for n in (f"folder-{i}" for i in range(200)) if Shard(0, 2).owns(watched / n)][:2]
    config.state_dir.mkdir(parents=True, exist_ok=True)
    other = os.open(config.state_dir / JSON_TURN_FILE, os.O_RDWR | os.O_CREAT, 0o640)
    fcntl.flock(other, fcntl.LOCK_EX)
    service = Service(config, API_KEY)
    try:
        service.start()
        document = json.dumps({"k": "x" * (BIG_JSON_BYTES + 1)}).encode()
        big = write_folder(watched, big_name, {**FILES, "metrics.json": document})
        wait_for(lambda: big in service.index.in_flight(), 30, "a worker on the big folder")
        small = write_folder(watched, small_name, {**FILES, "metrics.json": b'{"k": 1}'})
        wait_for(lambda: marker(small) is not None, 30, "the small folder tracked meanwhile")
        assert marker(big) is None, "the big document was parsed while another process held the turn"
        fcntl.flock(other, fcntl.LOCK_UN)
        wait_for(lambda: marker(big) is not None, 30, "the big folder tracked once the turn is free")
    finally:
        os.close(other)
        service.shutdown()
