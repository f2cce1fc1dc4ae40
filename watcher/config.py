"""Configuration: read once, validated into frozen dataclasses.

The dataclasses below are the one place where each key's default, type and check are written
(`setting()`, see `watcher.configparse`); `config.example.yaml` shows them and a test keeps the two
equal. `load_config(path)` returns a `Config` or raises `ConfigError` listing every problem at
once, each with its key path (``watch[1].application_id: required``). `parse_config` adds the rules
that span keys: watched paths do not overlap (they may be missing), `watch[].files` inherits `files` key
by key, `done_path` for `after_tracking: move`, `processes` (2, or `workers` if fewer), and the defaults
of `state_dir` and `control_socket` from the environment and from which file it is (the system
configuration's are the unit's directories). A loaded `Config` records which file it came from
(`ConfigFile`: resolved path, device, inode, digest), so that a command can tell whether a running
daemon runs the same file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from watcher.configfile import ConfigFile, read_config_file
from watcher.configparse import (
    Parser,
    Report,
    absolute,
    at_least,
    build,
    choice,
    existing_file,
    file_names,
    non_negative,
    plain_name,
    positive,
    setting,
    url,
    users,
)
from watcher.errors import ConfigError
from watcher.logs import LEVELS

DEFAULT_CONFIG_PATH = Path("/etc/nextmv-watcher/config.yaml")
# The unit's StateDirectory= and RuntimeDirectory=: the defaults of the system configuration (above),
# so that an admin shell finds the daemon's state and socket without pinning them.
SYSTEM_STATE_DIR = Path("/var/lib/nextmv-watcher")
SYSTEM_CONTROL_SOCKET = Path("/run/nextmv-watcher/control.sock")
PREVIOUS_DEFAULT = "previous default"   # Config.state_dir_from when state was found under the old default
CREDENTIAL_NAME = "nextmv-api-key"
FORMATS = ("auto", "json", "multi-file", "text")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = tuple(LEVELS)   # debug, info, warning, error: in order of severity
AFTER_TRACKING = ("keep", "move", "delete")
CONCURRENCY = ("adaptive", "fixed")   # see watcher/daemon/concurrency.py
SHARD_ENV = "NEXTMV_WATCHER_SHARD"   # `processes`: "i/N", set by the supervisor for each of its processes
SHARD_SOCKET_ENV = "NEXTMV_WATCHER_SHARD_SOCKET"   # the supervisor's choice, fixed for the process's life
DAEMON_PREFIX = ".nextmv-"   # names in a run folder that are the daemon's own (markers, journal, claim)
# Every run's description ends with a blank line and this prefix + 32 hex digits (see cloud/tracker.py).
RUN_TOKEN_PREFIX = "nextmv-watcher:"  # noqa: S105 - a label, not a secret
TOKEN_LINE_LENGTH = len("\n\n" + RUN_TOKEN_PREFIX) + 32


def parse_listen(value: str) -> tuple[str, int]:
    """'host:port' -> (host, port); an IPv6 host in brackets ('[::1]:9464'), port 0-65535.
    Raises ValueError when malformed."""
    host, _, port = value.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address must be host:port, got {value!r}")
    return host, int(port)


def _listen(value: str, report: Report) -> str:
    try:
        parse_listen(value)
    except ValueError:
        report(f"must be host:port, got {value!r}")
    return value


def _marker(value: str, report: Report) -> str:
    if not value or "/" in value or value.startswith(DAEMON_PREFIX):
        report("must be a plain file name (not a path, not .nextmv-*)")
    return value


@dataclass(frozen=True)
class ApiConfig:
    url: str = setting("https://api.cloud.nextmv.io", check=url, doc="the Nextmv API; a trailing / is dropped")
    key_env: str = setting("NEXTMV_API_KEY", doc="the environment variable holding the API key")
    key_file: Path | None = setting(None, doc="a file holding the API key (see resolve_api_key)")
    ca_bundle: Path | None = setting(None, check=existing_file, doc="extra CA certificates for TLS")
    connect_timeout_seconds: float = setting(10.0, check=positive, doc="to connect to the API")
    read_timeout_seconds: float = setting(60.0, check=positive, doc="per read, not for a whole upload")
    max_name_length: int = setting(128, check=at_least(1), doc="longer run names are cut (characters)")
    max_description_length: int = setting(256, check=at_least(TOKEN_LINE_LENGTH),
                                          doc="the user's description is cut so that it and the token line fit")
    max_upload_bytes: int = setting(500_000_000, check=at_least(1),
                                    doc="an artifact larger than this makes its folder invalid")
    lookup_max_pages: int = setting(2000, check=at_least(1), doc="run-list pages read by one look-up at most")

# Connection settings: the HTTP client is built once, so these take effect at the next start only.
API_CONNECTION = ("url", "key_env", "key_file", "ca_bundle", "connect_timeout_seconds", "read_timeout_seconds")


@dataclass(frozen=True)
class FilesConfig:
    """Candidate names per role. A name ending in '/' is a directory; '*' and '?' are globs."""

    input: tuple[str, ...] = setting(("input.json", "input.*", "input/"), check=file_names, doc="the run's input")
    output: tuple[str, ...] = setting(("output.json", "output.*", "output/"), check=file_names,
                                      doc="the run's output")
    logs: tuple[str, ...] = setting(("logs.txt", "logs.log"), check=file_names, doc="the run's logs")
    status: str = setting("status.json", check=plain_name, doc="the run's status, name and options")
    max_json_bytes: int = setting(16 * 1024 * 1024, check=at_least(1),
                                  doc="metrics/statistics/assets.json larger than this: invalid")
    max_archive_files: int = setting(100_000, check=at_least(1), doc="files in one input/ or output/ directory")
    max_archive_depth: int = setting(64, check=at_least(1), doc="directory levels in one input/ or output/")


@dataclass(frozen=True)
class FormatConfig:
    """`auto` decides from the file (json, or multi-file for directories and other files)."""

    input: str = setting("auto", check=choice(FORMATS), doc="the input's configuration.format")
    output: str = setting("auto", check=choice(FORMATS), doc="the output's configuration.format")


@dataclass(frozen=True)
class WatchConfig:
    path: Path = setting(check=absolute, doc="a directory")
    application_id: str = setting(doc="the Nextmv application id")
    instance_id: str | None = setting(None, doc="sent with every run unless status.json names one")
    format: FormatConfig = setting(FormatConfig(), doc="formats declared for this path's runs")
    files: FilesConfig = setting(FilesConfig(), doc="the global `files`, overridden key by key")
    polling: bool = setting(False, doc="watchdog's PollingObserver (NFS, SMB) instead of inotify")
    poll_interval_seconds: float = setting(2.0, check=positive, doc="how often polling looks")


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = setting(None, check=_listen, doc="host:port for /metrics and /healthz, or none")
    incomplete_warn_seconds: float = setting(3600.0, check=positive,
                                             doc="a folder incomplete for longer is counted and logged as a warning")
    unhealthy_pause_seconds: float = setting(300.0, check=positive,
                                             doc="/healthz fails once the API has been paused this long")


@dataclass(frozen=True)
class CompletionConfig:
    marker: str | None = setting(None, check=_marker, doc="a folder is complete once this file exists")
    settle_seconds: float = setting(5.0, check=non_negative,
                                    doc="without a marker: complete once nothing changed for this long")


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = setting(10, check=at_least(1), doc="per folder, then it is marked failed")
    backoff_initial_seconds: float = setting(1.0, check=positive, doc="the first retry's delay")
    backoff_max_seconds: float = setting(600.0, check=positive, doc="the longest delay")
    lookup_grace_seconds: float = setting(30.0, check=non_negative,
                                          doc="how long the run list may lag after a POST of unknown outcome")


@dataclass(frozen=True)
class LoggingConfig:
    format: str = setting("auto", check=choice(LOG_FORMATS), doc="auto: console on a terminal, else json")
    level: str = setting("info", check=choice(LOG_LEVELS, lower=True), doc="the lowest level logged")


@dataclass(frozen=True)
class Config:
    """A parsed configuration. `state_dir` and `control_socket` are always paths here: their default
    None (what the file shows) stands for `default_state_dir()` and `default_control_socket()`."""

    source: str   # where it was read from; not a key
    api: ApiConfig = setting(ApiConfig(), doc="the Nextmv API")
    state_dir: Path = setting(None, doc="journals fallback and spool files")
    files: FilesConfig = setting(FilesConfig(), doc="candidate names per role, for every watched path")
    watch: tuple[WatchConfig, ...] = setting((), doc="the watched paths (read by parse_config itself)")
    completion: CompletionConfig = setting(CompletionConfig(), doc="when a folder is complete")
    workers: int = setting(64, check=at_least(1), doc="the most folders tracked in parallel")
    processes: int = setting(2, check=at_least(1),
                             doc="processes sharing the work, each on its share of the folders and of workers "
                                 "(default 2, or workers if fewer; at most workers; a restart applies it)")
    concurrency: str = setting("adaptive", check=choice(CONCURRENCY),
                               doc="adaptive: the folders in flight follow the API's answers, up to workers; "
                                   "fixed: always workers")
    retry: RetryConfig = setting(RetryConfig(), doc="attempts and delays")
    logging: LoggingConfig = setting(LoggingConfig(), doc="log events")
    reconcile_seconds: float = setting(300.0, check=positive, doc="how often the watched paths are rescanned")
    drain_timeout_seconds: float = setting(30.0, check=non_negative,
                                           doc="on SIGTERM, how long in-flight folders may take")
    after_tracking: str = setting("keep", check=choice(AFTER_TRACKING), doc="what happens to a tracked folder")
    done_path: Path | None = setting(None, doc="where `move` puts tracked folders")
    retention_days: float | None = setting(None, check=positive, doc="delete tracked folders this much later")
    metrics: MetricsConfig = setting(MetricsConfig(), doc="the Prometheus and /healthz listener")
    control_socket: Path | None = setting(None, doc="the unix socket of `nextmv-watcher status`")
    state_owners: tuple[int, ...] = setting((), check=users,
                                            doc="uids besides ours and root whose .nextmv-* files are trusted")
    # Not keys: the file it was loaded from (None from parse_config), and where `state_dir` came from
    # ("state_dir" when set, else the default that applied: see default_state_dir).
    file: ConfigFile | None = None
    state_dir_from: str = "state_dir"
    # Not a key either: this process's share of the folders, (index, count), from $NEXTMV_WATCHER_SHARD
    # (set by the process that runs several: `processes`); its own `workers` and `control_socket`, no metrics.
    shard: tuple[int, int] = (0, 1)

    def watch_for(self, folder: Path) -> WatchConfig | None:
        """The watched path whose direct child `folder` is, if any."""
        parent = folder.parent
        for w in self.watch:
            if w.path == parent:
                return w
        return None


def resolve_config_path(arg: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The config file: the `--config` argument, else $NEXTMV_WATCHER_CONFIG, else /etc/nextmv-watcher/config.yaml."""
    env = os.environ if env is None else env
    if arg:
        return Path(arg)
    if env.get("NEXTMV_WATCHER_CONFIG"):
        return Path(env["NEXTMV_WATCHER_CONFIG"])
    return DEFAULT_CONFIG_PATH


def is_system_config(path: Path) -> bool:
    """Whether `path` is the system configuration (DEFAULT_CONFIG_PATH, however it is reached)."""
    return os.path.realpath(path) == os.path.realpath(DEFAULT_CONFIG_PATH)


def default_state_dir(env: Mapping[str, str] | None = None, *, system: bool = False) -> Path:
    """The state directory when `state_dir` is unset; see `state_dir_default`."""
    return state_dir_default(env, system=system)[0]


def state_dir_default(env: Mapping[str, str] | None = None, *, system: bool = False) -> tuple[Path, str]:
    """The state directory when `state_dir` is unset, and which default it is, in this order:
    $STATE_DIRECTORY (systemd's StateDirectory=); for the system configuration (`system`),
    SYSTEM_STATE_DIR, unless state is found under the previous default (below) and not there: that
    state holds read-only folders' markers and open intents, so it is kept (PREVIOUS_DEFAULT) rather
    than left behind; else $XDG_STATE_HOME/nextmv-watcher or ~/.local/state/nextmv-watcher."""
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0]), "$STATE_DIRECTORY"
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
    user = base / "nextmv-watcher"
    if not system:
        return user, "default"
    if _holds_state(user) and not _holds_state(SYSTEM_STATE_DIR):
        return user, PREVIOUS_DEFAULT
    return SYSTEM_STATE_DIR, "system default"


def _holds_state(state_dir: Path) -> bool:
    """Whether `state_dir` holds folders' state (`folders/`: markers and journals of read-only folders)."""
    try:
        return (state_dir / "folders").is_dir()
    except OSError:
        return False


def default_control_socket(state_dir: Path, env: Mapping[str, str] | None = None, *,
                           system: bool = False) -> Path:
    """$RUNTIME_DIRECTORY/control.sock under systemd (RuntimeDirectory=), else for the system
    configuration SYSTEM_CONTROL_SOCKET (where the unit's daemon listens), else <state_dir>/control.sock."""
    env = os.environ if env is None else env
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "control.sock"
    if system:
        return SYSTEM_CONTROL_SOCKET
    return state_dir / "control.sock"


def resolve_api_key(api: ApiConfig, env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Return (key, where it came from): `api.key_file`, then $CREDENTIALS_DIRECTORY/nextmv-api-key, then
    the `api.key_env` variable. Raises ConfigError when none gives a non-empty key."""
    env = os.environ if env is None else env
    candidates: list[Path] = []
    if api.key_file is not None:
        candidates.append(api.key_file)
    if env.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME)
    for path in candidates:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            if path == api.key_file:
                raise ConfigError("api.key_file", [f"api.key_file: cannot read {path}: {exc.strerror}"]) from None
            continue
        if key:
            return key, str(path)
    key = env.get(api.key_env, "").strip()
    if key:
        return key, f"${api.key_env}"
    where = ", ".join([*(str(p) for p in candidates), f"${api.key_env}"])
    raise ConfigError("api key", [f"api: no API key found (looked in {where})"])


def key_file_is_shared(path: Path) -> bool:
    """True when a key file can be read by users other than its owner (worth a warning)."""
    try:
        return bool(path.stat().st_mode & 0o077)
    except OSError:
        return False


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML file at `path` (see `watcher.configfile`). Raises ConfigError naming
    every problem; a YAML syntax error names the file, line and column."""
    raw, file = read_config_file(path)
    config = parse_config(raw if raw is not None else {}, source=str(path), base_dir=path.parent, env=env,
                          system=is_system_config(path))
    return replace(config, file=file)


def parse_config(
    raw: object, *, source: str = "<config>", base_dir: Path | None = None, env: Mapping[str, str] | None = None,
    system: bool = False,
) -> Config:
    """Validate an already-parsed mapping (see `load_config`); relative paths are taken against
    `base_dir` (default: the working directory); `system`: it is the system configuration (its
    defaults are the unit's directories). Raises ConfigError naming every problem."""
    p = Parser(base_dir or Path.cwd())
    values = p.section(Config, raw, "", own=("watch",))
    watches = _watches(p, values["watch"], values["files"])
    if values["after_tracking"] == "move":
        _done_path(p, values["done_path"], watches)
    if not (isinstance(raw, Mapping) and "processes" in raw):
        values["processes"] = min(values["processes"], values["workers"])   # the default: 2, or workers if fewer
    elif values["processes"] > values["workers"]:
        p.problem(f"processes: {values['processes']} is more than workers ({values['workers']}): each process "
                  f"tracks at least one folder at a time")
    if p.problems:
        raise ConfigError(source, p.problems)
    state_dir, state_dir_from = (values["state_dir"], "state_dir") if values["state_dir"] \
        else state_dir_default(env, system=system)
    config = Config(**values | {
        "source": source, "watch": tuple(w for _, w in watches), "state_dir": state_dir,
        "control_socket": values["control_socket"] or default_control_socket(state_dir, env, system=system),
        "state_dir_from": state_dir_from,
    })
    env = os.environ if env is None else env
    return _as_shard(config, env.get(SHARD_ENV), source, env.get(SHARD_SOCKET_ENV))


def shard_socket(control_socket: Path, index: int) -> Path:   # process `index`'s (`processes`), beside it
    return control_socket.with_name(f"{control_socket.name}.{index}")


def _as_shard(config: Config, shard: str | None, source: str, socket: str | None = None) -> Config:
    """One of `processes` processes' configuration ($NEXTMV_WATCHER_SHARD `i/N`): its share of `workers`."""
    if not shard:
        return config
    index, _, count = shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count) <= config.workers):
        raise ConfigError(source, [f"${SHARD_ENV}: {shard!r} is not INDEX/COUNT with COUNT at most workers"])
    i, n = int(index), int(count)
    workers = config.workers // n + (1 if i < config.workers % n else 0)
    sock = Path(socket) if socket else shard_socket(config.control_socket, i) if config.control_socket else None
    metrics = replace(config.metrics, listen=None)   # the supervisor's: it serves the processes' metrics merged
    return replace(config, shard=(i, n), workers=workers, control_socket=sock, metrics=metrics)


def _watches(p: Parser, raw: object, files: FilesConfig) -> list[tuple[int, WatchConfig]]:
    """The watched paths that could be read, each with its position in the file (for problems); each
    inherits `files` and may override any of its keys."""
    if raw is None or raw == []:
        p.problem("watch: at least one watched path is required")
        return []
    if not isinstance(raw, list):
        p.problem("watch: must be a list of watched paths")
        return []
    watches: list[tuple[int, WatchConfig]] = []
    for i, item in enumerate(raw):
        if p.mapping(item, f"watch[{i}]") is not None:
            w = build(WatchConfig, p.section(WatchConfig, item, f"watch[{i}]", defaults={"files": files}))
            if w is not None:
                watches.append((i, w))
    for n, (i, a) in enumerate(watches):
        for j, b in watches[n + 1:]:
            if _overlap(a.path, b.path):
                p.problem(f"watch[{j}].path: {b.path} overlaps watch[{i}].path {a.path}")
    return watches


def _done_path(p: Parser, done: Path | None, watches: list[tuple[int, WatchConfig]]) -> None:
    if done is None:   # `after_tracking: move` needs a `done_path` directory outside every watched path
        p.problem("done_path: required when after_tracking is move")
        return
    resolved = Path(os.path.abspath(done))
    for i, w in watches:
        if _overlap(resolved, w.path):
            p.problem(f"done_path: {resolved} overlaps watch[{i}].path {w.path}")
    if not resolved.is_dir():
        p.problem(f"done_path: {resolved} does not exist or is not a directory")


def _overlap(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents
