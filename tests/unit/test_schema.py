"""The state files' schema: what this version writes, what it reads (0.1's files included), and that a
file written by a newer nextmv-watcher is never trusted (`watcher.runfolder.schema`)."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.errors import InvalidFolder, NewerState, StateError
from watcher.runfolder.schema import SCHEMA, check, first_newer, schema_of


def test_this_version_writes_schema_1() -> None:
    assert SCHEMA == 1


@pytest.mark.parametrize(("data", "schema"), [({}, 1), ({"run_id": "r"}, 1), ({"schema": 1}, 1), ({"schema": 7}, 7)])
def test_a_file_without_schema_is_schema_1(data: dict[str, Any], schema: int) -> None:
    """0.1 wrote no `schema`: its files are schema 1."""
    assert schema_of(data, "f/.nextmv-journal.json") == schema


@pytest.mark.parametrize("value", [0, -1, "1", 1.0, 1.5, True, None, [1]])
def test_a_schema_that_is_not_a_whole_number_from_1_is_a_state_error(value: object) -> None:
    with pytest.raises(StateError, match=r"f/\.nextmv-tracked\.json: schema .* is not a whole number from 1"):
        schema_of({"schema": value}, "f/.nextmv-tracked.json")


def test_check_passes_this_version_s_files_and_0_1_s() -> None:
    for data in ({"run_id": "r"}, {"run_id": "r", "schema": 1}):
        assert check(data, "/runs/a", ".nextmv-tracked.json") is data


def test_check_refuses_a_newer_file_naming_it_and_its_schema() -> None:
    with pytest.raises(NewerState) as exc:
        check({"schema": 99, "run_id": "r"}, "/runs/a", ".nextmv-tracked.json")
    assert (exc.value.folder, exc.value.name, exc.value.schema) == ("/runs/a", ".nextmv-tracked.json", 99)
    assert exc.value.problem == ".nextmv-tracked.json written by a newer nextmv-watcher (schema 99)"
    assert str(exc.value) == "/runs/a: .nextmv-tracked.json written by a newer nextmv-watcher (schema 99); left alone"


def test_first_newer_finds_the_first_newer_file_and_leaves_unreadable_ones_to_their_readers() -> None:
    files: dict[str, Exception | None] = {
        "a": None,                                              # absent or readable
        "b": StateError("not valid JSON"),                      # its reader says so when it acts on it
        "c": InvalidFolder("/runs/x", "c is a FIFO"),           # not ours: its reader fails the folder
        "d": NewerState("/runs/x", "d", 2),
        "e": NewerState("/runs/x", "e", 3),
    }

    def read(name: str) -> None:
        error = files[name]
        if error is not None:
            raise error

    found = first_newer(read, list(files))
    assert found is not None and (found.name, found.schema) == ("d", 2)
    assert first_newer(read, ["a", "b", "c"]) is None
