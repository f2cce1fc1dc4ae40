"""Issue 8, item 2 and item 6: state files a producer forged, and the mode of the daemon's markers.

The set-up is the shared server of test_attacks.py (hostile.py). A `.nextmv-*` file owned by
neither the daemon's user nor root (nor a uid listed in `state_owners`) must not be trusted:
a forged tracked marker would hide a folder, a forged journal would reuse someone else's upload.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from evidence import finished, no_leak, settled, snapshot
from helpers import FAILED, TRACKED, wait_for
from hostile import A_INPUT, A_OUTPUT, B_INPUT, B_OUTPUT, TEAM_A_ID, Server

pytestmark = pytest.mark.e2e

needs_owners = pytest.mark.skipif(os.geteuid() != 0, reason="needs distinct owners for the daemon and the "
                                  "producers: run as root (as CI does)")
JOURNAL = ".nextmv-journal.json"


# -- forged state files (item 2) -------------------------------------------------------------------


def _forged_tracked() -> str:
    return json.dumps({"run_id": "run-forged", "application_id": "app-a", "tracked_at": "2026-01-01T00:00:00.000Z"})


@needs_owners
def test_forged_tracked_marker_is_not_trusted(server: Server) -> None:
    """Item 2. A complete folder of team A carries a tracked marker its producer wrote (owned by the
    producer), to be skipped without a trace. Must hold: the daemon logs the warning
    `state_file_untrusted` with a field naming the file, and `scan --json` reports the folder invalid
    or failed with a reason naming .nextmv-tracked.json."""
    victim = server.victim()
    before = snapshot(server.b.path)
    daemon = server.start_daemon()
    forged = server.put_folder(server.a, "forged-tracked", {"input.json": A_INPUT, "output.json": A_OUTPUT,
                                                           TRACKED: _forged_tracked()})

    def warned() -> bool:
        return any(e.get("event") == "state_file_untrusted" and e.get("level") == "warning"
                   and any(TRACKED in str(v) for k, v in e.items() if k != "event") for e in daemon.events())

    wait_for(warned, 30, "a state_file_untrusted warning naming .nextmv-tracked.json")
    report = server.scan()["forged-tracked"]
    assert report["state"] in ("invalid", "failed") and TRACKED in report["reason"], report
    assert server.run_named(server.a, forged.name) is None
    server.assert_still_serving(daemon, "forged-tracked")
    server.check_victim(victim, before)
    no_leak(server.cloud)


@needs_owners
def test_state_owners_trusts_the_markers_of_a_listed_owner(server: Server) -> None:
    """Item 2, shared volumes. With `state_owners: [<team A's uid>]` a tracked marker owned by team A's
    uid is trusted: `scan --json` says tracked, and the daemon uploads nothing for that folder."""
    victim = server.victim()
    before = snapshot(server.b.path)
    forged = server.put_folder(server.a, "shared-tracked", {"input.json": A_INPUT, "output.json": A_OUTPUT,
                                                           TRACKED: _forged_tracked()})
    config = server.write_config("owners.yaml", state_owners=[TEAM_A_ID])
    daemon = server.start_daemon(config)
    server.assert_still_serving(daemon, "state-owners")
    report = server.scan(config)["shared-tracked"]
    assert report["state"] == "tracked" and report["run_id"] == "run-forged", report
    assert server.run_named(server.a, forged.name) is None
    assert server.cloud.uploads() and all(u.data != A_INPUT for u in server.cloud.uploads())
    server.check_victim(victim, before)
    no_leak(server.cloud)


@needs_owners
def test_forged_journal_cannot_reuse_another_folders_upload(server: Server) -> None:
    """Item 2. Team A's producer writes its own folder's journal, claiming that its input was already
    uploaded as the upload id of team B's tracked folder b0 (with r1's real fingerprint, so it would be
    reused). Must hold: no run but b0's references that upload id."""
    victim = server.victim()
    daemon = server.start_daemon()
    b0_folder = server.put_folder(server.b, "b0", {"input.json": B_INPUT, "output.json": B_OUTPUT})
    b0 = wait_for(lambda: server.run_named(server.b, "b0"), 30, "team B's b0 tracked")
    wait_for(lambda: settled(b0_folder), 10, "b0's marker, its journal gone and its claim released")
    before = snapshot(server.b.path)
    stolen = b0.body["upload_id"]

    def forge(work: Path) -> None:
        st = os.stat(work / "input.json")
        journal = {"attempts": 0, "next_attempt_at": None, "last_error": None, "intents": [],
                   "uploads": {"input": {"upload_id": stolen, "obtained_at": time.time(),
                                         "fingerprint": {"input.json": [st.st_size, st.st_mtime_ns, st.st_ino]}}}}
        (work / JOURNAL).write_text(json.dumps(journal))

    r1 = server.put_folder(server.a, "forged-journal", {"input.json": A_INPUT, "output.json": A_OUTPUT},
                           prepare=forge)
    wait_for(lambda: finished(r1), 30, "the folder with a forged journal finished")
    reusing = [r.run_id for r in server.cloud.runs() if stolen in json.dumps(r.body) and r.run_id != b0.run_id]
    assert reusing == [], f"a run references team B's upload {stolen}"
    server.assert_still_serving(daemon, "forged-journal")
    server.check_victim(victim, before)
    no_leak(server.cloud)


# -- small hardening -------------------------------------------------------------------------------


def test_markers_are_created_0640_whatever_the_umask(server: Server) -> None:
    """Item 6. With a permissive umask (022, a shell's default: `sync` run by hand, or a unit without
    UMask=), the tracked and failed markers are still created 0640."""
    victim = server.victim()
    before = snapshot(server.b.path)
    daemon = server.start_daemon(umask=0o022)
    tracked = server.put_folder(server.a, "ok", {"input.json": A_INPUT, "output.json": A_OUTPUT})
    invalid = server.put_folder(server.a, "no-input", {"output.json": A_OUTPUT})
    wait_for(lambda: os.path.lexists(tracked / TRACKED) and os.path.lexists(invalid / FAILED), 30, "markers")
    modes = {name: oct(stat.S_IMODE(os.lstat(folder / name).st_mode))
             for folder, name in ((tracked, TRACKED), (invalid, FAILED))}
    assert modes == {TRACKED: "0o640", FAILED: "0o640"}
    server.assert_still_serving(daemon, "modes")
    server.check_victim(victim, before)
    no_leak(server.cloud)
