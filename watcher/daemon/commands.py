"""What the daemon answers on its control socket (`Service.handle_control`).

    identify  nothing more than the answer's "daemon" (every answer carries it)
    status    `status --json`
    rescan    a full reconcile of the watched paths, at the next tick
    retried   `nextmv-watcher retry` reset these folders' failures: count them, queue them
    metrics   the Prometheus text of /metrics (the supervisor's merged view, `processes` > 1)
    health    /healthz's (healthy, details), likewise
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from watcher.daemon.service import Service


def handle(service: Service, request: dict[str, Any]) -> dict[str, Any]:
    command = request.get("command")
    if command == "identify":   # the answer's "daemon" says it all
        return {"ok": True}
    if command == "status":
        return {"ok": True, "status": service.status()}
    if command == "rescan":
        service.rescan("requested over the control socket", full=True)
        return {"ok": True}
    if command == "retried":
        config = service.config
        folders = [Path(f) for f in request.get("folders") or () if isinstance(f, str)]
        known = [(f, w.application_id) for f in folders
                 if (w := config.watch_for(f)) is not None and service.index.owns(f)]   # a shard: its own
        service.outcomes.retried_manually(known)
        for folder, _ in known:
            service.index.offer(folder)
        return {"ok": True, "retried": len(known)}
    if command == "metrics":
        return {"ok": True, "text": service.metrics.render().decode()}
    if command == "health":
        healthy, details = service.health()
        return {"ok": True, "healthy": healthy, "details": details}
    return {"ok": False, "error": f"unknown command {command!r}"}
