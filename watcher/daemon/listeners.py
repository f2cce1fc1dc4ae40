"""The daemon's two listeners, started, moved on a reload and stopped together.

The control socket (`control_socket`: `nextmv-watcher status`, `retry`) and the metrics/health HTTP
listener (`metrics.listen`). Each is bound one way (`_bind`): a listener that cannot be bound raises
`ListenerError` naming the key and the address (`metrics.listen 127.0.0.1:9464: address already in
use`). At start-up that stops the start (the daemon exits 2, which the unit does not restart). On a
reload that moves either, the new one is bound first (`prepare`); if it cannot be, the reload is
refused whole and the running ones stay; otherwise `switch` closes the old ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from watcher.config import Config
from watcher.daemon.control_socket import ControlServer, Identify
from watcher.daemon.metrics import Exposition, HealthServer
from watcher.errors import ListenerError

log = structlog.get_logger("watcher.daemon.listeners")

Handler = Callable[[dict[str, Any]], dict[str, Any]]
Health = Callable[[], tuple[bool, dict[str, Any]]]
T = TypeVar("T")


@dataclass
class Prepared:
    """Listeners bound for a new configuration, not switched to yet (None: that one does not change)."""

    control: ControlServer | None = None
    health: HealthServer | None = None
    control_moves: bool = False
    health_moves: bool = False


class Listeners:
    def __init__(self, handle_control: Handler, metrics: Exposition, health: Health,
                 identify: Identify | None = None) -> None:
        self._handle = handle_control
        self._identify = identify
        self._metrics = metrics
        self._health = health
        self.control: ControlServer | None = None
        self.health_server: HealthServer | None = None

    def start(self, config: Config) -> None:
        """Listen as `config` says. Raises ListenerError (having closed whatever it had bound)."""
        self.control = self._control(config)
        try:
            self.health_server = self._health_server(config)
        except ListenerError:
            self.control.stop()
            self.control = None
            raise

    def prepare(self, old: Config, new: Config) -> Prepared:
        """Bind what `new` moves. Raises ListenerError (having closed whatever it had bound)."""
        prepared = Prepared(control_moves=_socket(old) != _socket(new),
                            health_moves=old.metrics.listen != new.metrics.listen)
        if prepared.control_moves:
            prepared.control = self._control(new)
        try:
            if prepared.health_moves:
                prepared.health = self._health_server(new)
        except ListenerError:
            if prepared.control is not None:
                prepared.control.stop()
            raise
        return prepared

    def switch(self, prepared: Prepared) -> None:
        """Close the listeners `prepared` replaces and keep the new ones."""
        if prepared.control_moves:
            old, self.control = self.control, prepared.control
            if old is not None:
                old.stop()
        if prepared.health_moves:
            old_health, self.health_server = self.health_server, prepared.health
            if old_health is not None:
                old_health.stop()

    def stop(self) -> None:
        if self.control is not None:
            self.control.stop()
        if self.health_server is not None:
            self.health_server.stop()

    def _control(self, config: Config) -> ControlServer:
        server = ControlServer(_socket(config), self._handle, identify=self._identify)
        return _bind("control_socket", str(_socket(config)), server.start, server)

    def _health_server(self, config: Config) -> HealthServer | None:
        if not config.metrics.listen:
            return None
        server = HealthServer(config.metrics.listen, self._metrics, self._health)
        _bind("metrics.listen", config.metrics.listen, server.start, server)
        log.info("metrics_listening", listen=config.metrics.listen, port=server.port)
        return server


def _bind(key: str, address: str, start: Callable[[], None], server: T) -> T:
    """`start()` the listener `server`; an OSError becomes ListenerError naming `key` and `address`."""
    try:
        start()
    except OSError as exc:
        error = exc.strerror or str(exc)
        raise ListenerError(key, address, error[:1].lower() + error[1:]) from None
    return server


def _socket(config: Config) -> Path:
    return config.control_socket or config.state_dir / "control.sock"
