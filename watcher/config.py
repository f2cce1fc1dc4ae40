"""Configuration: read once, validated into frozen dataclasses.

`load_config(path)` returns a `Config` or raises `ConfigError` listing every
problem at once, each with its key path (``watch[1].application_id: required``).
Defaults live in one place, `DEFAULTS`, which `config.example.yaml` mirrors.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from watcher.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/nextmv-watcher/config.yaml")
CREDENTIAL_NAME = "nextmv-api-key"
FORMATS = ("auto", "json", "multi-file", "text")
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULTS: dict[str, Any] = {
    "api": {
        "url": "https://api.cloud.nextmv.io",
        "key_env": "NEXTMV_API_KEY",
        "key_file": None,
        "ca_bundle": None,
        "connect_timeout_seconds": 10.0,
        "read_timeout_seconds": 60.0,
    },
    "state_dir": None,
    "files": {
        "input": ["input.json", "input.*", "input/"],
        "output": ["output.json", "output.*", "output/"],
        "logs": ["logs.txt", "logs.log"],
        "status": "status.json",
        "max_json_bytes": 16 * 1024 * 1024,
        "max_archive_files": 100_000,
        "max_archive_depth": 64,
    },
    "completion": {"marker": None, "settle_seconds": 5.0},
    "workers": 8,
    "retry": {"max_attempts": 10, "backoff_initial_seconds": 1.0, "backoff_max_seconds": 600.0,
              "lookup_grace_seconds": 30.0},
    "logging": {"format": "auto", "level": "info"},
    "reconcile_seconds": 300.0,
    "drain_timeout_seconds": 30.0,
    "after_tracking": "keep",
    "done_path": None,
    "retention_days": None,
    "metrics": {"listen": None, "incomplete_warn_seconds": 3600.0, "unhealthy_pause_seconds": 300.0},
    "control_socket": None,
    "state_owners": [],
}
AFTER_TRACKING = ("keep", "move", "delete")
WATCH_DEFAULTS: dict[str, Any] = {"instance_id": None, "format": {"input": "auto", "output": "auto"}, "files": {},
                                  "polling": False, "poll_interval_seconds": 2.0}


@dataclass(frozen=True)
class ApiConfig:
    url: str
    key_env: str
    key_file: Path | None
    ca_bundle: Path | None
    connect_timeout_seconds: float
    read_timeout_seconds: float


@dataclass(frozen=True)
class FilesConfig:
    """Candidate names per role. A name ending in '/' is a directory; '*' and '?' are globs."""

    input: tuple[str, ...]
    output: tuple[str, ...]
    logs: tuple[str, ...]
    status: str
    max_json_bytes: int = 16 * 1024 * 1024   # metrics/statistics/assets.json larger than this: invalid
    max_archive_files: int = 100_000         # files in one input/ or output/ directory
    max_archive_depth: int = 64              # directory levels in one input/ or output/ directory


@dataclass(frozen=True)
class FormatConfig:
    """`auto` decides from the file (json, or multi-file for directories and other files)."""

    input: str = "auto"
    output: str = "auto"


@dataclass(frozen=True)
class WatchConfig:
    path: Path
    application_id: str
    instance_id: str | None
    format: FormatConfig
    files: FilesConfig
    polling: bool = False               # watchdog's PollingObserver (NFS, SMB) instead of inotify
    poll_interval_seconds: float = 2.0


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None                  # "host:port" for the Prometheus and /healthz listener, or None
    incomplete_warn_seconds: float      # a folder incomplete for longer is counted and logged as a warning
    unhealthy_pause_seconds: float      # /healthz fails once the API has been paused this long


@dataclass(frozen=True)
class CompletionConfig:
    marker: str | None
    settle_seconds: float


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int
    backoff_initial_seconds: float
    backoff_max_seconds: float
    lookup_grace_seconds: float = 30.0


@dataclass(frozen=True)
class LoggingConfig:
    format: str
    level: str


@dataclass(frozen=True)
class Config:
    source: str
    api: ApiConfig
    state_dir: Path
    files: FilesConfig
    watch: tuple[WatchConfig, ...]
    completion: CompletionConfig
    workers: int
    retry: RetryConfig
    logging: LoggingConfig
    reconcile_seconds: float
    drain_timeout_seconds: float
    after_tracking: str = "keep"
    done_path: Path | None = None
    retention_days: float | None = None
    metrics: MetricsConfig = MetricsConfig(None, 3600.0, 300.0)
    control_socket: Path | None = None
    state_owners: tuple[int, ...] = ()   # uids besides ours and root whose .nextmv-* files are trusted

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


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """$STATE_DIRECTORY (set by systemd's StateDirectory=), else $XDG_STATE_HOME or ~/.local/state."""
    env = os.environ if env is None else env
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = Path(env["XDG_STATE_HOME"]) if env.get("XDG_STATE_HOME") else Path.home() / ".local" / "state"
    return base / "nextmv-watcher"


def default_control_socket(state_dir: Path, env: Mapping[str, str] | None = None) -> Path:
    """$RUNTIME_DIRECTORY/control.sock under systemd (RuntimeDirectory=), else <state_dir>/control.sock."""
    env = os.environ if env is None else env
    if env.get("RUNTIME_DIRECTORY"):
        return Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "control.sock"
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
    """Read and validate the YAML file at `path`. Raises ConfigError naming every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the configuration file: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return parse_config(raw if raw is not None else {}, source=str(path), base_dir=path.parent, env=env)


def parse_config(
    raw: object, *, source: str = "<config>", base_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed mapping (see `load_config`)."""
    v = _Validator(base_dir or Path.cwd())
    root = v.mapping(raw, "", set(DEFAULTS) | {"watch"})
    api = v.mapping(root.get("api", {}), "api", set(DEFAULTS["api"]))
    api_cfg = ApiConfig(
        url=v.url(v.get(api, "api", "url", str, DEFAULTS)),
        key_env=v.get(api, "api", "key_env", str, DEFAULTS),
        key_file=v.path(v.get(api, "api", "key_file", (str, type(None)), DEFAULTS)),
        ca_bundle=v.existing_file(v.get(api, "api", "ca_bundle", (str, type(None)), DEFAULTS), "api.ca_bundle"),
        connect_timeout_seconds=v.positive(v.get(api, "api", "connect_timeout_seconds", (int, float), DEFAULTS),
                                           "api.connect_timeout_seconds"),
        read_timeout_seconds=v.positive(v.get(api, "api", "read_timeout_seconds", (int, float), DEFAULTS),
                                        "api.read_timeout_seconds"),
    )
    files = v.files(root.get("files", {}), "files", None)
    state_raw = v.get(root, "", "state_dir", (str, type(None)), DEFAULTS)
    state_dir = v.path(state_raw) or default_state_dir(env)

    watches: list[WatchConfig] = []
    indexes: list[int] = []  # each watch's position in the file, for problem messages
    watch_raw = root.get("watch")
    if watch_raw is None or watch_raw == []:
        v.problem("watch: at least one watched path is required")
    elif not isinstance(watch_raw, list):
        v.problem("watch: must be a list of watched paths")
    else:
        for i, item in enumerate(watch_raw):
            w = v.watch(item, f"watch[{i}]", files)
            if w is not None:
                watches.append(w)
                indexes.append(i)
        v.no_overlap(watches, indexes)

    comp = v.mapping(root.get("completion", {}), "completion", set(DEFAULTS["completion"]))
    marker = v.get(comp, "completion", "marker", (str, type(None)), DEFAULTS)
    if marker is not None and (not marker or "/" in marker or marker.startswith(".nextmv-")):
        v.problem("completion.marker: must be a plain file name (not a path, not .nextmv-*)")
    completion = CompletionConfig(
        marker=marker,
        settle_seconds=v.non_negative(v.get(comp, "completion", "settle_seconds", (int, float), DEFAULTS),
                                      "completion.settle_seconds"),
    )
    retry = v.mapping(root.get("retry", {}), "retry", set(DEFAULTS["retry"]))
    retry_cfg = RetryConfig(
        max_attempts=v.at_least(v.get(retry, "retry", "max_attempts", int, DEFAULTS), 1, "retry.max_attempts"),
        backoff_initial_seconds=v.positive(v.get(retry, "retry", "backoff_initial_seconds", (int, float), DEFAULTS),
                                           "retry.backoff_initial_seconds"),
        backoff_max_seconds=v.positive(v.get(retry, "retry", "backoff_max_seconds", (int, float), DEFAULTS),
                                       "retry.backoff_max_seconds"),
        lookup_grace_seconds=v.non_negative(v.get(retry, "retry", "lookup_grace_seconds", (int, float), DEFAULTS),
                                            "retry.lookup_grace_seconds"),
    )
    logging_raw = v.mapping(root.get("logging", {}), "logging", set(DEFAULTS["logging"]))
    logging_cfg = LoggingConfig(
        format=v.choice(v.get(logging_raw, "logging", "format", str, DEFAULTS), LOG_FORMATS, "logging.format"),
        level=v.choice(v.get(logging_raw, "logging", "level", str, DEFAULTS).lower(), LOG_LEVELS, "logging.level"),
    )
    workers = v.at_least(v.get(root, "", "workers", int, DEFAULTS), 1, "workers")
    reconcile = v.positive(v.get(root, "", "reconcile_seconds", (int, float), DEFAULTS), "reconcile_seconds")
    drain = v.non_negative(v.get(root, "", "drain_timeout_seconds", (int, float), DEFAULTS), "drain_timeout_seconds")
    after = v.choice(v.get(root, "", "after_tracking", str, DEFAULTS), AFTER_TRACKING, "after_tracking")
    done_path = v.path(v.get(root, "", "done_path", (str, type(None)), DEFAULTS))
    if after == "move":
        v.done_path(done_path, watches)
    retention = v.get(root, "", "retention_days", (int, float, type(None)), DEFAULTS)
    if retention is not None:
        v.positive(retention, "retention_days")
    metrics_raw = v.mapping(root.get("metrics", {}), "metrics", set(DEFAULTS["metrics"]))
    listen = v.get(metrics_raw, "metrics", "listen", (str, type(None)), DEFAULTS)
    if listen is not None:
        v.listen_address(listen, "metrics.listen")
    metrics = MetricsConfig(
        listen=listen,
        incomplete_warn_seconds=v.positive(v.get(metrics_raw, "metrics", "incomplete_warn_seconds", (int, float),
                                                 DEFAULTS), "metrics.incomplete_warn_seconds"),
        unhealthy_pause_seconds=v.positive(v.get(metrics_raw, "metrics", "unhealthy_pause_seconds", (int, float),
                                                 DEFAULTS), "metrics.unhealthy_pause_seconds"),
    )
    control = v.path(v.get(root, "", "control_socket", (str, type(None)), DEFAULTS))
    owners = v.owners(v.get(root, "", "state_owners", list, DEFAULTS), "state_owners")
    if v.problems:
        raise ConfigError(source, v.problems)
    return Config(
        source=source, api=api_cfg, state_dir=state_dir, files=files, watch=tuple(watches),
        completion=completion, workers=workers, retry=retry_cfg, logging=logging_cfg,
        reconcile_seconds=float(reconcile), drain_timeout_seconds=float(drain),
        after_tracking=after, done_path=done_path, retention_days=None if retention is None else float(retention),
        metrics=metrics, control_socket=control or default_control_socket(state_dir, env),
        state_owners=owners,
    )


class _Validator:
    """Collects problems instead of stopping at the first; each getter returns a usable value regardless."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def mapping(self, raw: object, where: str, known: set[str]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.problem(f"{where or 'the file'}: must be a mapping")
            return {}
        for key in raw:
            if key not in known:
                self.problem(f"{_join(where, str(key))}: unknown key (known: {', '.join(sorted(known))})")
        return raw

    def get(self, raw: Mapping[str, Any], where: str, key: str, types: Any, defaults: Mapping[str, Any]) -> Any:
        section = defaults.get(where, defaults) if where else defaults
        default = section[key] if isinstance(section, Mapping) and key in section else None
        value = raw.get(key, default)
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            self.problem(f"{_join(where, key)}: must be {_type_name(types)}, not a boolean")
            return default
        if not isinstance(value, types):
            self.problem(f"{_join(where, key)}: must be {_type_name(types)}, got {type(value).__name__}")
            return default
        return value

    def path(self, raw: str | None) -> Path | None:
        if raw is None:
            return None
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def existing_file(self, raw: str | None, where: str) -> Path | None:
        p = self.path(raw)
        if p is not None and not p.is_file():
            self.problem(f"{where}: {p} is not a file")
        return p

    def url(self, raw: str) -> str:
        if not raw.startswith(("http://", "https://")):
            self.problem(f"api.url: must start with http:// or https://, got {raw!r}")
        return raw.rstrip("/")

    def positive(self, value: float, where: str) -> float:
        if value <= 0:
            self.problem(f"{where}: must be greater than 0")
        return float(value)

    def non_negative(self, value: float, where: str) -> float:
        if value < 0:
            self.problem(f"{where}: must not be negative")
        return float(value)

    def at_least(self, value: int, minimum: int, where: str) -> int:
        if value < minimum:
            self.problem(f"{where}: must be at least {minimum}")
        return value

    def choice(self, value: str, choices: tuple[str, ...], where: str) -> str:
        if value not in choices:
            self.problem(f"{where}: must be one of {', '.join(choices)}, got {value!r}")
        return value

    def names(self, raw: object, where: str) -> tuple[str, ...] | None:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw or not all(isinstance(n, str) and n for n in raw):
            self.problem(f"{where}: must be a non-empty list of file names")
            return None
        for n in raw:
            if "/" in n.rstrip("/") or n.startswith("."):
                self.problem(f"{where}: {n!r} must be a plain name in the run folder (no path, no dotfile)")
        return tuple(raw)

    def files(self, raw: object, where: str, base: FilesConfig | None) -> FilesConfig:
        known = set(DEFAULTS["files"])
        raw_map = self.mapping(raw if raw is not None else {}, where, known)
        fallback = base or FilesConfig(
            input=tuple(DEFAULTS["files"]["input"]), output=tuple(DEFAULTS["files"]["output"]),
            logs=tuple(DEFAULTS["files"]["logs"]), status=DEFAULTS["files"]["status"],
            max_json_bytes=DEFAULTS["files"]["max_json_bytes"],
            max_archive_files=DEFAULTS["files"]["max_archive_files"],
            max_archive_depth=DEFAULTS["files"]["max_archive_depth"],
        )
        roles: dict[str, tuple[str, ...]] = {}
        for role in ("input", "output", "logs"):
            roles[role] = getattr(fallback, role)
            if role in raw_map:
                roles[role] = self.names(raw_map[role], f"{where}.{role}") or roles[role]
        caps = {key: getattr(fallback, key) for key in ("max_json_bytes", "max_archive_files", "max_archive_depth")}
        for key, default in list(caps.items()):
            value = self.get(raw_map, where, key, int, {where: caps}) if key in raw_map else default
            caps[key] = self.at_least(value, 1, f"{where}.{key}")
        status = fallback.status
        if "status" in raw_map:
            got = raw_map["status"]
            if not isinstance(got, str) or not got or "/" in got or got.startswith("."):
                self.problem(f"{where}.status: must be a plain file name")
            else:
                status = got
        return FilesConfig(input=roles["input"], output=roles["output"], logs=roles["logs"], status=status, **caps)

    def watch(self, raw: object, where: str, files: FilesConfig) -> WatchConfig | None:
        item = self.mapping(raw, where, {"path", "application_id", "instance_id", "format", "files", "polling",
                                         "poll_interval_seconds"})
        if not isinstance(raw, dict):
            return None
        path_raw = item.get("path")
        app = item.get("application_id")
        ok = True
        if not isinstance(path_raw, str) or not path_raw:
            self.problem(f"{where}.path: required (a directory)")
            ok = False
        if not isinstance(app, str) or not app:
            self.problem(f"{where}.application_id: required (the Nextmv application id)")
            ok = False
        instance = self.get(item, where, "instance_id", (str, type(None)), {where: WATCH_DEFAULTS})
        fmt_raw = self.mapping(item.get("format", {}), f"{where}.format", {"input", "output"})
        fmt = FormatConfig(
            input=self.choice(str(fmt_raw.get("input", "auto")), FORMATS, f"{where}.format.input"),
            output=self.choice(str(fmt_raw.get("output", "auto")), FORMATS, f"{where}.format.output"),
        )
        watch_files = self.files(item.get("files", {}), f"{where}.files", files)
        polling = self.get(item, where, "polling", bool, {where: WATCH_DEFAULTS})
        interval = self.positive(self.get(item, where, "poll_interval_seconds", (int, float), {where: WATCH_DEFAULTS}),
                                 f"{where}.poll_interval_seconds")
        path = self.path(path_raw) if isinstance(path_raw, str) and path_raw else None
        if path is not None and not path.is_dir():
            self.problem(f"{where}.path: {path} does not exist or is not a directory")
        if not ok or path is None:
            return None
        return WatchConfig(path=Path(os.path.abspath(path)), application_id=str(app), instance_id=instance,
                           format=fmt, files=watch_files, polling=polling, poll_interval_seconds=interval)

    def done_path(self, done: Path | None, watches: list[WatchConfig]) -> None:
        if done is None:
            self.problem("done_path: required when after_tracking is move")
            return
        resolved = Path(os.path.abspath(done))
        for i, w in enumerate(watches):
            if resolved == w.path or w.path in resolved.parents or resolved in w.path.parents:
                self.problem(f"done_path: {resolved} overlaps watch[{i}].path {w.path}")
        if not resolved.is_dir():
            self.problem(f"done_path: {resolved} does not exist or is not a directory")

    def owners(self, raw: list[Any], where: str) -> tuple[int, ...]:
        """User names or uids, as uids; a name must exist on this host."""
        uids = []
        for i, item in enumerate(raw):
            if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
                uids.append(item)
            elif isinstance(item, str) and item:
                try:
                    uids.append(pwd.getpwnam(item).pw_uid)
                except KeyError:
                    self.problem(f"{where}[{i}]: no user {item!r} on this host")
            else:
                self.problem(f"{where}[{i}]: must be a user name or a uid")
        return tuple(uids)

    def listen_address(self, value: str, where: str) -> None:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            self.problem(f"{where}: must be host:port, got {value!r}")

    def no_overlap(self, watches: list[WatchConfig], indexes: list[int]) -> None:
        for i, a in enumerate(watches):
            for j, b in enumerate(watches[i + 1:], start=i + 1):
                if a.path == b.path or a.path in b.path.parents or b.path in a.path.parents:
                    self.problem(f"watch[{indexes[j]}].path: {b.path} overlaps watch[{indexes[i]}].path {a.path}")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(types: Any) -> str:
    names: dict[type, str] = {str: "a string", int: "an integer", float: "a number", type(None): "null",
                              bool: "true or false", list: "a list"}
    seq = types if isinstance(types, tuple) else (types,)
    if set(seq) == {int, float}:
        return "a number"
    return " or ".join(names.get(t, t.__name__) for t in seq if not (t is float and int in seq))
