"""Which run folders a process takes when the daemon runs several (`processes`): its shard.

A folder belongs to exactly one shard, by a stable hash of its path (CRC-32 of the path's bytes, modulo
the number of shards), so that every process can tell at once, from the name alone, whether a folder
found by its observer or its scans is its own; the others are never offered to its index. With one
process (`ALL`) every folder is its own.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: the index must be in 0..{self.count - 1}")

    def owns(self, folder: Path) -> bool:
        return self.count == 1 or zlib.crc32(os.fsencode(folder)) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


ALL = Shard(0, 1)
