"""Shard: every folder belongs to exactly one of N processes, by its path alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    # Every process must agree: another interpreter, with another hash seed, sees the same owners.
    code = ("import json, sys; from pathlib import Path; from watcher.daemon.shard import Shard; "
            "print(json.dumps([Shard(1, 2).owns(Path(f)) for f in json.loads(sys.argv[1])]))")
    other = subprocess.run([sys.executable, "-c", code, json.dumps([str(f) for f in FOLDERS])], check=True,
                           capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert json.loads(other.stdout) == [Shard(1, 2).owns(f) for f in FOLDERS]
    assert str(Shard(1, 2)) == "1/2"   # as $NEXTMV_WATCHER_SHARD and the events' `shard` say it
