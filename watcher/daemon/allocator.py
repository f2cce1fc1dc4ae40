"""glibc's allocator set for a long-running process that parses big documents in many threads.

By default glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so that
after the first 16 MiB JSON document the next ones come from the heap of the thread that reads them, and
each of up to 8 per core of those heaps ("arenas") keeps what was freed in it. `tune` caps the arenas at
`ARENA_MAX` and fixes the threshold (blocks of `MMAP_THRESHOLD` and more are mapped, and given back to
the system when freed, whatever the arenas hold); a setting given in the environment (`MALLOC_ARENA_MAX`,
`MALLOC_MMAP_THRESHOLD_`, or its tunable in `GLIBC_TUNABLES`) is left as given. With another allocator
preloaded (jemalloc, tcmalloc) the settings reach glibc's unused one: they do nothing, and no harm.
Measured with the bench's hostile case (32 workers each on a folder with three 16 MiB worst-case JSON
documents, parsed one at a time, beside a 100,000-folder backlog), peak RSS: 1,362 MB as glibc comes;
516 MB with 2 arenas by the environment, 616 MB by `mallopt` (one run each: the figure moves by tens of
MB between runs); 589 MB with the threshold at 4 MiB; 515 MB with both (1 MiB); 576-590 MB with the
settings here (three runs). The threshold stays above the 1 MiB chunks uploads are read in: at 1 MiB or 2 MiB each
chunk was mapped anew (263,170 and 114,944 page faults reading 1 GiB, against 317; 0.4-0.8 s more
system CPU). CPU per run with the settings here was not higher (20 ms, 500 folders: 10.3 and 11.0 ms
against 12.3 and 11.5 without, back to back).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

M_MMAP_THRESHOLD = -3   # glibc's <malloc.h>
M_ARENA_MAX = -8
MMAP_THRESHOLD = 4 << 20
ARENA_MAX = 2
_SETTINGS = ((M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold", MMAP_THRESHOLD),
             (M_ARENA_MAX, "MALLOC_ARENA_MAX", "glibc.malloc.arena_max", ARENA_MAX))


def tune(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Set the allocator (call before the threads start). Returns the settings made, by their variable's
    name; none where the C library has no `mallopt` (not glibc) or refuses it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return []
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    tunables = environ.get("GLIBC_TUNABLES", "")
    return [name for param, name, tunable, value in _SETTINGS
            if name not in environ and tunable not in tunables and mallopt(param, value) == 1]
