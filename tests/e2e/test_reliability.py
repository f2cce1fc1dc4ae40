"""Exactly once under crashes, faults and bad input: the real daemon process against the emulator.

The randomized tests are seeded. Their long versions run with NEXTMV_WATCHER_LONG_TESTS=1.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from helpers import API_KEY, FAILED, TRACKED, Daemon, marker, wait_for, write_config, write_folder

from watcher.fakecloud import FakeCloud

pytestmark = pytest.mark.e2e
LONG = os.environ.get("NEXTMV_WATCHER_LONG_TESTS") == "1"


def _runs_per_name(cloud: FakeCloud) -> Counter[str]:
    return Counter(str(r.body.get("name")) for r in cloud.runs())


def _assert_exactly_once(cloud: FakeCloud, watched: Path, names: list[str]) -> None:
    counts = _runs_per_name(cloud)
    assert {n: counts[n] for n in names if counts[n] != 1} == {}, "runs per folder must be exactly 1"
    by_id = {r.run_id: r for r in cloud.runs()}
    for n in names:
        m = marker(watched / n)
        assert m is not None, f"{n}: no tracked marker"
        assert by_id[m["run_id"]].body["name"] == n


def test_sigkill_at_random_moments_tracks_every_folder_exactly_once(cloud: FakeCloud, watched: Path,
                                                                     daemon_factory) -> None:
    rng = random.Random(20261125)
    folders = 120 if LONG else 40
    kills = 30 if LONG else 8
    names = [f"run-{i:03d}" for i in range(folders)]
    for n in names:
        write_folder(watched, n, {"input.json": json.dumps({"n": n}), "output.json": "{}", "logs.txt": "ok\n"})
    # Latency and a delayed POST answer widen the windows a kill can land in (between the run being
    # recorded and the marker being written, in particular).
    cloud.set_faults(latency_seconds=0.005, post_delay_seconds=0.05)
    for cycle in range(kills):
        daemon = daemon_factory([(watched, "app-1")], retry={"lookup_grace_seconds": 0.5}).start()
        seen = len(cloud.requests())
        if cycle % 2:
            target = len(cloud.runs()) + 1   # kill while a POST's answer is still on its way
            wait_for(lambda t=target, d=daemon: len(cloud.runs()) >= t or not d.alive(), 30, "a run recorded")
        else:
            target = seen + rng.randint(1, 40)
            wait_for(lambda t=target, d=daemon: len(cloud.requests()) >= t or not d.alive(), 30, "requests")
        daemon.kill()
        if all(marker(watched / n) for n in names):
            break
    cloud.set_faults(latency_seconds=0.0, post_delay_seconds=0.0)
    final = daemon_factory([(watched, "app-1")], retry={"lookup_grace_seconds": 0.5}).start()
    wait_for(lambda: all(marker(watched / n) for n in names), 60, "every folder tracked")
    assert final.stop() == 0
    _assert_exactly_once(cloud, watched, names)
    assert not [n for n in names if (watched / n / FAILED).exists()]


def test_faults_together_every_folder_exactly_once(cloud: FakeCloud, watched: Path, daemon_factory) -> None:
    names = [f"f-{i:03d}" for i in range(60 if LONG else 24)]
    cloud.set_faults(error_rate=0.1, throttle_rate=0.1, throttle_retry_after=0.05, reset_rate=0.05,
                     reset_after_rate=0.05, latency_seconds=0.01, seed=7)
    cloud.fail_next("put", 403, count=3)   # expired upload URLs
    daemon = daemon_factory([(watched, "app-1")],
                            retry={"max_attempts": 50, "backoff_initial_seconds": 0.05,
                                   "backoff_max_seconds": 0.3, "lookup_grace_seconds": 0.5}).start()
    for n in names:
        write_folder(watched, n, {"input.json": json.dumps({"n": n}), "output/a.txt": n, "logs.txt": "x"})
    wait_for(lambda: all(marker(watched / n) for n in names), 120, "every folder tracked under faults")
    assert daemon.alive()
    stats = cloud.stats()["by_endpoint"]
    assert any(str(code).startswith("5") for ep in stats.values() for code in ep), "faults were injected"
    assert daemon.stop() == 0
    _assert_exactly_once(cloud, watched, names)
    log = daemon.log_path.read_text()
    assert API_KEY not in log
    assert "signature=" not in log


def test_post_answered_after_the_client_timeout_creates_no_duplicate(cloud: FakeCloud, watched: Path,
                                                                     daemon_factory) -> None:
    cloud.set_faults(post_delay_seconds=2.5)
    daemon = daemon_factory([(watched, "app-1")], api={"read_timeout_seconds": 1},
                            retry={"lookup_grace_seconds": 1}).start()
    write_folder(watched, "slow-post", {"input.json": "{}", "output.json": "{}"})
    m = wait_for(lambda: marker(watched / "slow-post"), 30, "tracked")
    assert m["adopted"] is True
    assert daemon.stop() == 0
    assert _runs_per_name(cloud) == Counter({"slow-post": 1})
    assert [r.run_id for r in cloud.runs()] == [m["run_id"]]


def test_auth_outage_pauses_then_resumes_without_failing_anything(cloud: FakeCloud, watched: Path,
                                                                  daemon_factory, tmp_path: Path) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("wrong-key\n")
    key_file.chmod(0o600)
    daemon = daemon_factory([(watched, "app-1")], api={"key_file": str(key_file)},
                            env={"NEXTMV_API_KEY": ""}).start()
    names = [f"a-{i}" for i in range(5)]
    for n in names:
        write_folder(watched, n, {"input.json": "{}", "output.json": "{}"})
    wait_for(lambda: "api_paused" in daemon.names(), 20, "the API pause")
    assert not any((watched / n / FAILED).exists() for n in names)
    assert cloud.runs() == []
    key_file.write_text(API_KEY + "\n")
    wait_for(lambda: all(marker(watched / n) for n in names), 60, "tracked after the key was fixed")
    assert daemon.names().count("api_paused") == 1
    assert "api_resumed" in daemon.names()
    assert daemon.stop() == 0
    _assert_exactly_once(cloud, watched, names)
    assert "wrong-key" not in daemon.log_path.read_text()


def test_unknown_application_pauses_only_that_application(watched: Path, tmp_path: Path, daemon_factory) -> None:
    other = tmp_path / "other"
    other.mkdir()
    with FakeCloud(api_keys=[API_KEY], applications=["good"]) as cloud2:
        config = write_config(tmp_path / "two-apps.yaml", cloud2.url, [(watched, "good"), (other, "missing")],
                              tmp_path / "state2")
        daemon = Daemon(config, tmp_path / "two-apps.log").start()
        try:
            write_folder(other, "m-1", {"input.json": "{}", "output.json": "{}"})
            write_folder(watched, "g-1", {"input.json": "{}", "output.json": "{}"})
            wait_for(lambda: marker(watched / "g-1"), 20, "the good application's folder")
            wait_for(lambda: "application_paused" in daemon.names(), 20, "the missing application paused")
            write_folder(watched, "g-2", {"input.json": "{}", "output.json": "{}"})
            wait_for(lambda: marker(watched / "g-2"), 20, "the good application goes on")
            assert marker(other / "m-1") is None
            assert not (other / "m-1" / FAILED).exists()
            event = next(e for e in daemon.events() if e.get("event") == "application_paused")
            assert "missing" in event["error"] and "not found" in event["error"]
        finally:
            assert daemon.stop() == 0


def _fifo_folder(root: Path) -> Path:
    folder = root / ".tmp-fifo"
    folder.mkdir()
    os.mkfifo(folder / "input.json")
    (folder / "output.json").write_text("{}")
    (folder / "DONE").touch()
    folder.rename(root / "fifo-input")
    return root / "fifo-input"


def test_bad_input_matrix(cloud: FakeCloud, watched: Path, daemon_factory, tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_text('{"secret": 1}')
    many = {f"input/file-{i:04d}.txt": str(i) for i in range(2000)}
    cases: dict[str, tuple[str, str]] = {}   # folder name -> (expected marker, substring of the error or "")

    write_folder(watched, "empty", {})
    cases["empty"] = (FAILED, "no input")
    write_folder(watched, "huge-status", {"input.json": "{}", "output.json": "{}",
                                          "status.json": json.dumps({"description": "x" * (2 << 20)})})
    cases["huge-status"] = (FAILED, "status.json")
    write_folder(watched, "status-not-object", {"input.json": "{}", "output.json": "{}", "status.json": "[1, 2]"})
    cases["status-not-object"] = (FAILED, "object")
    write_folder(watched, "status-bad-json", {"input.json": "{}", "output.json": "{}", "status.json": "{oops"})
    cases["status-bad-json"] = (FAILED, "status.json")
    write_folder(watched, "status-unknown-key", {"input.json": "{}", "output.json": "{}",
                                                 "status.json": '{"colour": "red"}'})
    cases["status-unknown-key"] = (FAILED, "colour")
    _fifo_folder(watched)
    cases["fifo-input"] = (FAILED, "input.json")
    write_folder(watched, "zero-bytes", {"input.json": b"", "output.json": b""})
    cases["zero-bytes"] = (TRACKED, "")
    write_folder(watched, "many-files", {**many, "output.json": "{}"})
    cases["many-files"] = (TRACKED, "")
    spaced = "run with spaces ü 日本"
    write_folder(watched, spaced, {"input.json": "{}", "output.json": "{}"})
    cases[spaced] = (TRACKED, "")
    link_dir = watched / ".tmp-link"
    link_dir.mkdir()
    (link_dir / "input.json").symlink_to(outside)
    (link_dir / "output.json").write_text("{}")
    (link_dir / "DONE").touch()
    link_dir.rename(watched / "symlink-outside")
    cases["symlink-outside"] = (FAILED, "outside")
    raw_name = b"bytes-\xff-name"
    raw = os.path.join(os.fsencode(watched), raw_name)
    os.mkdir(raw + b".tmp")
    for fname in (b"input.json", b"output.json", b"DONE"):
        with open(os.path.join(raw + b".tmp", fname), "wb") as f:
            f.write(b"{}" if fname != b"DONE" else b"")
    os.rename(raw + b".tmp", raw)
    write_folder(watched, "good-after-all", {"input.json": "{}", "output.json": "{}"})
    cases["good-after-all"] = (TRACKED, "")

    daemon = daemon_factory([(watched, "app-1")]).start()
    wait_for(lambda: all((watched / n / m).exists() for n, (m, _) in cases.items()), 60, "every case decided")
    wait_for((Path(os.fsdecode(raw)) / TRACKED).exists, 30, "the non-UTF-8 named folder")
    assert daemon.alive()
    for name, (expected, needle) in cases.items():
        other = TRACKED if expected == FAILED else FAILED
        assert not (watched / name / other).exists(), name
        if expected == FAILED:
            error = json.loads((watched / name / FAILED).read_text())["error"]
            assert needle in error, f"{name}: {error!r}"
    names = _runs_per_name(cloud)
    assert names[spaced] == 1 and names["zero-bytes"] == 1 and names["many-files"] == 1
    assert names["bytes-\ufffd-name"] == 1
    zero = next(r for r in cloud.runs() if r.body["name"] == "zero-bytes")
    zero_input = zero.artifact("input")
    assert zero_input is not None and zero_input.size == 0
    many_run = next(r for r in cloud.runs() if r.body["name"] == "many-files")
    archive = many_run.artifact("input")
    assert archive is not None and archive.data is not None
    with tarfile.open(fileobj=io.BytesIO(archive.data), mode="r:gz") as tar:
        assert len(tar.getnames()) == 2000
    assert sum(names.values()) == 5
    assert daemon.stop() == 0
