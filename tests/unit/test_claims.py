"""Claims: one process per folder, with a lease that expires and a takeover of dead holders' claims."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyfakefs import helpers
from pyfakefs.fake_filesystem import FakeFilesystem

from watcher.daemon.lease import LeaseKeeper
from watcher.errors import ClaimLost, StateError
from watcher.runfolder.claims import CLAIM, Claims
from watcher.runfolder.markers import StateStore

FOLDER = Path("/runs/run-1")
LEASE = 60.0


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped (taken before pyfakefs patches os)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


@pytest.fixture
def clock(fs: FakeFilesystem) -> Clock:
    fs.create_dir(FOLDER)
    return Clock()


def claims(clock: Clock, host: str = "host-a", pid: int | None = None) -> Claims:
    return Claims(lease_seconds=LEASE, clock=clock, host=host, pid=pid or os.getpid())


def on_disk() -> dict[str, object]:
    return json.loads((FOLDER / CLAIM).read_text())


def test_acquire_writes_an_exclusive_claim_with_a_lease(clock: Clock) -> None:
    mine = claims(clock, host="host-a", pid=4242)

    claim = mine.acquire(FOLDER)

    assert claim is not None
    assert claim.path == FOLDER / CLAIM
    assert on_disk() == {"host": "host-a", "pid": 4242, "id": claim.claim_id, "lease_until": 1000.0 + LEASE}
    assert mine.holder(FOLDER) == on_disk()
    assert os.listdir(FOLDER) == [CLAIM]


def test_a_live_claim_is_not_taken_by_another_process(clock: Clock) -> None:
    first = claims(clock, host="host-a").acquire(FOLDER)
    assert first is not None
    clock.now += LEASE - 1

    assert claims(clock, host="host-b").acquire(FOLDER) is None
    assert claims(clock, host="host-a", pid=os.getpid()).acquire(FOLDER) is None
    assert on_disk()["id"] == first.claim_id


def test_an_expired_claim_is_taken_over_and_its_old_holder_loses_it(clock: Clock) -> None:
    old = claims(clock, host="host-a")
    first = old.acquire(FOLDER)
    assert first is not None
    clock.now += LEASE + 1

    new = claims(clock, host="host-b").acquire(FOLDER)

    assert new is not None
    assert on_disk()["id"] == new.claim_id
    assert on_disk()["host"] == "host-b"
    assert sorted(os.listdir(FOLDER)) == [CLAIM]  # the stale claim moved aside is gone
    with pytest.raises(ClaimLost, match="taken over"):
        old.verify(first)


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(clock: Clock, dead_pid: int) -> None:
    first = claims(clock, host="host-a", pid=dead_pid).acquire(FOLDER)
    assert first is not None

    new = claims(clock, host="host-a").acquire(FOLDER)

    assert new is not None
    assert on_disk()["id"] == new.claim_id


def test_a_dead_pid_on_another_host_is_not_judged_from_here(clock: Clock, dead_pid: int) -> None:
    first = claims(clock, host="host-a", pid=dead_pid).acquire(FOLDER)
    assert first is not None

    assert claims(clock, host="host-b").acquire(FOLDER) is None
    assert on_disk()["id"] == first.claim_id


def test_a_corrupt_claim_file_older_than_the_lease_is_taken_over(clock: Clock, fs: FakeFilesystem) -> None:
    fs.create_file(FOLDER / CLAIM, contents="{half")
    os.utime(FOLDER / CLAIM, (clock.now - LEASE - 1, clock.now - LEASE - 1))

    new = claims(clock).acquire(FOLDER)

    assert new is not None
    assert on_disk()["id"] == new.claim_id


@pytest.mark.parametrize("contents", ["", '{"host": "host-b", "pi'])
def test_an_empty_or_partial_claim_younger_than_the_lease_is_held_not_corrupt(clock: Clock, fs: FakeFilesystem,
                                                                             contents: str) -> None:
    # What a competitor on a filesystem without hard links leaves while it writes its claim.
    fs.create_file(FOLDER / CLAIM, contents=contents)
    os.utime(FOLDER / CLAIM, (clock.now - LEASE / 2, clock.now - LEASE / 2))

    assert claims(clock).acquire(FOLDER) is None
    assert (FOLDER / CLAIM).read_text() == contents, "a claim being written is left alone"
    clock.now += LEASE
    assert claims(clock).acquire(FOLDER) is not None, "once older than the lease it is stale"


def test_a_claim_that_cannot_be_written_leaves_no_file_behind(clock: Clock, fs: FakeFilesystem) -> None:
    fs.set_disk_usage(fs.get_disk_usage("/").used + 10, "/")   # room for 10 bytes: a claim needs ~100

    with pytest.raises(StateError, match="cannot create claim: No space left on device"):
        claims(clock).acquire(FOLDER)

    assert os.listdir(FOLDER) == []


def test_a_claim_appears_whole_through_a_hard_link(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []
    real_link = os.link

    def link(src: str, dst: str, **kwargs: object) -> None:
        # The source is complete before it gets the claim's name.
        seen.append(os.read(fd := os.open(src, os.O_RDONLY, dir_fd=kwargs["src_dir_fd"]), 4096))
        os.close(fd)
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", link)
    claim = claims(clock, pid=4242).acquire(FOLDER)

    assert claim is not None
    assert [json.loads(b)["id"] for b in seen] == [claim.claim_id]
    assert os.listdir(FOLDER) == [CLAIM], "the temporary file is gone"


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.EOPNOTSUPP])
def test_without_hard_links_the_claim_is_created_exclusively(clock: Clock, monkeypatch: pytest.MonkeyPatch,
                                                             refusal: int) -> None:
    def no_links(*args: object, **kwargs: object) -> None:   # SMB and vfat refuse link(2)
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "link", no_links)
    first = claims(clock, host="host-a").acquire(FOLDER)

    assert first is not None
    assert on_disk()["id"] == first.claim_id
    assert os.listdir(FOLDER) == [CLAIM]
    assert claims(clock, host="host-b").acquire(FOLDER) is None, "O_EXCL: a second claim is refused"


def test_verify_accepts_our_live_claim_and_refuses_an_expired_one(clock: Clock) -> None:
    mine = claims(clock)
    claim = mine.acquire(FOLDER)
    assert claim is not None

    clock.now += LEASE
    mine.verify(claim)  # the last moment of the lease still counts
    clock.now += 0.001
    with pytest.raises(ClaimLost, match="expired"):
        mine.verify(claim)


def test_verify_refuses_a_claim_whose_file_vanished(clock: Clock) -> None:
    mine = claims(clock)
    claim = mine.acquire(FOLDER)
    assert claim is not None
    (FOLDER / CLAIM).unlink()

    with pytest.raises(ClaimLost):
        mine.verify(claim)


def test_renew_extends_the_lease(clock: Clock) -> None:
    mine = claims(clock)
    claim = mine.acquire(FOLDER)
    assert claim is not None
    clock.now += LEASE - 10

    mine.renew(claim)

    assert on_disk()["lease_until"] == clock.now + LEASE
    clock.now += LEASE - 10  # past the first lease, within the renewed one
    mine.verify(claim)
    assert claims(clock, host="host-b").acquire(FOLDER) is None
    assert os.listdir(FOLDER) == [CLAIM]  # no temporary file left by the atomic rewrite


def test_renew_after_a_takeover_raises_and_leaves_the_new_claim_alone(clock: Clock) -> None:
    old = claims(clock)
    first = old.acquire(FOLDER)
    assert first is not None
    clock.now += LEASE + 1
    new = claims(clock, host="host-b").acquire(FOLDER)
    assert new is not None

    with pytest.raises(ClaimLost):
        old.renew(first)
    assert on_disk()["id"] == new.claim_id


def test_release_removes_our_claim_so_another_can_acquire(clock: Clock) -> None:
    mine = claims(clock)
    claim = mine.acquire(FOLDER)
    assert claim is not None

    mine.release(claim)

    assert not (FOLDER / CLAIM).exists()
    assert claims(clock, host="host-b").acquire(FOLDER) is not None


def test_release_of_a_lost_claim_leaves_the_new_holders_claim(clock: Clock) -> None:
    old = claims(clock)
    first = old.acquire(FOLDER)
    assert first is not None
    clock.now += LEASE + 1
    new = claims(clock, host="host-b").acquire(FOLDER)
    assert new is not None

    old.release(first)

    assert on_disk()["id"] == new.claim_id


def test_the_lease_keeper_renews_what_it_holds_and_ignores_lost_claims(clock: Clock) -> None:
    mine = claims(clock)
    keeper = LeaseKeeper(mine)
    claim = mine.acquire(FOLDER)
    assert claim is not None
    keeper.hold(claim)
    clock.now += LEASE - 1

    keeper.renew_all()
    assert on_disk()["lease_until"] == clock.now + LEASE

    keeper.drop(claim)
    clock.now += 1
    keeper.renew_all()
    assert on_disk()["lease_until"] == clock.now - 1 + LEASE  # dropped claims are not renewed

    keeper.hold(claim)
    (FOLDER / CLAIM).unlink()
    keeper.renew_all()  # a lost claim is skipped, not raised
    assert not (FOLDER / CLAIM).exists()


def test_a_read_only_folder_is_claimed_in_its_fallback_dir(clock: Clock, fs: FakeFilesystem) -> None:
    fs.create_dir("/state")
    os.chmod("/state", 0o777)
    os.chmod(FOLDER, 0o555)  # pyfakefs's os.access only looks at the owner bits
    store = StateStore(Path("/state"), owners=[1000])
    fallback = store.fallback_dir(FOLDER)
    mine = Claims(lease_seconds=LEASE, clock=clock, host="h", pid=os.getpid(), store=store)
    saved = helpers.get_uid()
    helpers.set_uid(1000)  # an ordinary user: the root-owned run folder is read-only
    try:
        claim = mine.acquire(FOLDER)
        assert claim is not None
        mine.verify(claim)
    finally:
        helpers.set_uid(saved)

    assert claim.path == fallback / CLAIM
    assert json.loads(claim.path.read_text())["id"] == claim.claim_id
    assert os.listdir(FOLDER) == []
