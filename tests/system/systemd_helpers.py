"""What the system tests do inside the container: the emulator's admin API, the daemon's
configuration, run folders, `systemctl show` and the journal."""

from __future__ import annotations

import json
from typing import Any

import yaml
from helpers import wait_for
from nspawn import Container

UNIT = "nextmv-watcher.service"
API_KEY = "system-test-key"
CLOUD_PORT = 8765
KNOWN_APP = "app-1"
RUNS = "/srv/nextmv/runs"
TRACKED = ".nextmv-tracked.json"
EXIT_LINE = "nextmv-watcher main process:"   # how the daemon ended, from the tests' ExecStopPost= (conftest.py)

# Inside, with Debian's python3 (stdlib only): GET (or POST a JSON body to) the emulator's /_fake/<path>.
_CLOUD_PY = f"""\
import sys, urllib.request
body = sys.argv[2].encode() if len(sys.argv) > 2 else None
request = urllib.request.Request("http://127.0.0.1:{CLOUD_PORT}/_fake/" + sys.argv[1], data=body,
                                 headers={{"Content-Type": "application/json"}})
print(urllib.request.urlopen(request, timeout=10).read().decode())
"""


def cloud(box: Container, path: str, body: dict[str, Any] | None = None, *, check: bool = True) -> Any:
    """The emulator's admin endpoint /_fake/<path> (POST when `body` is given), decoded; None when it
    does not answer and `check` is false."""
    args = [path] if body is None else [path, json.dumps(body)]
    result = box.run("python3", "-c", _CLOUD_PY, *args, check=check)
    return json.loads(result.out) if result.code == 0 else None


def run_names(box: Container) -> list[str]:
    """The name of every run the emulator recorded, oldest first (a folder's name is its run's name)."""
    return [run["body"]["name"] for run in cloud(box, "runs")]


def configure(box: Container, watch: list[tuple[str, str]], level: str | None = None, **extra: Any) -> None:
    """Write /etc/nextmv-watcher/config.yaml: these (path, application) pairs, marker mode, the emulator;
    state_dir and control_socket left to their defaults, as the README says."""
    config: dict[str, Any] = {
        "api": {"url": f"http://127.0.0.1:{CLOUD_PORT}"},
        "watch": [{"path": path, "application_id": app} for path, app in watch],
        "completion": {"marker": "DONE"},
    }
    if level is not None:
        config["logging"] = {"level": level}
    config.update(extra)
    box.write("/etc/nextmv-watcher/config.yaml", yaml.safe_dump(config, sort_keys=False))


def drop(box: Container, root: str, name: str) -> str:
    """Drop a complete run folder as a producer does: written as a dot-folder owned by the daemon's
    user, with the DONE marker last, then renamed into place. Returns its path."""
    box.sh("""
        work="$1/.tmp-$2"
        mkdir "$work"
        printf '{"folder": "%s"}' "$2" > "$work/input.json"
        printf '{"solution": 42}' > "$work/output.json"
        touch "$work/DONE"
        chown -R nextmv-watcher:nextmv-watcher "$work"
        mv "$work" "$1/$2"
    """, root, name)
    return f"{root}/{name}"


def tracked(box: Container, folder: str) -> bool:
    """Whether the daemon wrote the folder's tracked marker in the folder itself."""
    return box.run("test", "-f", f"{folder}/{TRACKED}", check=False).code == 0


def wait_tracked(box: Container, folder: str, timeout: float = 60.0) -> None:
    wait_for(lambda: tracked(box, folder), timeout, f"{folder} to be tracked (its {TRACKED})", interval=0.25)


def show(box: Container, *properties: str) -> dict[str, str]:
    """`systemctl show` of the daemon's unit: these properties."""
    out = box.run("systemctl", "show", UNIT, *(f"--property={p}" for p in properties)).out
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def daemon_reload(box: Container) -> None:
    box.run("systemctl", "daemon-reload")


class Journal:
    """The journal inside the container, as `journalctl -o json` shows it."""

    def __init__(self, box: Container) -> None:
        self.box = box

    def cursor(self) -> str:
        """The newest entry's cursor: `entries(after=...)` then shows only what comes next."""
        out = self.box.run("journalctl", "--output=json", "--lines=1", "--no-pager").out
        return str(json.loads(out.splitlines()[-1])["__CURSOR"])

    def entries(self, *, unit: str = UNIT, after: str | None = None,
                priority: str | None = None) -> list[dict[str, Any]]:
        """The unit's entries, oldest first (its processes' lines and systemd's messages about it),
        each with MESSAGE as text and `event` (the daemon's JSON line, decoded, or None)."""
        argv = ["journalctl", f"--unit={unit}", "--output=json", "--no-pager"]
        if after is not None:
            argv.append(f"--after-cursor={after}")
        if priority is not None:
            argv.append(f"--priority={priority}")
        entries = []
        for line in self.box.run(*argv).out.splitlines():
            entry = json.loads(line)
            message = entry.get("MESSAGE", "")
            if isinstance(message, list):   # journald gives bytes that are not UTF-8 as a list of ints
                message = bytes(message).decode("utf-8", "replace")
            entry["MESSAGE"] = message
            entry["event"] = _event(message)
            entries.append(entry)
        return entries

    def events(self, name: str, *, after: str | None = None, **fields: Any) -> list[dict[str, Any]]:
        """The daemon's events called `name` whose fields have these values."""
        return [e["event"] for e in self.entries(after=after)
                if e["event"] and e["event"].get("event") == name
                and all(e["event"].get(k) == v for k, v in fields.items())]

    def messages(self, text: str, *, after: str | None = None) -> list[str]:
        """The unit's entries (systemd's included) whose message contains `text`."""
        return [e["MESSAGE"] for e in self.entries(after=after) if text in e["MESSAGE"]]

    def wait_event(self, name: str, *, after: str | None = None, timeout: float = 60.0,
                   **fields: Any) -> dict[str, Any]:
        found = wait_for(lambda: self.events(name, after=after, **fields), timeout,
                         f"the journal to show {name} {fields or ''}", interval=0.25)
        return found[0]  # type: ignore[no-any-return]


def _event(message: str) -> dict[str, Any] | None:
    if not message.startswith("{"):
        return None
    try:
        decoded = json.loads(message)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None
