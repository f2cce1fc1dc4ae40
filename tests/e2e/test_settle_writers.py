"""End to end, settle mode (no completion marker): a producer caught mid-file is never tracked.

Issue 11, finding 1: a folder whose output was half written when the producer paused longer than
`settle_seconds` was tracked with the partial file. Each test here is a producer that pauses mid-file
until the daemon has looked at the folder after its settle time (the daemon says why it waits:
`folder_incomplete`), then finishes the file; the run tracked must carry the whole file.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from helpers import Daemon, marker, wait_for

from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.e2e

SETTLE = 1.0   # the margin the daemon has to receive a file's open event before the folder settles
INPUT = b'{"in": 1}\n'
HEAD = b'{"solutions": ['
TAIL = b'{"done": true}]}\n'


def _start(daemon_factory: Any) -> Daemon:
    daemon: Daemon = daemon_factory(completion={"marker": None, "settle_seconds": SETTLE})
    daemon.start()
    daemon.wait_ready()
    return daemon


def _incomplete(daemon: Daemon, folder: Path, *words: str) -> dict[str, Any] | None:
    """The daemon's latest `folder_incomplete` event for `folder` whose reason has every one of `words`."""
    for e in reversed(daemon.events()):
        if e.get("event") == "folder_incomplete" and e.get("folder") == str(folder) \
                and all(w in str(e.get("reason")) for w in words):
            return e
    return None


def _held_back(daemon: Daemon, folder: Path, *words: str) -> None:
    """Wait until the daemon either tracked `folder` (the bug) or said it waits for the writer (`words`);
    then the folder must not be tracked."""
    wait_for(lambda: marker(folder) or _incomplete(daemon, folder, *words), 20,
             f"the daemon to look at {folder.name} after its settle time")
    assert marker(folder) is None, "a partial file was tracked"


def _watched(daemon: Daemon, folder: Path) -> None:
    """Wait until the daemon watches the (incomplete) folder, so that its producer's opens are seen."""
    wait_for(lambda: any(e.get("event") == "folder_incomplete" and e.get("folder") == str(folder)
                         and e.get("watched") for e in daemon.events()), 20, f"{folder.name} watched")


def _output_of(cloud: FakeCloud, folder: Path, field: str = "output_upload_id") -> bytes:
    runs = [r for r in cloud.runs() if r.body.get("name") == folder.name]
    assert len(runs) == 1, f"{folder.name}: {len(runs)} runs recorded"
    upload = runs[0].artifact(field)
    assert upload is not None and upload.data is not None, f"{field} missing"
    return bytes(upload.data)


def test_finding_1_a_half_written_output_json_is_not_tracked(cloud: FakeCloud, watched: Path,
                                                             daemon_factory: Any) -> None:
    # mkdir r/s1; echo '{"in":1}' > r/s1/input.json; printf '{"solutions": [' > r/s1/output.json;
    # sleep 8; echo '{"done":true}]}' >> r/s1/output.json
    daemon = _start(lambda **kw: daemon_factory([(watched, "app-1")], **kw))
    folder = watched / "s1"
    folder.mkdir()
    (folder / "input.json").write_bytes(INPUT)
    (folder / "output.json").write_bytes(HEAD)
    _held_back(daemon, folder, "output.json is not complete JSON")
    with open(folder / "output.json", "ab") as f:
        f.write(TAIL)
    wait_for(lambda: marker(folder), 20, "the finished folder tracked")
    assert _output_of(cloud, folder) == HEAD + TAIL
    assert json.loads(HEAD + TAIL) == {"solutions": [{"done": True}]}
    assert len(cloud.runs()) == 1
    assert daemon.stop() == 0


def test_output_json_kept_open_through_a_pause_is_tracked_whole(cloud: FakeCloud, watched: Path,
                                                                daemon_factory: Any) -> None:
    daemon = _start(lambda **kw: daemon_factory([(watched, "app-1")], **kw))
    folder = watched / "kept-open"
    folder.mkdir()
    (folder / "input.json").write_bytes(INPUT)
    _watched(daemon, folder)
    with open(folder / "output.json", "wb") as f:
        f.write(HEAD)
        f.flush()
        _held_back(daemon, folder, "output.json")
        f.write(TAIL)
    wait_for(lambda: marker(folder), 20, "the finished folder tracked")
    assert _output_of(cloud, folder) == HEAD + TAIL
    assert daemon.stop() == 0


def test_output_json_closed_and_reopened_for_append_is_tracked_whole(cloud: FakeCloud, watched: Path,
                                                                     daemon_factory: Any) -> None:
    daemon = _start(lambda **kw: daemon_factory([(watched, "app-1")], **kw))
    folder = watched / "appended"
    folder.mkdir()
    (folder / "input.json").write_bytes(INPUT)
    with open(folder / "output.json", "wb") as f:
        f.write(HEAD)
    _held_back(daemon, folder, "output.json is not complete JSON")
    with open(folder / "output.json", "ab") as f:
        f.write(TAIL)
    wait_for(lambda: marker(folder), 20, "the finished folder tracked")
    assert _output_of(cloud, folder) == HEAD + TAIL
    assert daemon.stop() == 0


def test_a_non_json_output_kept_open_is_tracked_whole(cloud: FakeCloud, watched: Path, daemon_factory: Any) -> None:
    # Nothing in a CSV file says it is unfinished: only the open file does, as inotify reports it.
    daemon = _start(lambda **kw: daemon_factory([(watched, "app-1")], **kw))
    folder = watched / "csv-open"
    folder.mkdir()
    (folder / "input.json").write_bytes(INPUT)
    _watched(daemon, folder)
    with open(folder / "output.csv", "wb") as f:
        f.write(b"stop,vehicle\n1,a\n")
        f.flush()
        _held_back(daemon, folder, "output.csv is open")
        f.write(b"2,b\n")
    wait_for(lambda: marker(folder), 20, "the finished folder tracked")
    with tarfile.open(fileobj=io.BytesIO(_output_of(cloud, folder)), mode="r:gz") as tar:   # one-file multi-file
        member = tar.extractfile("output.csv")
        assert member is not None
        assert member.read() == b"stop,vehicle\n1,a\n2,b\n"
    assert daemon.stop() == 0


def test_a_file_kept_open_in_the_output_directory_is_tracked_whole(cloud: FakeCloud, watched: Path,
                                                                   daemon_factory: Any) -> None:
    daemon = _start(lambda **kw: daemon_factory([(watched, "app-1")], **kw))
    work = watched / ".tmp-in-dir"
    (work / "output").mkdir(parents=True)
    (work / "input.json").write_bytes(INPUT)
    folder = watched / "in-dir"
    work.rename(folder)   # appears with its output/ directory: watched from the first look
    _watched(daemon, folder)
    with open(folder / "output" / "routes.csv", "wb") as f:
        f.write(b"route\n1\n")
        f.flush()
        _held_back(daemon, folder, "output/routes.csv is open")
        f.write(b"2\n")
    wait_for(lambda: marker(folder), 20, "the finished folder tracked")
    with tarfile.open(fileobj=io.BytesIO(_output_of(cloud, folder)), mode="r:gz") as tar:
        member = tar.extractfile("routes.csv")
        assert member is not None
        assert member.read() == b"route\n1\n2\n"
    assert daemon.stop() == 0


def test_on_a_polled_path_a_half_written_json_file_is_not_tracked(cloud: FakeCloud, watched: Path,
                                                                   daemon_factory: Any) -> None:
    # Polling sees no open files: only the complete-JSON check applies there.
    daemon: Daemon = daemon_factory([(watched, "app-1")], completion={"marker": None, "settle_seconds": SETTLE},
                                    watch=[{"path": str(watched), "application_id": "app-1", "polling": True,
                                            "poll_interval_seconds": 0.2}])
    daemon.start()
    daemon.wait_ready()
    folder = watched / "polled"
    folder.mkdir()
    (folder / "input.json").write_bytes(INPUT)
    (folder / "output.json").write_bytes(HEAD)
    _held_back(daemon, folder, "output.json is not complete JSON")
    with open(folder / "output.json", "ab") as f:
        f.write(TAIL)
    wait_for(lambda: marker(folder), 30, "the finished folder tracked")
    assert _output_of(cloud, folder) == HEAD + TAIL
    assert daemon.stop() == 0
