"""Shard: every folder belongs to exactly one of N processes, by its path alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher.daemon.shard import ALL, Shard

FOLDERS = [Path(f"/srv/nextmv/runs/run-{n:05d}") for n in range(2000)]


def test_every_folder_has_exactly_one_owner_and_the_shares_are_even() -> None:
    shards = [Shard(i, 3) for i in range(3)]
    owners = [[s for s in shards if s.owns(f)] for f in FOLDERS]
    assert all(len(o) == 1 for o in owners)
    shares = [sum(1 for o in owners if o[0] is s) for s in shards]
    assert min(shares) > 0.28 * len(FOLDERS), shares


def test_one_process_owns_everything_and_ownership_is_stable() -> None:
    assert all(ALL.owns(f) for f in FOLDERS)
    assert [Shard(1, 2).owns(f) for f in FOLDERS] == [Shard.parse("1/2").owns(f) for f in FOLDERS]
    assert str(Shard.parse("1/2")) == "1/2"


@pytest.mark.parametrize("text", ["2/2", "-1/2", "1", "a/b", "1/0"])
def test_a_malformed_shard_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        Shard.parse(text)
