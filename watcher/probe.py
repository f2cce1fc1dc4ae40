"""Probing a paused API: is the key accepted again, is the API reachable, does the application exist?

The service calls `Prober.run()` from its main loop. Each due probe is one `GET
/v1/applications/{id}` without retries; its answer opens the pause, keeps it closed with a
longer wait, or (a global pause answered with 404) turns it into a pause of that application
only. A paused key is re-read from its source first, so fixing the key file or credential is
enough to resume.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from watcher.client import NextmvClient
from watcher.config import Config, resolve_api_key
from watcher.errors import ApiError, ApplicationNotFound, AuthError, ConfigError
from watcher.logs import REDACTOR
from watcher.retry import GLOBAL, ApiGate

log = structlog.get_logger("watcher.probe")


class Prober:
    def __init__(self, config: Config, client: NextmvClient, gate: ApiGate, *,
                 requeue: Callable[[Path], None], clock: Callable[[], float]) -> None:
        self.config = config
        self.client = client
        self.gate = gate
        self.requeue = requeue
        self.clock = clock

    def run(self) -> None:
        for scope, pause in self.gate.due_probes():
            app = scope if scope != GLOBAL else self.config.watch[0].application_id
            if pause.reason == "auth":
                self.reload_key()
            try:
                self.client.get_application(app, attempts=1)
            except AuthError as exc:
                self.gate.still_closed(scope, "auth", str(exc))
                continue
            except ApplicationNotFound as exc:
                if scope == GLOBAL:
                    self.reopen(GLOBAL)
                    if self.gate.close(app, "application_not_found", str(exc)):
                        log.error("application_paused", application_id=app, error=str(exc))
                else:
                    self.gate.still_closed(scope, "application_not_found", str(exc))
                continue
            except ApiError as exc:
                self.gate.still_closed(scope, "unreachable", str(exc))
                continue
            self.reopen(scope)

    def reopen(self, scope: str) -> None:
        pause, parked = self.gate.opened(scope)
        if pause is None:
            return
        log.info("api_resumed", scope="all" if scope == GLOBAL else scope,
                 paused_for=round(self.clock() - pause.since, 1), reason=pause.reason, folders=len(parked))
        for folder in parked:
            self.requeue(folder)

    def reload_key(self) -> None:
        try:
            key, _ = resolve_api_key(self.config.api)
        except ConfigError:
            return
        REDACTOR.add_secret(key)
        self.client.set_api_key(key)
