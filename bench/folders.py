"""Run folders on disk: small runs, large outputs, and the cached 100,000-folder backlog tree.

Everything lives under bench/.work. Large data and big trees are generated once and reused:
a `.complete` stamp beside a tree records the parameters it was built with.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from bench.common import APP, WORK, fresh_dir

INPUT = b'{"stops": [{"id": "a", "lat": 52.52, "lon": 13.40}, {"id": "b", "lat": 52.50, "lon": 13.38}]}\n'
OUTPUT = b'{"solution": {"routes": [["a", "b"]]}, "statistics": {"result": {"value": 42}}}\n'
MARKER = "DONE"
TRACKED = ".nextmv-tracked.json"
STAMP = ".complete"


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_run(folder: Path, *, marker: bool = True, tracked: bool = False) -> None:
    """A small complete run folder: input.json, output.json, then the marker (optionally tracked)."""
    base = os.fspath(folder)
    os.mkdir(base)
    _write(base + "/input.json", INPUT)
    _write(base + "/output.json", OUTPUT)
    if marker:
        _write(base + "/" + MARKER, b"")
    if tracked:
        _write(base + "/" + TRACKED, json.dumps({
            "run_id": f"run-old-{folder.name}", "application_id": APP,
            "tracked_at": "2026-01-01T00:00:00.000Z"}).encode())


def small_runs(root: Path, n: int, prefix: str = "run") -> list[Path]:
    """`n` complete small run folders in a fresh `root`."""
    fresh_dir(root)
    folders = [root / f"{prefix}-{i:05d}" for i in range(n)]
    for folder in folders:
        write_run(folder)
    return folders


def tracked_count(folders: Iterable[Path]) -> int:
    return sum(1 for f in folders if os.path.exists(os.path.join(f, TRACKED)))


def read_marker(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads((folder / TRACKED).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def reset_state(folders: Iterable[Path]) -> None:
    """Remove every `.nextmv-*` file the daemon left in `folders`."""
    for folder in folders:
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.startswith(".nextmv-"):
                    os.unlink(entry.path)


# --- large data ------------------------------------------------------------------------------

def _random_chunks(total: int, chunk: int = 1 << 24) -> Iterator[bytes]:
    left = total
    while left > 0:
        n = min(chunk, left)
        yield os.urandom(n)
        left -= n


def big_json(size: int, directory: Path = WORK / "data") -> Path:
    """A valid JSON file of exactly `size` bytes, {"blob": "<base64 of random bytes>"} (incompressible)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"output-{size}.json"
    if path.exists() and path.stat().st_size == size:
        return path
    head, tail = b'{"blob": "', b'"}\n'
    body = size - len(head) - len(tail)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(head)
        written = 0
        for raw in _random_chunks(body * 3 // 4 + 3):
            piece = base64.b64encode(raw)[: body - written]
            f.write(piece)
            written += len(piece)
            if written >= body:
                break
        f.write(b"A" * (body - written))
        f.write(tail)
    tmp.rename(path)
    return path


def big_parts(total: int, parts: int, directory: Path = WORK / "data") -> list[Path]:
    """`parts` files of random bytes adding up to `total` bytes."""
    target = directory / f"parts-{total}-{parts}"
    stamp = target / STAMP
    files = [target / f"part-{i:02d}.bin" for i in range(parts)]
    if stamp.exists():
        return files
    fresh_dir(target)
    each = total // parts
    for path in files:
        with open(path, "wb") as f:
            for chunk in _random_chunks(each):
                f.write(chunk)
    stamp.write_text(str(time.time()))
    return files


def big_file_run(folder: Path, data: Path) -> None:
    """A run folder whose output.json is `data` (hard-linked, so nothing is copied)."""
    folder.mkdir(parents=True)
    _write(os.fspath(folder / "input.json"), INPUT)
    os.link(data, folder / "output.json")
    _write(os.fspath(folder / MARKER), b"")


def big_dir_run(folder: Path, parts: list[Path]) -> None:
    """A run folder whose output/ directory holds `parts` (hard-linked)."""
    (folder / "output").mkdir(parents=True)
    _write(os.fspath(folder / "input.json"), INPUT)
    for part in parts:
        os.link(part, folder / "output" / part.name)
    _write(os.fspath(folder / MARKER), b"")


# --- the backlog tree ------------------------------------------------------------------------

def backlog_tree(total: int, pending: int, log: Callable[[str], None] = print) -> tuple[Path, list[Path]]:
    """`total` run folders, all but `pending` of them already tracked, cached under bench/.work.

    Pending folders are spread evenly through the tree (every k-th name). Returns the watched root and
    the pending folders, whose daemon state is reset on every call.
    """
    base = WORK / f"backlog-{total}-{pending}"
    root = base / "root"
    stamp = base / STAMP
    every = total // pending
    pending_names = [f"r-{i:06d}" for i in range(0, total, every)][:pending]
    if not stamp.exists():
        log(f"  generating {total} run folders under {root} (cached for later runs) ...")
        started = time.monotonic()
        fresh_dir(base)
        root.mkdir()
        pend = set(pending_names)
        for i in range(total):
            name = f"r-{i:06d}"
            write_run(root / name, tracked=name not in pend)
        stamp.write_text(json.dumps({"total": total, "pending": pending}))
        log(f"  generated in {time.monotonic() - started:.0f} s")
    folders = [root / n for n in pending_names]
    reset_state(folders)
    return root, folders


def tracked_tree(total: int, log: Callable[[str], None] = print) -> Path:
    """`total` run folders, every one already tracked (the idle measurement), cached."""
    base = WORK / f"tracked-{total}"
    root = base / "root"
    stamp = base / STAMP
    if not stamp.exists():
        log(f"  generating {total} tracked run folders under {root} (cached) ...")
        fresh_dir(base)
        root.mkdir()
        for i in range(total):
            write_run(root / f"t-{i:06d}", tracked=True)
        stamp.write_text(json.dumps({"total": total}))
    return root
