"""The generic section parser on a toy schema: what a field's annotation, default and check mean."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from watcher.configparse import Parser, Report, as_yaml, build, positive, setting, yaml_defaults


def even(value: int, report: Report) -> int:
    if value % 2:
        report("must be even")
    return value


def words(raw: object, report: Report) -> tuple[str, ...]:
    if not isinstance(raw, list):
        report("must be a list")
        return ()
    for i, w in enumerate(raw):
        if not isinstance(w, str):
            report("must be a word", sub=f"[{i}]")
    return tuple(w for w in raw if isinstance(w, str))


@dataclass(frozen=True)
class Inner:
    size: int = setting(2, check=even, doc="an even size")
    ratio: float = setting(0.5, check=positive, doc="a ratio")


@dataclass(frozen=True)
class Outer:
    name: str = setting(doc="what it is called")
    where: Path | None = setting(None, doc="a place")
    home: Path = setting(None, doc="resolved by the caller when null")
    on: bool = setting(False, doc="a switch")
    tags: tuple[str, ...] = setting(("a",), check=words, doc="words")
    inner: Inner = setting(Inner(), doc="a section")
    note: str = "not a key"


def parse(raw: object, **kwargs: Any) -> tuple[dict[str, Any], list[str]]:
    p = Parser(Path("/base"))
    values = p.section(Outer, raw, "", **kwargs)
    return values, p.problems


def test_values_are_converted_to_their_annotations_and_defaults_fill_the_rest() -> None:
    values, found = parse({"name": "x", "where": "rel/dir", "inner": {"ratio": 2}})

    assert found == []
    outer = build(Outer, values)
    assert outer == Outer(name="x", where=Path("/base/rel/dir"), home=None, inner=Inner(ratio=2.0))
    assert outer is not None
    assert isinstance(outer.inner.ratio, float)


def test_every_problem_is_reported_with_its_key_path() -> None:
    values, found = parse({"name": "", "where": 3, "home": True, "on": 1, "tags": ["ok", 5], "inner": {"size": 3,
                           "ratio": "big", "extra": 1}, "note": "x"})

    assert found == [
        "note: unknown key (known: home, inner, name, on, tags, where)",
        "name: required (what it is called)",
        "where: must be a string or null, got int",
        "home: must be a string or null, not a boolean",
        "on: must be true or false, got int",
        "tags[1]: must be a word",
        "inner.extra: unknown key (known: ratio, size)",
        "inner.size: must be even",
        "inner.ratio: must be a number, got str",
    ]
    assert build(Outer, values) is None   # the required name is missing


def test_a_section_that_is_not_a_mapping_is_reported_and_takes_its_defaults() -> None:
    values, found = parse({"name": "x", "inner": [1]})

    assert found == ["inner: must be a mapping"]
    assert values["inner"] == Inner()


def test_defaults_can_be_replaced_by_the_caller_and_own_keys_are_left_raw() -> None:
    values, found = parse({"name": "x", "tags": "raw", "inner": {"ratio": 4}},
                          defaults={"inner": Inner(size=8)}, own=("tags",))

    assert found == []
    assert values["tags"] == "raw"
    assert values["inner"] == Inner(size=8, ratio=4.0)


@pytest.mark.parametrize("raw", [None, 5, "text"])
def test_the_file_itself_must_be_a_mapping(raw: object) -> None:
    values, found = parse(raw)

    assert found == ["the file: must be a mapping", "name: required (what it is called)"]
    assert values == {"where": None, "home": None, "on": False, "tags": ("a",), "inner": Inner()}


def test_yaml_defaults_show_every_key_with_a_default_as_yaml_writes_it() -> None:
    assert yaml_defaults(Outer) == {"where": None, "home": None, "on": False, "tags": ["a"],
                                    "inner": {"size": 2, "ratio": 0.5}}
    assert as_yaml(Outer(name="n", where=Path("/p"))) == {
        "name": "n", "where": "/p", "home": None, "on": False, "tags": ["a"], "inner": {"size": 2, "ratio": 0.5}}
