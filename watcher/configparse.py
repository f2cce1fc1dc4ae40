"""Reading a YAML mapping into frozen dataclasses whose fields declare the configuration.

A field made with `setting(default, check=..., doc=...)` is a configuration key; other fields are
not. The field is the one place for the key's default, type and check:

- the annotation says what YAML may hold: `str`, `int`, `bool`; `float` takes integers too (and
  gives a float); `Path` takes a string, made absolute against the config file's directory;
  `X | None`, or a default of None, takes null as well. A boolean is refused wherever true/false is
  not expected. A `tuple[...]` field's check receives the YAML value as it is and converts it.
- a nested frozen dataclass is a section (a mapping); a missing or null section is all defaults.
- a field without a default is required: missing, null, empty or of the wrong type is
  "<key>: required (<doc>)".
- `check(value, report) -> value` runs on a present, well-typed, non-null value; it reports
  problems (`report(text)`, or `report(text, sub="[2]")` for an item) and returns the value to keep.

`Parser.section` walks one dataclass and one mapping and records every problem, with its key path
(`watch[1].format.input: must be one of ...`), instead of stopping at the first; the rules that span
keys (overlapping paths, defaults from the environment) are the caller's. This module knows no
particular key: `watcher.config` declares them.
"""

from __future__ import annotations

import os
import pwd
import types
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar, Union, cast, get_args, get_origin, get_type_hints

T = TypeVar("T")
NoneType = type(None)
_SETTING = "watcher.setting"
_TYPE_NAMES: dict[type, str] = {str: "a string", int: "an integer", float: "a number", NoneType: "null",
                                bool: "true or false", list: "a list"}


class Report(Protocol):
    def __call__(self, text: str, sub: str = "") -> None: ...


Check = Callable[[Any, Report], Any]


@dataclass(frozen=True)
class Setting:
    check: Check | None
    doc: str


def setting(default: Any = MISSING, *, check: Check | None = None, doc: str) -> Any:
    """A dataclass field that is a configuration key (see the module docstring); no default: required."""
    metadata = {_SETTING: Setting(check, doc)}
    if default is MISSING:
        return field(metadata=metadata)
    return field(default=default, metadata=metadata)


def keys(cls: type) -> dict[str, tuple[Field[Any], Any]]:
    """The configuration keys of a dataclass: name -> (its field, its resolved annotation)."""
    hints = get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in fields(cls) if _SETTING in f.metadata}


def required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def build(cls: type[T], values: Mapping[str, Any]) -> T | None:
    """`cls(**values)`, or None when a required key has no value (its problem is already reported)."""
    if any(required(f) and name not in values for name, (f, _) in keys(cls).items()):
        return None
    return cls(**values)


def as_yaml(value: Any) -> Any:
    """A configuration value as YAML writes it: sections as mappings, tuples as lists, paths as strings."""
    if is_dataclass(value) and not isinstance(value, type):
        return {name: as_yaml(getattr(value, name)) for name in keys(type(value))}
    if isinstance(value, tuple):
        return [as_yaml(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def yaml_defaults(cls: type) -> dict[str, Any]:
    """Every key of `cls` that has a default, with it, as YAML writes it (what config.example.yaml shows)."""
    return {name: as_yaml(f.default) for name, (f, _) in keys(cls).items() if not required(f)}


class Parser:
    """Collects problems instead of stopping at the first; every method returns a usable value regardless."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def reporter(self, where: str) -> Report:
        def report(text: str, sub: str = "") -> None:
            self.problem(f"{where}{sub}: {text}")
        return report

    def mapping(self, raw: object, where: str) -> dict[str, Any] | None:
        if not isinstance(raw, dict):
            self.problem(f"{where or 'the file'}: must be a mapping")
            return None
        return raw

    def section(self, cls: type, raw: object, where: str, *, defaults: Mapping[str, Any] | None = None,
                own: Collection[str] = ()) -> dict[str, Any]:
        """The values of `cls`'s keys read from `raw`, by name. `defaults` replaces field defaults by
        name (a section's default is an instance). Keys in `own` are left to the caller: their raw
        value (None when absent) is returned unchecked. A required key without a usable value is left out."""
        known = keys(cls)
        given = self.mapping(raw, where)
        if given is None:
            given = {}
        for key in given:
            if key not in known:
                self.problem(f"{_join(where, str(key))}: unknown key (known: {', '.join(sorted(known))})")
        values: dict[str, Any] = {}
        for name, (f, hint) in known.items():
            at = _join(where, name)
            default = defaults[name] if defaults is not None and name in defaults else f.default
            value = given.get(name)
            if name in own:
                values[name] = value
            elif isinstance(hint, type) and is_dataclass(hint):   # a section; its default is an instance
                sub_defaults = {n: getattr(default, n) for n in keys(hint)}
                sub = self.section(hint, {} if value is None else value, at, defaults=sub_defaults)
                values[name] = replace(cast(Any, default), **sub)
            elif required(f):
                accepted = _accepted(hint, MISSING)
                if value and (accepted is None or _is(value, accepted)):
                    values[name] = self._checked(value, hint, f, at)
                else:
                    self.problem(f"{at}: required ({f.metadata[_SETTING].doc})")
            elif name not in given:
                values[name] = default
            else:
                accepted = _accepted(hint, default)
                if accepted is not None and not _is(value, accepted):
                    self.problem(f"{at}: {wrong_type(value, accepted)}")
                    values[name] = default
                else:
                    values[name] = self._checked(value, hint, f, at)
        return values

    def _checked(self, value: Any, hint: Any, f: Field[Any], at: str) -> Any:
        """A present value of an accepted type, converted to the annotation's type and checked."""
        check = f.metadata[_SETTING].check
        if _accepted(hint, f.default) is None:   # a tuple: the check converts the raw value
            assert check is not None, f"{at}: a tuple key needs a check"
            return check(value, self.reporter(at))
        if value is None:
            return None
        options = _options(hint)
        if isinstance(value, str) and Path in options:
            value = self.path(value)
        elif isinstance(value, int) and float in options:
            value = float(value)
        return value if check is None else check(value, self.reporter(at))

    def path(self, raw: str) -> Path:
        p = Path(raw).expanduser()
        return p if p.is_absolute() else self.base_dir / p


def _options(hint: Any) -> tuple[Any, ...]:
    return get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)


def _accepted(hint: Any, default: Any) -> tuple[type, ...] | None:
    """The YAML types a key of this annotation takes, or None when its check takes the raw value."""
    accepted: list[type] = []
    for option in _options(hint):
        if get_origin(option) is tuple:
            return None
        if option is float:
            accepted += [int, float]
        elif option is Path:
            accepted.append(str)
        else:
            accepted.append(option)
    if default is None and NoneType not in accepted:
        accepted.append(NoneType)
    return tuple(accepted)


def _is(value: object, accepted: tuple[type, ...]) -> bool:
    return isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)


def wrong_type(value: object, accepted: tuple[type, ...]) -> str:
    """'must be a number, got str'; a boolean is named as such (YAML's yes/no/on/off are booleans)."""
    name = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in accepted if not (t is int and float in accepted))
    return f"must be {name}, {'not a boolean' if isinstance(value, bool) else f'got {type(value).__name__}'}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# --- checks: (value, report) -> the value to keep ---------------------------------------------------


def positive(value: float, report: Report) -> float:
    if value <= 0:
        report("must be greater than 0")
    return value


def non_negative(value: float, report: Report) -> float:
    if value < 0:
        report("must not be negative")
    return value


def at_least(minimum: int) -> Check:
    def check(value: int, report: Report) -> int:
        if value < minimum:
            report(f"must be at least {minimum}")
        return value
    return check


def choice(options: tuple[str, ...], *, lower: bool = False) -> Check:
    """One of `options` (compared in lower case when `lower`, and kept so)."""
    def check(value: str, report: Report) -> str:
        value = value.lower() if lower else value
        if value not in options:
            report(f"must be one of {', '.join(options)}, got {value!r}")
        return value
    return check


def url(value: str, report: Report) -> str:
    if not value.startswith(("http://", "https://")):
        report(f"must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


def existing_file(value: Path, report: Report) -> Path:
    if not value.is_file():
        report(f"{value} is not a file")
    return value


def absolute(value: Path, report: Report) -> Path:
    """A path made absolute (no symlinks resolved). Whether it exists is not checked: a watched path
    may come and go while the daemon runs (see `watcher.runfolder.scan.probe`)."""
    return Path(os.path.abspath(value))


def plain_name(value: str, report: Report) -> str:
    """A file name directly in the run folder, not a dotfile."""
    if not value or "/" in value or value.startswith("."):
        report("must be a plain file name")
    return value


def file_names(raw: object, report: Report) -> tuple[str, ...]:
    """One name or a non-empty list of plain names in the run folder; a trailing '/' means a directory."""
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        report("must be a non-empty list of file names")
        return ()
    for n in names:
        if "/" in n.rstrip("/") or n.startswith("."):
            report(f"{n!r} must be a plain name in the run folder (no path, no dotfile)")
    return tuple(names)


def users(raw: object, report: Report) -> tuple[int, ...]:
    """A list of user names or uids, as uids; a name must exist on this host."""
    if not isinstance(raw, list):
        report(wrong_type(raw, (list,)))
        return ()
    uids = []
    for i, item in enumerate(raw):
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            uids.append(item)
        elif isinstance(item, str) and item:
            try:
                uids.append(pwd.getpwnam(item).pw_uid)
            except KeyError:
                report(f"no user {item!r} on this host", sub=f"[{i}]")
        else:
            report("must be a user name or a uid", sub=f"[{i}]")
    return tuple(uids)
