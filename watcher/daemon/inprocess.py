"""Serving a Service until it stops, and process 0 of `processes`: the supervisor's own share of the work.

`serve(service)` starts a Service, runs it until a stop is requested and drains it; its result is the
exit code (2 when a listener cannot bind, naming it; 1 when a watched path cannot be watched at all).
`run` serves the daemon on the main thread; the supervisor serves its own process's share on a thread,
through `InProcess`, which it drives as it drives the processes it starts (`subprocess.Popen`): `poll`,
`send_signal`, `wait`, `kill`. So `processes: N` is N interpreters, not N + 1: the supervisor's own
(about 40 MB with the daemon's libraries) does a share of the work too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from watcher.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, ListenerError

if TYPE_CHECKING:
    from watcher.daemon.service import Service

log = structlog.get_logger("watcher.daemon.inprocess")


def serve(service: Service) -> int:
    """Start `service`, run it until a stop is requested, drain it. The exit code."""
    try:
        service.start()
    except ListenerError as exc:   # another process holds the address: a restart would not help
        log.error("start_failed", error=str(exc), key=exc.key, address=exc.address)
        service.shutdown()
        return EXIT_USAGE
    except OSError as exc:
        log.error("start_failed", error=str(exc))
        service.shutdown()
        return EXIT_FAILED
    service.run()
    return EXIT_OK


class InProcess:
    """A Service built by `build` and served on a thread of this process, driven like a child process."""

    def __init__(self, build: Callable[[], Service], name: str) -> None:
        self.pid = os.getpid()
        self.returncode: int | None = None
        self._build = build
        self._service: Service | None = None
        self._requests: list[int] = []   # signals sent before the service was built
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        code = EXIT_FAILED
        try:
            try:
                service = self._build()
            except ConfigError as exc:   # the file changed under the supervisor: as a process would exit
                log.error("start_failed", error=str(exc))
                code = EXIT_USAGE
                return
            with self._lock:
                self._service, early = service, self._requests
            for sig in early:
                self._deliver(service, sig)
            code = serve(service)
        except Exception:   # a bug: the supervisor sees this process exit, as it would see a crash
            log.exception("process_crashed", hint="the daemon stops; systemd starts it again")
        finally:
            self.returncode = code

    def poll(self) -> int | None:
        return None if self._thread.is_alive() else self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock:
            service = self._service
            if service is None:
                self._requests.append(sig)
                return
        self._deliver(service, sig)

    @staticmethod
    def _deliver(service: Service, sig: int) -> None:
        if sig == signal.SIGHUP:
            service.request_reload()
        elif sig == signal.SIGKILL:
            service.request_abort()
        else:   # SIGTERM, SIGINT: drain
            service.request_stop()

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired(self._thread.name, timeout or 0.0)
        assert self.returncode is not None, "set before the thread ends"
        return self.returncode
