"""Several processes' worth of the daemon on one watched path and one state directory (`processes`):
each takes only its own folders (`watcher.daemon.shard`), so every folder is tracked once, by its owner.
In-process: two real Services with their shard's configuration, real inotify, the emulator on loopback."""

from __future__ import annotations

from pathlib import Path

from helpers import API_KEY, marker, wait_for, write_config, write_folder

from watcher.config import load_config
from watcher.daemon.service import Service
from watcher.daemon.shard import Shard
from watcher.fakecloud import FakeCloud

FILES: dict[str, str | bytes] = {"input.json": b'{"stops": [1]}', "output.json": b'{"solution": 7}'}


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
    runs = cloud.runs("app-1")
    assert sorted(r.body["name"] for r in runs) == sorted(f.name for f in folders), "each folder once"
    for i, service in enumerate(services):
        own = [f for f in folders if Shard(i, 2).owns(f)]
        assert 0 < len(own) < len(folders)
        assert service.outcomes.totals()["tracked"] == len(own), f"shard {i}/2 tracked only its own"
        assert service.config.workers == 2
