"""What every command needs: the exit codes, `CommandError`, the configuration, the key, a client, and
a word with the running daemon."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from watcher import logs
from watcher.cli.hardening import scrub_variable
from watcher.cloud.client import NextmvClient
from watcher.cloud.transport import build_verify
from watcher.config import Config, key_file_is_shared, load_config, resolve_api_key, resolve_config_path
from watcher.daemon import control_socket as control
from watcher.daemon.identity import Match, config_of, match
from watcher.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from watcher.runfolder.scan import WatchedDir, missing_paths

OK, FAILED, USAGE = EXIT_OK, EXIT_FAILED, EXIT_USAGE
log = structlog.get_logger("watcher.cli")


class CommandError(Exception):
    """A command cannot go on: `message` is printed once (after "nextmv-watcher: ") and `code` returned."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def confirm(question: str, *, yes: bool, command: str, declined: str) -> None:
    """Ask `question` on the terminal unless `yes`; CommandError when there is no terminal to ask
    (USAGE) or the answer is not yes (FAILED, `declined`)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CommandError(USAGE, f"{command}: not asking without a terminal; give --yes")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandError(FAILED, declined)


def load(args: argparse.Namespace) -> Config:
    return load_config(resolve_config_path(getattr(args, "config", None)))


def api_key(config: Config, *, scrub_env: bool = False) -> str:
    """The API key (see `resolve_api_key`), registered for redaction. With `scrub_env` (the daemon, which
    lives long; not the one-shot commands, whose `main` may be called in-process) a key that came from
    the environment is removed from it, /proc/<pid>/environ included."""
    key, source = locate_api_key(config)
    if scrub_env and source == f"${config.api.key_env}" and not scrub_variable(config.api.key_env):
        log.warning("api_key_left_in_environment", variable=config.api.key_env,
                    hint="could not overwrite it in /proc/self/environ; prefer LoadCredential= or api.key_file")
    return key


def locate_api_key(config: Config) -> tuple[str, str]:
    """The API key and where it came from (see `resolve_api_key`), the key registered for redaction; a key
    file readable by other users draws a warning. Raises ConfigError when there is none."""
    key, source = resolve_api_key(config.api)
    logs.REDACTOR.add_secret(key)
    if config.api.key_file is not None and source == str(config.api.key_file) \
            and key_file_is_shared(config.api.key_file):
        log.warning("key_file_readable_by_others", path=source, hint=f"chmod 600 {source}")
    return key, source


def client(config: Config, key: str) -> NextmvClient:
    return NextmvClient(config.api.url, key, connect_timeout=config.api.connect_timeout_seconds,
                        read_timeout=config.api.read_timeout_seconds, verify=build_verify(config.api.ca_bundle))


def tell_daemon(config: Config, command: str, **args: Any) -> dict[str, Any] | None:
    """Send `command` to the daemon running `config`'s file (even if the file was edited since: see
    `identity.match`); its answer, or None when none listens or the one that answers on the socket runs
    another configuration: that one is not told (the folders are not its own), and stderr says so. A
    daemon that is not told sees the change at its next start-up or reconcile anyway."""
    return tell_daemon_at(config.control_socket, command, meant=lambda d: match(d, config) is not Match.OTHER,
                          mine=config.source, **args)


def tell_daemon_at(socket_path: Path | None, command: str, *, meant: Callable[[object], bool], mine: str,
                   **args: Any) -> dict[str, Any] | None:
    """Send `command` to the daemon on `socket_path` if it is the one `meant` accepts (given what it says
    about itself, `identity.describe`); `mine` names what was meant, for the message. See `tell_daemon`."""
    if socket_path is None:
        return None
    try:
        daemon = control.request(socket_path, "identify").get("daemon")
        if not meant(daemon):
            print(f"nextmv-watcher: not telling the daemon on {socket_path}: it runs another configuration "
                  f"({config_of(daemon)}), not {mine}", file=sys.stderr)
            return None
        return control.request(socket_path, command, **args)
    except OSError:
        return None


def require_a_watched_path(config: Config) -> list[WatchedDir]:
    """The watched paths that are missing now (or not directories); CommandError (USAGE) when that is
    every one of them, which `check` and `run` refuse, so that the unit's ExecStartPre= stops a daemon
    that would watch nothing. One or some missing is no error: they are watched once they are back."""
    missing = missing_paths(config)
    if missing and len(missing) == len(config.watch):
        raise CommandError(USAGE, "no watched path is a directory: "
                                  + "; ".join(f"{g.path} {g.problem}" for g in missing))
    return missing
