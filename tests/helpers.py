"""Shared test helpers: waiting on conditions, writing run folders, running the real daemon process."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

TRACKED = ".nextmv-tracked.json"
FAILED = ".nextmv-failed.json"
API_KEY = "test-key"
WRONG_KEY = "wrong-key-0123456789"


@dataclass(frozen=True)
class Result:
    """What a command did: its exit code and what it printed (see the `run` fixture)."""

    code: int
    out: str
    err: str


Run = Callable[..., Result]


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.02) -> Any:
    """Poll `condition` every `interval` seconds until it returns a truthy value; fail the test after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # sleep-ok: the polling interval of wait_for itself, bounded by its timeout


def write_folder(root: Path, name: str, files: dict[str, str | bytes], *, marker: str | None = "DONE",
                 via_dot: bool = True) -> Path:
    """Write a run folder the safe way (a dot-folder renamed into place), with the marker last."""
    target = root / name
    work = root / f".tmp-{name}" if via_dot else target
    work.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    if marker:
        (work / marker).touch()
    if via_dot:
        work.rename(target)
    return target


def marker(folder: Path, name: str = TRACKED) -> dict[str, Any] | None:
    try:
        return json.loads((folder / name).read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_config(path: Path, cloud_url: str, watched: list[tuple[Path, str]], state_dir: Path,
                 **overrides: Any) -> Path:
    config: dict[str, Any] = {
        "api": {"url": cloud_url, "connect_timeout_seconds": 2, "read_timeout_seconds": 5},
        "state_dir": str(state_dir),
        "watch": [{"path": str(p), "application_id": app} for p, app in watched],
        "completion": {"marker": "DONE"},
        "workers": 4,
        "processes": 1,   # the tests of several processes say so
        "retry": {"max_attempts": 10, "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.5},
        "logging": {"format": "json", "level": "debug"},
        "reconcile_seconds": 60,
        "drain_timeout_seconds": 10,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config))
    return path


class Daemon:
    """The real `nextmv-watcher run` process; stderr goes to a file that `events()` parses.

    By default it runs as the test's own user with the test's umask. `user`/`group` (numeric, needs
    root) run it as another user with no supplementary groups, `umask` sets its umask, and `python`
    is the interpreter (one that user can run).
    """

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None, *,
                 user: int | None = None, group: int | None = None, umask: int = -1,
                 python: str = sys.executable) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**os.environ, "NEXTMV_API_KEY": API_KEY, **(env or {})}
        self.user = user
        self.group = group
        self.umask = umask
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([self.python, "-m", "watcher", "run", "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=self._log, env=self.env,
                                     user=self.user, group=self.group,
                                     extra_groups=[] if self.user is not None else None, umask=self.umask)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "<unparsed>", "line": line})
        return out

    def names(self) -> list[str]:
        return [e.get("event", "") for e in self.events()]

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_for(lambda: "startup_scan_done" in self.names(), timeout, "daemon start-up scan")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()


_PYTHONS: dict[int, tuple[list[str], dict[str, str]] | None] = {}


def python_for(uid: int) -> tuple[list[str], dict[str, str]] | None:
    """A Python command and environment with which user `uid` can import this project, or None.

    This interpreter first; when `uid` may not run it (pyenv under a 0700 home), the system's Python of
    the same version with this venv's packages and the project on PYTHONPATH (pure-Python packages and
    the same ABI, so they import)."""
    if uid not in _PYTHONS:
        repo = str(Path(__file__).resolve().parent.parent)
        site = [p for p in sys.path if p.endswith("site-packages")]
        system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [([sys.executable], {}), ([system], {"PYTHONPATH": os.pathsep.join([repo, *site])})]
        _PYTHONS[uid] = None
        for cmd, env in candidates:
            try:
                subprocess.run([*cmd, "-c", "import watcher.cli"], user=uid, group=uid, check=True, timeout=60,
                               capture_output=True, env={**os.environ, **env}, cwd="/")
            except (OSError, subprocess.SubprocessError):
                continue
            _PYTHONS[uid] = (cmd, env)
            break
    return _PYTHONS[uid]


# -- the metrics listener's connections ---------------------------------------------------------------

METRICS_REFUSED = "nextmv_watcher_metrics_connections_refused_total"


def connect_many(port: int, n: int) -> list[socket.socket]:
    """`n` idle TCP connections to 127.0.0.1:`port`."""
    return [socket.create_connection(("127.0.0.1", port), timeout=10.0) for _ in range(n)]


def closed_by_server(socks: list[socket.socket], seen: set[socket.socket]) -> set[socket.socket]:
    """Add to `seen` the sockets whose peer has closed (EOF or reset); never blocks."""
    readable, _, _ = select.select([s for s in socks if s not in seen], [], [], 0)
    for s in readable:
        try:
            if s.recv(1) == b"":
                seen.add(s)
        except ConnectionError:
            seen.add(s)
    return seen


def scrape_ok(port: int) -> bool:
    """Whether GET /metrics on 127.0.0.1:`port` answers 200 (False when the connection is refused)."""
    try:
        with httpx.Client(timeout=5.0) as client:
            return client.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
    except httpx.TransportError:   # refused: the server closed the connection unserved
        return False


class NotifySocket:
    """The receiving end of $NOTIFY_SOCKET, as systemd has it: every line received, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.path = path
        self.lines: list[str] = []
        self._counted = 0

    def received(self) -> list[str]:
        while True:
            try:
                self.lines += self.sock.recv(65536).decode().splitlines()
            except BlockingIOError:
                return self.lines

    def pings(self) -> int:
        """WATCHDOG=1 lines received since the last call."""
        lines = self.received()
        new, self._counted = lines[self._counted:], len(lines)
        return new.count("WATCHDOG=1")


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate and its key for `name` (an IP address or a host name), made by openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    san = f"IP:{name}" if name.replace(".", "").isdigit() else f"DNS:{name}"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}", "-addext",
         f"subjectAltName={san}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
