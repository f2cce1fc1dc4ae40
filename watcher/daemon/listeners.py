"""The daemon's two listeners, started, moved on a reload and stopped together.

The control socket (`control_socket`: `nextmv-watcher status`, `retry`) and the metrics/health HTTP
listener (`metrics.listen`). At start-up a control socket that cannot be made is a warning (`status`
falls back to scanning) and a metrics address that cannot be bound stops the start. On a reload that
moves either, the new one is bound first (`prepare`); if it cannot be, the reload is refused whole
(`ReloadRefused`, naming the key and the address) and the running ones stay; otherwise `switch`
closes the old ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from watcher.config import Config
from watcher.daemon.control_socket import ControlServer
from watcher.daemon.metrics import HealthServer, Metrics

log = structlog.get_logger("watcher.daemon.listeners")

Handler = Callable[[dict[str, Any]], dict[str, Any]]
Health = Callable[[], tuple[bool, dict[str, Any]]]


class ReloadRefused(Exception):
    """A new listener could not be bound: the reload is refused and the running listeners stay."""

    def __init__(self, key: str, address: str, error: str) -> None:
        self.key, self.address, self.error = key, address, error
        super().__init__(f"{key}: cannot listen on {address}: {error}")


@dataclass
class Prepared:
    """Listeners bound for a new configuration, not switched to yet (None: that one does not change)."""

    control: ControlServer | None = None
    health: HealthServer | None = None
    control_moves: bool = False
    health_moves: bool = False


class Listeners:
    def __init__(self, handle_control: Handler, metrics: Metrics, health: Health) -> None:
        self._handle = handle_control
        self._metrics = metrics
        self._health = health
        self.control: ControlServer | None = None
        self.health_server: HealthServer | None = None

    def start(self, config: Config) -> None:
        """Listen as `config` says. Raises OSError when the metrics address cannot be bound."""
        try:
            self.control = self._control(config)
        except OSError as exc:
            log.warning("control_socket_failed", path=str(config.control_socket), error=str(exc),
                        hint="`nextmv-watcher status` will fall back to scanning")
        self.health_server = self._health_server(config)

    def prepare(self, old: Config, new: Config) -> Prepared:
        """Bind what `new` moves. Raises ReloadRefused (having closed whatever it had bound)."""
        prepared = Prepared(control_moves=_socket(old) != _socket(new),
                            health_moves=old.metrics.listen != new.metrics.listen)
        try:
            if prepared.control_moves:
                prepared.control = self._control(new)
        except OSError as exc:
            raise ReloadRefused("control_socket", str(_socket(new)), exc.strerror or str(exc)) from None
        try:
            if prepared.health_moves:
                prepared.health = self._health_server(new)
        except OSError as exc:
            if prepared.control is not None:
                prepared.control.stop()
            raise ReloadRefused("metrics.listen", str(new.metrics.listen), exc.strerror or str(exc)) from None
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
        server = ControlServer(_socket(config), self._handle)
        server.start()
        return server

    def _health_server(self, config: Config) -> HealthServer | None:
        if not config.metrics.listen:
            return None
        server = HealthServer(config.metrics.listen, self._metrics, self._health)
        server.start()
        log.info("metrics_listening", listen=config.metrics.listen, port=server.port)
        return server


def _socket(config: Config) -> Path:
    return config.control_socket or config.state_dir / "control.sock"
