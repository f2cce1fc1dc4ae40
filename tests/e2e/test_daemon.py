"""End to end: the real daemon process, a real observer on tmp_path, the emulator on loopback."""

from __future__ import annotations

import io
import json
import platform
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from helpers import FAILED, TRACKED, marker, wait_for, write_folder

from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.e2e

INPUT = b'{"stops": [1, 2, 3],   "note": "kept byte for byte"}\n'
OUTPUT = b'{"solution": {"value": 7}}'


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            assert m.isfile(), m.name
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
        return out


def _run_named(cloud: FakeCloud, name: str):  # type: ignore[no-untyped-def]
    runs = [r for r in cloud.runs() if r.body.get("name") == name]
    assert len(runs) == 1, f"{name}: {len(runs)} runs recorded"
    return runs[0]


def _data(cloud: FakeCloud, run, field: str) -> bytes:  # type: ignore[no-untyped-def]
    upload = run.artifact(field)
    assert upload is not None, f"{field} missing"
    assert upload.data is not None
    return bytes(upload.data)


def test_batch_of_folders_is_tracked_with_their_content(cloud: FakeCloud, watched: Path, daemon_factory) -> None:
    daemon = daemon_factory([(watched, "app-1")]).start()
    daemon.wait_ready()
    status = {"name": "custom-name", "description": "my description", "duration": 1500,
              "instance_id": "inst-7", "batch_experiment_id": "exp-1", "options": {"solve.duration": "3s"}}
    folders = {
        "ok-json": {"input.json": INPUT, "output.json": OUTPUT, "metrics.json": '{"cost": 3}'},
        "failed-logs": {"input.json": INPUT, "logs.txt": b"start\n\xff\xfe bad bytes\nend \xc3\xa9\n",
                        "status.json": json.dumps({"error": "solver crashed", "duration": 20})},
        "multi": {"input/a.csv": "a\n1\n", "input/sub/b.txt": "bee", "input/.hidden": "h",
                  "output/result.csv": "x\n", "statistics.json": '{"run": {"duration": 1}}',
                  "assets.json": '[{"name": "chart"}]'},
        "with-status": {"input.json": INPUT, "output.json": OUTPUT, "status.json": json.dumps(status)},
        "single-csv": {"input.csv": "a,b\n1,2\n", "output.json": OUTPUT},
    }
    for name, files in folders.items():
        write_folder(watched, name, files)
    wait_for(lambda: all(marker(watched / n) for n in folders), 30, "all folders tracked")
    assert len(cloud.runs()) == len(folders)

    ok = _run_named(cloud, "ok-json")
    assert _data(cloud, ok, "input") == INPUT
    assert _data(cloud, ok, "output_upload_id") == OUTPUT
    assert json.loads(_data(cloud, ok, "metrics_upload_id")) == {"cost": 3}
    assert ok.body["result"]["status"] == "succeeded"
    assert ok.body["configuration"]["format"] == {"input": {"type": "json"}, "output": {"type": "json"}}
    assert marker(watched / "ok-json")["run_id"] == ok.run_id  # type: ignore[index]
    assert marker(watched / "ok-json")["application_id"] == "app-1"  # type: ignore[index]

    failed = _run_named(cloud, "failed-logs")
    assert failed.body["result"]["status"] == "failed"
    assert failed.body["result"]["error_message"] == "solver crashed"
    assert failed.body["result"]["execution_duration"] == 20
    assert "output_upload_id" not in failed.body["result"]
    logs = _data(cloud, failed, "error_upload_id").decode("utf-8")
    assert logs == "start\n\ufffd\ufffd bad bytes\nend é\n"

    multi = _run_named(cloud, "multi")
    assert multi.body["configuration"]["format"] == {"input": {"type": "multi-file"},
                                                     "output": {"type": "multi-file"}}
    assert _members(_data(cloud, multi, "input")) == {"a.csv": b"a\n1\n", "sub/b.txt": b"bee", ".hidden": b"h"}
    assert _members(_data(cloud, multi, "output_upload_id")) == {"result.csv": b"x\n"}
    assert json.loads(_data(cloud, multi, "statistics_upload_id")) == {"statistics": {"run": {"duration": 1}}}
    assert json.loads(_data(cloud, multi, "assets_upload_id")) == {"assets": [{"name": "chart"}]}

    custom = _run_named(cloud, "custom-name")
    assert custom.query == {"instance_id": "inst-7"}
    assert custom.body["description"].startswith("my description\n\nnextmv-watcher:")
    assert custom.body["batch_experiment_id"] == "exp-1"
    assert custom.body["options"] == {"solve.duration": "3s"}
    assert custom.body["result"]["execution_duration"] == 1500

    single = _run_named(cloud, "single-csv")
    assert single.body["configuration"]["format"]["input"] == {"type": "multi-file"}
    assert _members(_data(cloud, single, "input")) == {"input.csv": b"a,b\n1,2\n"}

    names = daemon.names()
    for event in ("folder_detected", "folder_complete", "uploading", "run_tracked"):
        assert event in names
    assert daemon.stop() == 0
    assert "daemon_stopped" in daemon.names()


def test_invalid_folders_fail_with_a_clear_error_and_others_go_on(cloud: FakeCloud, watched: Path,
                                                                  daemon_factory) -> None:
    daemon = daemon_factory([(watched, "app-1")]).start()
    daemon.wait_ready()
    write_folder(watched, "ambiguous", {"input.json": "{}", "input/x.csv": "1", "output.json": "{}"})
    write_folder(watched, "bad-status", {"input.json": "{}", "output.json": "{}",
                                         "status.json": '{"duration": "fast"}'})
    write_folder(watched, "no-input", {"output.json": "{}"})
    write_folder(watched, "good", {"input.json": "{}", "output.json": "{}"})
    wait_for(lambda: marker(watched / "good"), 20, "good folder tracked")
    wait_for(lambda: all(marker(watched / n, FAILED) for n in ("ambiguous", "bad-status", "no-input")), 20,
             "failed markers")
    assert "ambiguous input" in marker(watched / "ambiguous", FAILED)["error"]  # type: ignore[index]
    assert "duration" in marker(watched / "bad-status", FAILED)["error"]  # type: ignore[index]
    assert "input" in marker(watched / "no-input", FAILED)["error"]  # type: ignore[index]
    assert [r.body["name"] for r in cloud.runs()] == ["good"]
    failed_events = [e for e in daemon.events() if e.get("event") == "folder_failed"]
    assert {Path(e["folder"]).name for e in failed_events} == {"ambiguous", "bad-status", "no-input"}
    assert daemon.alive()
    assert daemon.stop() == 0


def test_restart_tracks_nothing_twice_and_picks_up_the_backlog(cloud: FakeCloud, watched: Path,
                                                              daemon_factory) -> None:
    for i in range(5):
        write_folder(watched, f"before-{i}", {"input.json": "{}", "output.json": "{}"})
    first = daemon_factory([(watched, "app-1")]).start()
    wait_for(lambda: all(marker(watched / f"before-{i}") for i in range(5)), 30, "backlog tracked")
    assert first.stop() == 0
    for i in range(3):
        write_folder(watched, f"while-down-{i}", {"input.json": "{}", "output.json": "{}"})
    second = daemon_factory([(watched, "app-1")]).start()
    wait_for(lambda: all(marker(watched / f"while-down-{i}") for i in range(3)), 30, "new folders tracked")
    second.wait_ready()
    assert second.stop() == 0
    counts = Counter(r.body["name"] for r in cloud.runs())
    assert counts == Counter({**{f"before-{i}": 1 for i in range(5)}, **{f"while-down-{i}": 1 for i in range(3)}})


def test_settle_mode_tracks_a_folder_written_in_place(cloud: FakeCloud, watched: Path, daemon_factory) -> None:
    daemon = daemon_factory([(watched, "app-1")], completion={"marker": None, "settle_seconds": 0.3}).start()
    daemon.wait_ready()
    folder = watched / "in-place"
    folder.mkdir()
    (folder / "input.json").write_text("{}")
    (folder / "output.json").write_text('{"ok": true}')
    wait_for(lambda: marker(folder), 20, "settled folder tracked")
    assert len(cloud.runs()) == 1
    assert daemon.stop() == 0


def test_marker_mode_waits_for_the_marker(cloud: FakeCloud, watched: Path, daemon_factory) -> None:
    daemon = daemon_factory([(watched, "app-1")]).start()
    daemon.wait_ready()
    folder = write_folder(watched, "late-marker", {"input.json": "{}", "output.json": "{}"}, marker=None,
                          via_dot=False)
    wait_for(lambda: "folder_detected" in daemon.names(), 10, "folder seen")
    assert cloud.runs() == []
    assert marker(folder) is None
    (folder / "DONE").touch()
    wait_for(lambda: marker(folder), 20, "tracked after the marker")
    assert len(cloud.runs()) == 1
    assert daemon.stop() == 0


def test_sigterm_exits_zero_and_nothing_leaks_the_key(cloud: FakeCloud, watched: Path, daemon_factory) -> None:
    daemon = daemon_factory([(watched, "app-1")]).start()
    daemon.wait_ready()
    write_folder(watched, "one", {"input.json": "{}", "output.json": "{}"})
    wait_for(lambda: marker(watched / "one"), 20, "tracked")
    assert daemon.stop() == 0
    text = daemon.log_path.read_text()
    assert "test-key" not in text
    assert "signature=" not in text
    assert TRACKED not in [p.name for p in watched.iterdir()]


def _tuned(daemon) -> list[str]:  # type: ignore[no-untyped-def]
    daemon.wait_ready()   # then SIGTERM drains (before its relay is up, it would just end the process)
    return list(next(e for e in daemon.events() if e["event"] == "allocator_tuned")["settings"])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_the_daemon_sets_glibcs_allocator_unless_the_environment_does(
        watched: Path, daemon_factory) -> None:  # type: ignore[no-untyped-def]
    """Big JSON documents must not leave every malloc arena full (watcher.daemon.allocator)."""
    daemon = daemon_factory([(watched, "app-1")]).start()
    assert _tuned(daemon) == ["MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"]
    assert daemon.stop() == 0
    given = daemon_factory([(watched, "app-1")], env={"MALLOC_ARENA_MAX": "8"}).start()
    assert _tuned(given) == ["MALLOC_MMAP_THRESHOLD_"]
    assert given.stop() == 0
