"""The worker's flow through one open folder, attacked between its steps: a state file swapped for a FIFO
while the API fails. Nothing a producer causes is logged as a bug (`folder_error`, with its traceback),
and nothing it plants is ever opened. Real directories; the tracker is a stand-in."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import structlog
from helpers import FAILED, marker, write_folder
from worker_harness import Harness

from watcher.daemon.index import Stage
from watcher.errors import TransientError
from watcher.runfolder.folder import RunFolder
from watcher.runfolder.markers import JOURNAL, Journal

pytestmark = pytest.mark.usefixtures("no_fd_leak")


@pytest.mark.timeout(20)
def test_a_journal_swapped_for_a_fifo_during_a_failed_attempt_is_replaced_never_opened(
        tmp_path: Path, watched: Path) -> None:
    h = Harness(tmp_path, watched)
    folder = write_folder(watched, "run-1", {"input.json": b"{}", "output.json": b"{}"})

    def plant_fifo(run: RunFolder, journal: Journal) -> None:
        os.mkfifo(run.path / JOURNAL)   # nobody writes: reading it would block the worker

    h.tracker.meanwhile = plant_fifo
    h.tracker.error = TransientError("HTTP 503 from POST /runs", status=503)
    with structlog.testing.capture_logs() as events:
        found = h.step(folder)
    assert "folder_error" not in [e["event"] for e in events]
    assert found.stage is Stage.RETRY_WAIT
    # The journal of this attempt (read before the FIFO appeared) was written over it: a regular file.
    assert stat.S_ISREG(os.lstat(folder / JOURNAL).st_mode)
    assert h.store.journal(folder).attempts == 1
    assert marker(folder, FAILED) is None
