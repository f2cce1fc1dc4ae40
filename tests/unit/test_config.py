"""load_config and the default resolvers: typed values out, or one error naming every problem by key path."""

from __future__ import annotations

import hashlib
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from watcher import config as config_module
from watcher.config import (
    DEFAULT_CONFIG_PATH,
    PREVIOUS_DEFAULT,
    ApiConfig,
    Config,
    FilesConfig,
    MetricsConfig,
    WatchConfig,
    default_state_dir,
    key_file_is_shared,
    load_config,
    parse_listen,
    resolve_api_key,
    resolve_config_path,
)
from watcher.configparse import keys, yaml_defaults
from watcher.errors import ConfigError

ENV = {"STATE_DIRECTORY": "/var/lib/nextmv-watcher"}


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env=ENV)
    assert excinfo.value.source == str(path)
    assert str(path) in str(excinfo.value)
    return excinfo.value.problems


def problem_at(found: list[str], key: str) -> str:
    """The one problem reported for `key` (its text starts with the key path)."""
    hits = [p for p in found if p.startswith(f"{key}:")]
    assert len(hits) == 1, f"expected one problem for {key}, got {hits} in {found}"
    return hits[0]


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def api(key_file: Path | None = None, key_env: str = "NEXTMV_API_KEY") -> ApiConfig:
    return ApiConfig(url="https://api.example", key_env=key_env, key_file=key_file, ca_bundle=None,
                     connect_timeout_seconds=1.0, read_timeout_seconds=1.0)


# --- valid files ---------------------------------------------------------------------------------


def test_a_full_config_is_read_into_typed_values(tmp_path: Path, runs: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    ca = write(tmp_path / "ca.pem", "cert")
    path = write(tmp_path / "config.yaml", f"""
        api:
          url: https://api.example.test/
          key_env: MY_KEY
          key_file: {tmp_path}/key
          ca_bundle: {ca}
          connect_timeout_seconds: 3
          read_timeout_seconds: 7.5
        state_dir: {tmp_path}/state
        files:
          input: [in.json]
          output: out.json
          logs: [log.txt, err/]
          status: st.json
        watch:
          - path: {runs}
            application_id: app-a
            instance_id: inst-1
            format: {{input: json, output: multi-file}}
          - path: {other}
            application_id: app-b
            files: {{input: [special.json]}}
        completion: {{marker: DONE, settle_seconds: 0}}
        workers: 3
        retry: {{max_attempts: 2, backoff_initial_seconds: 0.5, backoff_max_seconds: 9}}
        logging: {{format: json, level: DEBUG}}
        reconcile_seconds: 12
        drain_timeout_seconds: 0
    """)

    config = load_config(path, env=ENV)

    assert config.source == str(path)
    assert config.api.url == "https://api.example.test"  # trailing slash dropped
    assert config.api.key_env == "MY_KEY"
    assert config.api.key_file == tmp_path / "key"
    assert config.api.ca_bundle == ca
    assert config.api.connect_timeout_seconds == 3.0
    assert config.api.read_timeout_seconds == 7.5
    assert config.state_dir == tmp_path / "state"
    assert config.files.input == ("in.json",)
    assert config.files.output == ("out.json",)
    assert config.files.logs == ("log.txt", "err/")
    assert config.files.status == "st.json"
    first, second = config.watch
    assert (first.path, first.application_id, first.instance_id) == (runs, "app-a", "inst-1")
    assert (first.format.input, first.format.output) == ("json", "multi-file")
    assert first.files == config.files
    assert (second.path, second.application_id, second.instance_id) == (other, "app-b", None)
    # A watched path overrides only the roles it names and inherits the rest.
    assert second.files.input == ("special.json",)
    assert second.files.output == ("out.json",)
    assert second.files.status == "st.json"
    assert (config.completion.marker, config.completion.settle_seconds) == ("DONE", 0.0)
    assert config.workers == 3
    assert (config.retry.max_attempts, config.retry.backoff_initial_seconds,
            config.retry.backoff_max_seconds) == (2, 0.5, 9.0)
    assert (config.logging.format, config.logging.level) == ("json", "debug")
    assert config.reconcile_seconds == 12.0
    assert config.drain_timeout_seconds == 0.0


def test_only_watch_is_required_and_the_rest_takes_defaults(tmp_path: Path, runs: Path) -> None:
    path = write(tmp_path / "config.yaml", f"""
        watch:
          - path: {runs}
            application_id: app
    """)

    config = load_config(path, env={"XDG_STATE_HOME": str(tmp_path / "xdg")})

    assert config.api == ApiConfig(url="https://api.cloud.nextmv.io", key_env="NEXTMV_API_KEY", key_file=None,
                                   ca_bundle=None, connect_timeout_seconds=10.0, read_timeout_seconds=60.0)
    assert config.state_dir == tmp_path / "xdg" / "nextmv-watcher"
    assert config.files.input == ("input.json", "input.*", "input/")
    assert config.files.output == ("output.json", "output.*", "output/")
    assert config.files.logs == ("logs.txt", "logs.log")
    assert config.files.status == "status.json"
    (watch,) = config.watch
    assert watch.instance_id is None
    assert (watch.format.input, watch.format.output) == ("auto", "auto")
    assert watch.files == config.files
    assert (config.completion.marker, config.completion.settle_seconds) == (None, 5.0)
    assert (config.workers, config.processes, config.concurrency) == (64, 2, "adaptive")
    assert (config.retry.max_attempts, config.retry.backoff_initial_seconds,
            config.retry.backoff_max_seconds) == (10, 1.0, 600.0)
    assert (config.logging.format, config.logging.level) == ("auto", "info")
    assert (config.reconcile_seconds, config.drain_timeout_seconds) == (300.0, 30.0)
    assert config.files == FilesConfig() == watch.files


def test_a_null_section_takes_its_defaults(tmp_path: Path, runs: Path) -> None:
    path = write(tmp_path / "config.yaml", f"""
        api:
        #  url: https://elsewhere
        metrics:
        watch: [{{path: {runs}, application_id: app, files: null, format: null}}]
    """)

    config = load_config(path, env=ENV)

    assert (config.api, config.metrics) == (ApiConfig(), MetricsConfig())
    assert config.watch[0].files == FilesConfig()


def test_relative_paths_are_resolved_against_the_config_files_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "runs").mkdir(parents=True)
    write(conf_dir / "ca.pem", "cert")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(conf_dir / "config.yaml", """
        api: {key_file: secrets/key, ca_bundle: ca.pem}
        state_dir: state
        watch:
          - path: runs
            application_id: app
    """)

    config = load_config(path, env=ENV)

    assert config.api.key_file == conf_dir / "secrets" / "key"
    assert config.api.ca_bundle == conf_dir / "ca.pem"
    assert config.state_dir == conf_dir / "state"
    assert config.watch[0].path == conf_dir / "runs"


# --- invalid files: every problem at once --------------------------------------------------------


def test_every_problem_is_listed_at_once_with_its_key_path(tmp_path: Path, runs: Path) -> None:
    inner = runs / "inner"
    inner.mkdir()
    path = write(tmp_path / "config.yaml", f"""
        wokers: 3
        api:
          urll: https://x
          read_timeout_seconds: true
          connect_timeout_seconds: -2
        workers: "8"
        concurrency: sometimes
        reconcile_seconds: false
        drain_timeout_seconds: -1
        completion: {{settle_seconds: -0.5}}
        retry: {{max_attempts: 0}}
        logging: {{level: loud, format: xml}}
        watch:
          - path: {runs}
            application_id: app-a
            format: {{input: yaml}}
            formatt: {{}}
          - path: {tmp_path}/other
          - path: {tmp_path}/missing
            application_id: app-c
          - path: {inner}
            application_id: app-d
    """)
    (tmp_path / "other").mkdir()

    found = problems(path)

    assert problem_at(found, "wokers") == (
        "wokers: unknown key (known: after_tracking, api, completion, concurrency, control_socket, done_path,"
        " drain_timeout_seconds,"
        " files, logging, metrics, processes, reconcile_seconds, retention_days, retry, state_dir, state_owners, watch,"
            " workers)")
    assert "unknown key" in problem_at(found, "api.urll")
    assert problem_at(found, "watch[0].formatt") == (
        "watch[0].formatt: unknown key (known: application_id, files, format, instance_id, path,"
        " poll_interval_seconds, polling)")
    assert "boolean" in problem_at(found, "api.read_timeout_seconds")
    assert "boolean" in problem_at(found, "reconcile_seconds")
    assert problem_at(found, "workers") == "workers: must be an integer, got str"
    assert problem_at(found, "concurrency") == "concurrency: must be one of adaptive, fixed, got 'sometimes'"
    assert "greater than 0" in problem_at(found, "api.connect_timeout_seconds")
    assert "negative" in problem_at(found, "drain_timeout_seconds")
    assert "negative" in problem_at(found, "completion.settle_seconds")
    assert "at least 1" in problem_at(found, "retry.max_attempts")
    assert "'loud'" in problem_at(found, "logging.level")
    assert "'xml'" in problem_at(found, "logging.format")
    assert "'yaml'" in problem_at(found, "watch[0].format.input")
    assert "required" in problem_at(found, "watch[1].application_id")
    assert not [p for p in found if p.startswith("watch[2].")], "a missing watched path is no configuration error"
    overlap = problem_at(found, "watch[3].path")
    assert "overlaps watch[0].path" in overlap
    assert len(found) == 16


def test_booleans_are_refused_where_numbers_or_strings_are_expected(tmp_path: Path, runs: Path) -> None:
    path = write(tmp_path / "config.yaml", f"""
        workers: true
        retry: {{max_attempts: false}}
        api: {{url: true}}
        watch: [{{path: {runs}, application_id: app}}]
    """)

    found = problems(path)

    assert problem_at(found, "workers") == "workers: must be an integer, not a boolean"
    assert problem_at(found, "retry.max_attempts") == "retry.max_attempts: must be an integer, not a boolean"
    assert problem_at(found, "api.url") == "api.url: must be a string, not a boolean"


@pytest.mark.parametrize(("second", "overlapping"), [("same", True), ("child", True), ("sibling", False)])
def test_watched_paths_must_not_overlap(tmp_path: Path, runs: Path, second: str, overlapping: bool) -> None:
    other = {"same": runs, "child": runs / "sub", "sibling": tmp_path / "sibling"}[second]
    other.mkdir(exist_ok=True)
    path = write(tmp_path / "config.yaml", f"""
        watch:
          - {{path: {other}, application_id: b}}
          - {{path: {runs}, application_id: a}}
    """)

    if overlapping:
        assert "overlaps watch[0].path" in problem_at(problems(path), "watch[1].path")
    else:
        assert len(load_config(path, env=ENV).watch) == 2


def test_a_watched_path_that_is_missing_or_a_file_is_no_configuration_error(tmp_path: Path) -> None:
    """Issue 11, item 2: watched paths come and go while the daemon runs, so whether one is a directory now
    is reported by `check` and the daemon (watched_path_missing), not refused when loading."""
    write(tmp_path / "afile", "")
    path = write(tmp_path / "config.yaml", """
        watch:
          - {path: afile, application_id: a}
          - {path: not-yet, application_id: b}
    """)

    assert [w.path for w in load_config(path, env=ENV).watch] == [tmp_path / "afile", tmp_path / "not-yet"]


def test_an_empty_watch_entry_reports_its_missing_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "watch: [{}]\n")

    found = problems(path)

    assert "required" in problem_at(found, "watch[0].path")
    assert "required" in problem_at(found, "watch[0].application_id")


@pytest.mark.parametrize("watch", ["", "watch: []\n", "watch: {path: /x}\n"])
def test_at_least_one_watched_path_is_required(tmp_path: Path, watch: str) -> None:
    path = write(tmp_path / "config.yaml", watch)

    assert problem_at(problems(path), "watch")


def test_other_value_problems_name_their_keys(tmp_path: Path, runs: Path) -> None:
    path = write(tmp_path / "config.yaml", f"""
        api: {{url: ftp://example, ca_bundle: {tmp_path}/nope.pem}}
        files: {{input: [], logs: [sub/logs.txt], status: .hidden}}
        completion: {{marker: a/DONE}}
        watch: [{{path: {runs}, application_id: app}}]
    """)

    found = problems(path)

    assert "http://" in problem_at(found, "api.url")
    assert "is not a file" in problem_at(found, "api.ca_bundle")
    assert "non-empty list" in problem_at(found, "files.input")
    assert "plain name" in problem_at(found, "files.logs")
    assert "plain file name" in problem_at(found, "files.status")
    assert "plain file name" in problem_at(found, "completion.marker")


def test_a_wrong_type_is_named_with_the_type_expected(tmp_path: Path, runs: Path) -> None:
    path = write(tmp_path / "config.yaml", f"""
        files: {{status: 5}}
        retention_days: soon
        metrics: {{listen: 9464}}
        watch: [{{path: {runs}, application_id: app, format: {{input: 1}}, polling: "yes"}}]
    """)

    found = problems(path)

    assert problem_at(found, "files.status") == "files.status: must be a string, got int"
    assert problem_at(found, "retention_days") == "retention_days: must be a number or null, got str"
    assert problem_at(found, "metrics.listen") == "metrics.listen: must be a string or null, got int"
    assert problem_at(found, "watch[0].format.input") == "watch[0].format.input: must be a string, got int"
    assert problem_at(found, "watch[0].polling") == "watch[0].polling: must be true or false, got str"
    assert len(found) == 5


def test_a_required_key_of_the_wrong_type_is_reported_as_required(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "watch: [{path: 5, application_id: ''}]\n")

    found = problems(path)

    assert found == ["watch[0].path: required (a directory)",
                     "watch[0].application_id: required (the Nextmv application id)"]


def test_read_caps_and_state_owners_are_read_and_checked(tmp_path: Path, runs: Path) -> None:
    good = write(tmp_path / "good.yaml", f"""
        files: {{max_json_bytes: 1024, max_archive_files: 10}}
        state_owners: [root, 4242]
        watch: [{{path: {runs}, application_id: app, files: {{max_archive_depth: 3}}}}]
    """)
    config = load_config(good, env=ENV)
    assert (config.files.max_json_bytes, config.files.max_archive_files, config.files.max_archive_depth) == (
        1024, 10, 64)
    watch_files = config.watch[0].files
    assert (watch_files.max_json_bytes, watch_files.max_archive_files, watch_files.max_archive_depth) == (
        1024, 10, 3)   # a watched path inherits the global caps and may override any
    assert config.state_owners == (0, 4242)

    bad = write(tmp_path / "bad.yaml", f"""
        files: {{max_json_bytes: 0, max_archive_files: many}}
        state_owners: [no-such-user-here, -1, 1.5]
        watch: [{{path: {runs}, application_id: app}}]
    """)
    found = problems(bad)
    assert "at least 1" in problem_at(found, "files.max_json_bytes")
    assert "must be an integer" in problem_at(found, "files.max_archive_files")
    assert "no user 'no-such-user-here'" in problem_at(found, "state_owners[0]")
    assert "user name or a uid" in problem_at(found, "state_owners[1]")
    assert "user name or a uid" in problem_at(found, "state_owners[2]")
    assert len(found) == 5   # a bad global cap is reported once, not again for the watched path inheriting it


@pytest.mark.parametrize(("listen", "ok"), [
    ("127.0.0.1:9464", True), ("[::1]:9464", True), ("localhost:0", True),
    ("9464", False), (":9464", False), ("host:", False), ("host:port", False), ("host:70000", False), ("[]:80", False),
])
def test_metrics_listen_must_be_host_and_port(tmp_path: Path, runs: Path, listen: str, ok: bool) -> None:
    path = write(tmp_path / "config.yaml", f"""
        metrics: {{listen: "{listen}"}}
        watch: [{{path: {runs}, application_id: app}}]
    """)

    if ok:
        assert load_config(path, env=ENV).metrics.listen == listen
    else:
        assert problems(path) == [f"metrics.listen: must be host:port, got {listen!r}"]


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:9464", ("::1", 9464)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", ":9464", "host:", "host:port", "host:70000", "[]:80"])
def test_parse_listen_refuses_malformed(listen: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(listen)


def test_done_path_names_the_watched_path_it_overlaps_by_its_place_in_the_file(tmp_path: Path, runs: Path) -> None:
    (runs / "done").mkdir()
    path = write(tmp_path / "config.yaml", f"""
        after_tracking: move
        done_path: {runs}/done
        watch:
          - {{path: {tmp_path}/missing-app}}
          - {{path: {runs}, application_id: app}}
    """)

    found = problems(path)

    assert problem_at(found, "done_path") == f"done_path: {runs / 'done'} overlaps watch[1].path {runs}"


def test_a_section_that_is_not_a_mapping_is_reported(tmp_path: Path, runs: Path) -> None:
    path = write(tmp_path / "config.yaml", f"""
        api: [1, 2]
        watch: [{{path: {runs}, application_id: app}}]
    """)

    assert problem_at(problems(path), "api") == "api: must be a mapping"


def test_invalid_yaml_is_a_config_error_naming_the_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "watch: [unclosed\n")

    (problem,) = problems(path)   # names the file (see problems())

    assert problem == ("not valid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>' "
                       "(while parsing a flow sequence at line 1, column 8)")
    assert "<unicode string>" not in problem


def test_a_yaml_indentation_error_names_its_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "watch:\n  - path: /a\n application_id: x\n")

    (problem,) = problems(path)

    assert problem.startswith("not valid YAML at line 3, column 2: ")


def test_a_character_yaml_does_not_allow_is_named_by_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("workers: 2\nname: a\x07b\n")

    (problem,) = problems(path)

    assert problem.startswith("not valid YAML at line 2, column 8: ")


def test_a_config_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"workers: 2\n# caf\xe9\n")

    (problem,) = problems(path)

    assert problem == "not UTF-8 text (byte 16)"


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path / "absent.yaml")

    assert problem.startswith("cannot read the configuration file")


# --- Config.watch_for ----------------------------------------------------------------------------


def test_watch_for_finds_the_watched_path_of_a_direct_child_only(tmp_path: Path, runs: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    path = write(tmp_path / "config.yaml", f"""
        watch:
          - {{path: {runs}, application_id: a}}
          - {{path: {other}, application_id: b}}
    """)
    config: Config = load_config(path, env=ENV)

    found = config.watch_for(other / "run-1")
    assert found is not None
    assert found.application_id == "b"
    assert config.watch_for(runs / "run-1" / "nested") is None
    assert config.watch_for(runs) is None
    assert config.watch_for(tmp_path / "unwatched" / "run-1") is None


# --- resolvers -----------------------------------------------------------------------------------


def test_config_path_comes_from_the_argument_then_the_environment_then_the_default() -> None:
    env = {"NEXTMV_WATCHER_CONFIG": "/env/config.yaml"}

    assert resolve_config_path("/arg/config.yaml", env) == Path("/arg/config.yaml")
    assert resolve_config_path(None, env) == Path("/env/config.yaml")
    assert resolve_config_path(None, {}) == DEFAULT_CONFIG_PATH
    assert resolve_config_path(None, {"NEXTMV_WATCHER_CONFIG": ""}) == DEFAULT_CONFIG_PATH


def test_api_key_comes_from_key_file_first(tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", "  from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "nextmv-api-key", "from-credentials")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "NEXTMV_API_KEY": "from-env"}

    assert resolve_api_key(api(key_file), env) == ("from-file", str(key_file))
    assert resolve_api_key(api(), env) == ("from-credentials", str(creds / "nextmv-api-key"))
    assert resolve_api_key(api(), {"NEXTMV_API_KEY": "from-env"}) == ("from-env", "$NEXTMV_API_KEY")
    assert resolve_api_key(api(key_env="OTHER"), {"OTHER": " k2 "}) == ("k2", "$OTHER")


def test_an_empty_key_file_falls_through_to_the_next_source(tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", "\n")

    assert resolve_api_key(api(key_file), {"NEXTMV_API_KEY": "from-env"}) == ("from-env", "$NEXTMV_API_KEY")


def test_an_unreadable_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        resolve_api_key(api(tmp_path / "missing"), {"NEXTMV_API_KEY": "from-env"})

    (problem,) = excinfo.value.problems
    assert problem.startswith("api.key_file: cannot read")


def test_no_api_key_anywhere_is_a_config_error_listing_where_it_looked(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()

    with pytest.raises(ConfigError) as excinfo:
        resolve_api_key(api(), {"CREDENTIALS_DIRECTORY": str(creds), "NEXTMV_API_KEY": "  "})

    (problem,) = excinfo.value.problems
    assert "no API key found" in problem
    assert str(creds / "nextmv-api-key") in problem
    assert "$NEXTMV_API_KEY" in problem


@pytest.mark.parametrize(("mode", "shared"), [(0o600, False), (0o400, False), (0o640, True), (0o604, True)])
def test_key_file_is_shared_when_others_can_read_it(tmp_path: Path, mode: int, shared: bool) -> None:
    key = write(tmp_path / "key", "k")
    os.chmod(key, mode)

    assert key_file_is_shared(key) is shared


def test_a_missing_key_file_is_not_reported_as_shared(tmp_path: Path) -> None:
    assert key_file_is_shared(tmp_path / "missing") is False


def test_default_state_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b", "XDG_STATE_HOME": "/xdg"}) == \
        Path("/var/lib/a")
    assert default_state_dir({"XDG_STATE_HOME": "/xdg"}) == Path("/xdg/nextmv-watcher")
    assert default_state_dir({}) == tmp_path / "home" / ".local" / "state" / "nextmv-watcher"


def test_the_system_configuration_defaults_to_the_units_directories(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, runs: Path) -> None:
    (tmp_path / "etc").mkdir()
    etc = write(tmp_path / "etc" / "config.yaml", f"watch: [{{path: {runs}, application_id: a}}]\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", etc)
    monkeypatch.setattr(config_module, "SYSTEM_STATE_DIR", tmp_path / "var-lib")
    monkeypatch.setattr(config_module, "SYSTEM_CONTROL_SOCKET", tmp_path / "run" / "control.sock")
    user_env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}

    system = load_config(etc, env=user_env)
    assert (system.state_dir, system.control_socket) == (tmp_path / "var-lib", tmp_path / "run" / "control.sock")
    link = tmp_path / "link.yaml"
    link.symlink_to(etc)
    assert load_config(link, env=user_env).state_dir == tmp_path / "var-lib", "however the file is reached"

    under_systemd = load_config(etc, env={**user_env, "STATE_DIRECTORY": "/s", "RUNTIME_DIRECTORY": "/r"})
    assert (under_systemd.state_dir, under_systemd.control_socket) == (Path("/s"), Path("/r/control.sock"))

    other = write(tmp_path / "other.yaml", etc.read_text())
    mine = load_config(other, env=user_env)
    assert (mine.state_dir, mine.control_socket) == (tmp_path / "xdg" / "nextmv-watcher",
                                                     tmp_path / "xdg" / "nextmv-watcher" / "control.sock")


def test_state_under_the_previous_default_is_kept_not_moved(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, runs: Path) -> None:
    (tmp_path / "etc").mkdir()
    etc = write(tmp_path / "etc" / "config.yaml", f"watch: [{{path: {runs}, application_id: a}}]\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", etc)
    monkeypatch.setattr(config_module, "SYSTEM_STATE_DIR", tmp_path / "var-lib")
    previous = tmp_path / "xdg" / "nextmv-watcher"
    (previous / "folders").mkdir(parents=True)   # a read-only folder's markers live here
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg")}

    kept = load_config(etc, env=env)
    assert (kept.state_dir, kept.state_dir_from) == (previous, PREVIOUS_DEFAULT)

    (tmp_path / "var-lib" / "folders").mkdir(parents=True)   # state under the new default too: that one wins
    assert load_config(etc, env=env).state_dir == tmp_path / "var-lib"

    pinned = write(etc, etc.read_text() + f"state_dir: {tmp_path / 'pinned'}\n")
    assert load_config(pinned, env=env).state_dir_from == "state_dir"


def test_a_loaded_config_says_which_file_it_is(tmp_path: Path, runs: Path) -> None:
    path = write(tmp_path / "config.yaml", f"watch: [{{path: {runs}, application_id: a}}]\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(path)

    config = load_config(link, env=ENV)

    assert config.file is not None
    st = path.stat()
    assert (config.file.path, config.file.dev, config.file.ino) == (str(path), st.st_dev, st.st_ino)
    assert config.file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# --- config.example.yaml: every key with its default -----------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
# Keys the example shows with another value than their default, on purpose; the comment there names the default.
DELIBERATE_EXAMPLES: dict[str, Any] = {"completion.marker": "DONE"}


def flat(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Sections flattened to key paths: {"api.url": ..., "files.input": [...]}."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        out |= flat(value, f"{path}.") if isinstance(value, dict) else {path: value}
    return out


def example() -> dict[str, Any]:
    loaded = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_the_example_shows_every_key_with_its_default_and_no_other_key() -> None:
    shown = flat({k: v for k, v in example().items() if k != "watch"})
    defaults = flat({k: v for k, v in yaml_defaults(Config).items() if k != "watch"})

    for key, value in DELIBERATE_EXAMPLES.items():
        assert key in defaults
        assert defaults[key] != value, f"{key}: the example shows the default, it is no longer a deliberate example"
    assert sorted(shown) == sorted(defaults)   # every key the dataclasses define, and only those
    assert shown == defaults | DELIBERATE_EXAMPLES


def test_the_examples_watched_path_shows_its_keys_with_their_defaults() -> None:
    (watch,) = example()["watch"]
    required = {"path", "application_id"}
    defaults = flat(yaml_defaults(WatchConfig))
    shown = flat({k: v for k, v in watch.items() if k not in required})

    assert set(watch) | {"files"} == set(keys(WatchConfig))   # `files` is inherited: shown as a comment
    assert shown == {k: v for k, v in defaults.items() if not k.startswith("files.")}


def test_the_example_is_a_valid_configuration(tmp_path: Path, runs: Path) -> None:
    raw = example()
    raw["watch"][0]["path"] = str(runs)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")

    config = load_config(path, env=ENV)

    assert config.completion.marker == "DONE"
    assert config.files == config.watch[0].files == FilesConfig()


def test_a_shard_gets_its_share_of_workers_and_a_control_socket_of_its_own(tmp_path: Path, runs: Path) -> None:
    path = write(tmp_path / "c.yaml", f"""
        watch: [{{path: {runs}, application_id: app-1}}]
        workers: 32
        processes: 3
        control_socket: {tmp_path}/control.sock
    """)
    shares = [load_config(path, env={**ENV, "NEXTMV_WATCHER_SHARD": f"{i}/3"}) for i in range(3)]
    assert [c.workers for c in shares] == [11, 11, 10]
    assert [c.shard for c in shares] == [(0, 3), (1, 3), (2, 3)]
    assert [c.control_socket.name for c in shares] == ["control.sock.0", "control.sock.1", "control.sock.2"]
    whole = load_config(path, env=ENV)
    assert (whole.workers, whole.shard, whole.control_socket.name) == (32, (0, 1), "control.sock")
    with pytest.raises(ConfigError, match="NEXTMV_WATCHER_SHARD"):
        load_config(path, env={**ENV, "NEXTMV_WATCHER_SHARD": "3/3"})
    # The supervisor names each process's socket once: a reload that moves control_socket moves neither.
    fixed = load_config(path, env={**ENV, "NEXTMV_WATCHER_SHARD": "1/3",
                                   "NEXTMV_WATCHER_SHARD_SOCKET": f"{tmp_path}/started.sock.1"})
    assert fixed.control_socket == tmp_path / "started.sock.1"


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "1/0"])
def test_a_malformed_shard_is_refused(tmp_path: Path, runs: Path, text: str) -> None:
    path = write(tmp_path / "c.yaml", f"""
        watch: [{{path: {runs}, application_id: app-1}}]
        processes: 2
    """)
    with pytest.raises(ConfigError, match="NEXTMV_WATCHER_SHARD"):
        load_config(path, env={**ENV, "NEXTMV_WATCHER_SHARD": text})


def test_more_processes_than_workers_is_refused(tmp_path: Path, runs: Path) -> None:
    path = write(tmp_path / "c.yaml", f"""
        watch: [{{path: {runs}, application_id: app-1}}]
        workers: 2
        processes: 3
    """)
    assert problem_at(problems(path), "processes").startswith("processes: 3 is more than workers (2)")


def test_the_default_processes_are_never_more_than_workers(tmp_path: Path, runs: Path) -> None:
    """`processes` defaults to 2, or to `workers` if fewer: `workers: 1`, valid before the default rose,
    still is; the same two processes asked for are refused."""
    watch = f"watch: [{{path: {runs}, application_id: app-1}}]\n"
    one = load_config(write(tmp_path / "one.yaml", watch + "workers: 1\n"), env=ENV)
    assert (one.workers, one.processes) == (1, 1)
    three = load_config(write(tmp_path / "three.yaml", watch + "workers: 3\n"), env=ENV)
    assert (three.workers, three.processes) == (3, 2)
    asked = problems(write(tmp_path / "asked.yaml", watch + "workers: 1\nprocesses: 2\n"))
    assert problem_at(asked, "processes").startswith("processes: 2 is more than workers (1)")
