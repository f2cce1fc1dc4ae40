"""The control socket: a real AF_UNIX server with a fake handler, and the client `request`."""

from __future__ import annotations

import errno
import json
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for

from watcher.daemon.control_socket import ControlServer, request

Handler = Callable[[dict[str, Any]], dict[str, Any]]
ServerFactory = Callable[..., ControlServer]


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "control.sock"


@pytest.fixture
def serve() -> Iterator[ServerFactory]:
    """serve(path, handle, **kwargs) -> a started ControlServer; all are stopped at teardown and
    their threads must have ended."""
    made: list[ControlServer] = []
    threads_before = set(threading.enumerate())

    def make(path: Path, handle: Handler, **kwargs: Any) -> ControlServer:
        server = ControlServer(path, handle, **kwargs)
        server.start()
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()
    wait_for(lambda: not [t for t in threading.enumerate() if t not in threads_before and t.is_alive()], 5,
             "the control threads to end")


def echo(req: dict[str, Any]) -> dict[str, Any]:
    if req["command"] == "status":
        return {"ok": True, "status": {"state": "running", "queue_depth": 3}}
    if req["command"] == "boom":
        raise RuntimeError("handler bug")
    return {"ok": True, "got": req}


def raw_exchange(path: Path, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.endswith(b"\n") and data.count(b"\n") == 1, data
    answer: dict[str, Any] = json.loads(data)
    return answer


def test_a_request_gets_the_handlers_answer_with_its_arguments(serve: ServerFactory, sock_path: Path) -> None:
    serve(sock_path, echo)
    assert request(sock_path, "status") == {"ok": True, "status": {"state": "running", "queue_depth": 3}}
    assert request(sock_path, "rescan", folder="/runs/a") == {"ok": True,
                                                              "got": {"command": "rescan", "folder": "/runs/a"}}


def test_the_socket_is_created_with_its_parent_and_mode_0660(serve: ServerFactory, sock_path: Path) -> None:
    assert not sock_path.parent.exists()
    serve(sock_path, echo)
    st = sock_path.stat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert [p.name for p in sock_path.parent.iterdir()] == ["control.sock"]   # no temporary name left


def test_a_handler_exception_becomes_an_error_answer_and_the_server_goes_on(
        serve: ServerFactory, sock_path: Path) -> None:
    serve(sock_path, echo)
    answer = request(sock_path, "boom")
    assert answer["ok"] is False
    assert "handler bug" in answer["error"]
    assert request(sock_path, "status")["ok"] is True


@pytest.mark.parametrize(("payload", "error"), [
    (b"not json\n", "not a JSON line"),
    (b"[1, 2]\n", "JSON object"),
    (b'{"no": "command"}\n', '"command"'),
    (b"", "not a JSON line"),
])
def test_a_malformed_request_gets_an_error_answer(serve: ServerFactory, sock_path: Path, payload: bytes,
                                                  error: str) -> None:
    calls: list[dict[str, Any]] = []

    def handle(req: dict[str, Any]) -> dict[str, Any]:
        calls.append(req)
        return {"ok": True}

    serve(sock_path, handle)
    answer = raw_exchange(sock_path, payload)
    assert answer["ok"] is False
    assert error in answer["error"]
    assert calls == []
    assert request(sock_path, "status") == {"ok": True}


def test_values_json_cannot_encode_are_sent_as_text(serve: ServerFactory, sock_path: Path) -> None:
    serve(sock_path, lambda req: {"ok": True, "folder": Path("/runs/a")})
    assert request(sock_path, "status") == {"ok": True, "folder": "/runs/a"}


def test_a_stale_socket_file_is_replaced(serve: ServerFactory, sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock_path))
    dead.close()   # the file stays behind, as after a crash
    with pytest.raises(ConnectionRefusedError):
        request(sock_path, "status")
    serve(sock_path, echo)
    assert request(sock_path, "status")["ok"] is True


def test_a_live_daemons_socket_is_left_alone(serve: ServerFactory, sock_path: Path) -> None:
    serve(sock_path, lambda req: {"ok": True, "who": "first"})
    second = ControlServer(sock_path, lambda req: {"ok": True, "who": "second"})
    with pytest.raises(OSError, match="another process is listening") as caught:
        second.start()
    assert caught.value.errno == errno.EADDRINUSE
    assert request(sock_path, "status") == {"ok": True, "who": "first"}


def test_a_file_that_is_not_a_socket_is_never_removed(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    sock_path.write_text("precious")
    with pytest.raises(FileExistsError):
        ControlServer(sock_path, echo).start()
    assert sock_path.read_text() == "precious"


def test_stop_removes_the_socket_and_requests_then_fail_with_oserror(serve: ServerFactory,
                                                                      sock_path: Path) -> None:
    server = serve(sock_path, echo)
    server.stop()
    assert not sock_path.exists()
    with pytest.raises(FileNotFoundError):
        request(sock_path, "status")
    server.stop()   # idempotent


def test_stop_leaves_a_socket_that_another_server_took_over(serve: ServerFactory, sock_path: Path) -> None:
    first = ControlServer(sock_path, lambda req: {"ok": True, "who": "first"})
    first.start()
    sock_path.unlink()   # as if an operator removed it; a new daemon then takes the path
    serve(sock_path, lambda req: {"ok": True, "who": "second"})
    first.stop()
    assert request(sock_path, "status") == {"ok": True, "who": "second"}


def test_a_silent_client_does_not_block_the_others(serve: ServerFactory, sock_path: Path) -> None:
    serve(sock_path, echo, client_timeout=0.3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(sock_path))   # connects, never sends a line
        assert request(sock_path, "status", timeout=5)["ok"] is True


def test_a_daemon_that_does_not_answer_in_time_raises_timeout(serve: ServerFactory, sock_path: Path) -> None:
    release = threading.Event()

    def slow(req: dict[str, Any]) -> dict[str, Any]:
        release.wait(10)
        return {"ok": True}

    serve(sock_path, slow)
    try:
        with pytest.raises(TimeoutError):
            request(sock_path, "status", timeout=0.2)
    finally:
        release.set()
    assert request(sock_path, "status")["ok"] is True
