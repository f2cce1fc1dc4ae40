"""allocator.tune: glibc's mmap threshold fixed and its arenas capped, unless the environment sets them."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

# In a child process: the settings must not change the test run's own allocator.
PROBE = ("import json, sys; from watcher.daemon import allocator; "
         "print(json.dumps(allocator.tune(json.loads(sys.argv[1]))))")


def tune_in_child(environ: dict[str, str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(environ)], capture_output=True, text=True,
                         timeout=60, check=True)
    return list(json.loads(out.stdout))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_both_settings_are_made_with_glibc() -> None:
    assert tune_in_child({}) == ["MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_setting_given_in_the_environment_is_left_as_given() -> None:
    assert "MALLOC_ARENA_MAX" not in tune_in_child({"MALLOC_ARENA_MAX": "4"})
    assert tune_in_child({"MALLOC_ARENA_MAX": "4", "MALLOC_MMAP_THRESHOLD_": "65536"}) == []
    assert tune_in_child({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) == ["MALLOC_MMAP_THRESHOLD_"]
