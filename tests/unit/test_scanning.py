"""The start-up scan and the reconcile on a real directory, for a process that owns one shard of it."""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from pathlib import Path

from tests.helpers import write_config, write_folder
from watcher.config import load_config
from watcher.daemon.index import FolderIndex
from watcher.daemon.scanning import reconcile, startup_scan
from watcher.daemon.shard import Shard
from watcher.runfolder.markers import TRACKED, StateStore

RUN = {"input.json": "{}", "output.json": "{}"}


def test_a_shard_scans_and_prunes_only_its_own_folders(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    config = load_config(write_config(tmp_path / "config.yaml", "https://api.test", [(runs, "app")],
                                      tmp_path / "state", workers=2))
    config = replace(config, shard=(1, 2), after_tracking="keep")
    shard = Shard(1, 2)
    folders = [write_folder(runs, f"run-{n:02d}", RUN) for n in range(40)]
    for folder in folders[::2]:
        (folder / TRACKED).write_text('{"run_id": "r"}')
    index = FolderIndex(lambda: 0.0, shard)
    store = StateStore.of(config)

    scanned = startup_scan(config, store, index, stop=threading.Event(), resume_after_tracking=print)

    mine = [f for f in folders if shard.owns(f)]
    assert 0 < len(mine) < len(folders)
    assert scanned is not None
    assert (scanned.queued, scanned.finished) == (sum(f not in folders[::2] for f in mine),
                                                   sum(f in folders[::2] for f in mine))
    assert index.size() == len(mine) and all(f in index for f in mine)
    gone = next(f for f in mine if f in folders[::2])
    shutil.rmtree(gone)
    assert reconcile(config, store, index, full=False) == 0
    assert gone not in index, "a finished folder no longer there is forgotten"
    assert index.size() == len(mine) - 1
