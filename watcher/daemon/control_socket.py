"""The daemon's local control socket: one JSON request line in, one JSON response line out.

    client --{"command": "status", ...}\\n--> ControlServer --handle(request)--> {"ok": true, ...}\\n

`ControlServer` listens on an AF_UNIX stream socket (mode 0o660, so the socket's group may
ask too) and answers connections one at a time on its own daemon thread; whatever `handle`
raises becomes `{"ok": false, "error": ...}` and the thread goes on. Every answer carries
`"daemon": identify()` (the daemon's pid, configuration file, state_dir and watched paths; see
`watcher.daemon.identity`), so that a command can tell whether the daemon that answered is the one
it means. `request` is the client side, used by `nextmv-watcher status`, `retry` and `forget`; it
raises OSError when no daemon listens, so callers fall back to working without one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("watcher.daemon.control_socket")

MAX_LINE_BYTES = 1 << 20   # a request or response longer than this is refused
SOCKET_MODE = 0o660

Handler = Callable[[dict[str, Any]], dict[str, Any]]
Identify = Callable[[], dict[str, Any]]


class ControlServer:
    """Serves `handle` on the unix socket `path`; `identify()` is added to every answer as "daemon".
    `client_timeout` bounds how long one connection may take to send its request and read the answer,
    so a stuck client cannot block the others."""

    def __init__(self, path: Path, handle: Handler, *, identify: Identify | None = None,
                 client_timeout: float = 2.0) -> None:
        self.path = path
        self.handle = handle
        self.identify = identify
        self.client_timeout = client_timeout
        self._sock: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None

    def start(self) -> None:
        """Listen on `path` and serve on a daemon thread.

        A stale socket file (nobody accepts on it) is replaced. Raises FileExistsError when `path`
        exists and is not a socket, OSError(EADDRINUSE) when another process answers on it, and
        OSError when the socket cannot be created (path too long, directory not writable); the
        strerror of each says what, without the path."""
        if self._thread is not None:
            raise RuntimeError("control server already started")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _refuse_if_in_use(self.path)
        # Bind under a temporary name, set the mode, then rename into place: the socket is never
        # reachable at `path` with the umask's mode, and a stale file is replaced atomically.
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(tmp))
            os.chmod(tmp, SOCKET_MODE)
            sock.listen(16)
            os.replace(tmp, self.path)
            self._inode = self.path.stat().st_ino
        except OSError:
            sock.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="control-socket", daemon=True)
        self._thread.start()
        log.debug("control_socket_listening", path=str(self.path))

    def stop(self) -> None:
        """Stop serving, close the socket and remove its file (unless another process replaced it)."""
        thread, self._thread = self._thread, None
        if thread is not None and self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            thread.join(timeout=self.client_timeout + 5.0)
        for s in (self._sock, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._sock = self._wake_r = self._wake_w = None
        if self._inode is not None:
            with contextlib.suppress(OSError):
                if self.path.stat().st_ino == self._inode:
                    self.path.unlink()
            self._inode = None

    def _serve(self) -> None:
        assert self._sock is not None and self._wake_r is not None
        listener, wake = self._sock, self._wake_r
        while True:
            try:
                readable, _, _ = select.select([listener, wake], [], [])
            except OSError as exc:
                log.error("control_socket_failed", error=str(exc))
                return
            if wake in readable:
                return
            try:
                conn, _ = listener.accept()
            except OSError as exc:
                log.debug("control_accept_failed", error=str(exc))
                continue
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        """Read one request line, answer one line. Never raises: a broken client is only logged."""
        try:
            conn.settimeout(self.client_timeout)
            line = _read_line(conn)
            response = self._respond(line)
            conn.sendall(response)
        except OSError as exc:  # the client went away or was too slow: nothing to answer
            log.debug("control_client_failed", error=str(exc))

    def _respond(self, line: bytes) -> bytes:
        try:
            request = json.loads(line)
        except ValueError:
            return self._encode({"ok": False, "error": "the request is not a JSON line"})
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return self._encode({"ok": False, "error": 'the request must be a JSON object with a "command"'})
        try:
            return self._encode(self.handle(request))
        except Exception as exc:  # a bug in a handler must not stop the control socket; logged with its trace
            log.exception("control_request_failed", command=request["command"])
            return _encode({"ok": False, "error": f"{type(exc).__name__}: {exc}"})

    def _encode(self, response: dict[str, Any]) -> bytes:
        return _encode(response if self.identify is None else {**response, "daemon": self.identify()})


def request(path: Path, command: str, timeout: float = 2.0, **args: Any) -> dict[str, Any]:
    """Send `command` (with `args` as further keys) to the daemon listening on `path`; return its answer.

    Raises OSError when no daemon answers: FileNotFoundError (no socket), ConnectionRefusedError (a stale
    socket), TimeoutError (it did not answer within `timeout` seconds), ConnectionError (it closed the
    connection or answered something that is not a JSON object)."""
    payload = _encode({**args, "command": command})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(payload)
        line = _read_line(sock)
    if not line:
        raise ConnectionError(f"{path}: the daemon closed the connection without answering")
    try:
        response = json.loads(line)
    except ValueError:
        raise ConnectionError(f"{path}: the daemon's answer is not JSON") from None
    if not isinstance(response, dict):
        raise ConnectionError(f"{path}: the daemon's answer is not a JSON object")
    return response


def _refuse_if_in_use(path: Path) -> None:
    """Leave a live daemon's socket alone; anything at `path` that is not a socket is not ours to remove."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "it exists and is not a socket", os.fspath(path))
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fspath(path))
    except OSError:
        return   # stale: nobody accepts on it; start() replaces it
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another process is listening on it (is a daemon already running?)")


def _read_line(sock: socket.socket) -> bytes:
    """Bytes up to the first newline (or the end of the stream). Raises ConnectionError past MAX_LINE_BYTES."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        newline = chunk.find(b"\n")
        if newline >= 0:
            chunks.append(chunk[:newline])
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_LINE_BYTES:
            raise ConnectionError(f"line longer than {MAX_LINE_BYTES} bytes")
    return b"".join(chunks)


def _encode(message: dict[str, Any]) -> bytes:
    """One JSON line. Values JSON cannot encode (a Path, a datetime) are sent as their text."""
    return json.dumps(message, default=str).encode() + b"\n"
