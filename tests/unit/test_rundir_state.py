"""State files and claims inside a hostile run folder: whatever a producer plants under our names
(a symlink, a FIFO, a socket, a directory, a stranger's file) is replaced or refused, never followed,
opened for writing, blocked on or trusted. Also: every write is atomic with a random, exclusive
temporary name, and removing a planted tree costs no recursion.

Real directories (tmp_path). Every test also checks that no descriptor was left open."""

from __future__ import annotations

import json
import os
import resource
import shutil
import stat
from pathlib import Path

import pytest
from hostile_fs import (
    SECRET,
    TOO_DEEP,
    chown_or_skip,
    deep_dirs,
    loaded_fifo,
    planted,
    put,
    unix_socket,
)

from watcher.daemon.lease import LeaseKeeper
from watcher.errors import ClaimLost, StateError, UnsafeStateFile
from watcher.runfolder.claims import CLAIM, Claims
from watcher.runfolder.dirhandle import TMP_PREFIX
from watcher.runfolder.markers import FAILED, JOURNAL, TRACKED, StateStore
from watcher.runfolder.rundir import RunDir

pytestmark = pytest.mark.usefixtures("no_fd_leak")

STATE = JOURNAL
WORDS = {"fifo": "FIFO", "symlink": "symlink", "directory": "directory", "socket": "socket"}
FOREIGN = 12345


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def claims(store: StateStore | None = None, clock: Clock | None = None) -> Claims:
    return Claims(lease_seconds=60.0, clock=clock or Clock(), host="host-a", pid=os.getpid(), store=store)


def live_claim_of_another_host() -> bytes:
    return json.dumps({"host": "host-b", "pid": 1, "id": "theirs", "lease_until": 1e12}).encode()


# --- write_atomic ----------------------------------------------------------------------------------


def test_a_planted_symlink_at_the_target_is_replaced_and_its_target_untouched(run: Path, secret: Path) -> None:
    (run / ".nextmv-tracked.json").symlink_to(secret)
    before = secret.stat()
    with RunDir.open(run) as d:
        d.write_atomic(".nextmv-tracked.json", b'{"ours": true}')
    assert not (run / ".nextmv-tracked.json").is_symlink()
    assert (run / ".nextmv-tracked.json").read_bytes() == b'{"ours": true}'
    assert secret.read_bytes() == SECRET
    assert secret.stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.timeout(20)
def test_a_fifo_at_the_target_is_replaced_without_being_opened(run: Path) -> None:
    with loaded_fifo(run / STATE) as untouched, RunDir.open(run) as d:
        d.write_atomic(STATE, b"{}")
        assert untouched()
    assert stat.S_ISREG(os.lstat(run / STATE).st_mode)


def test_temporary_names_are_random_and_created_exclusively(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[tuple[str, int]] = []
    real_open = os.open

    def recording(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if str(path).startswith(TMP_PREFIX):
            created.append((str(path), flags))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", recording)
    with RunDir.open(run) as d:
        d.write_atomic(STATE, b"1")
        d.write_atomic(STATE, b"2")
    assert len(created) == 2 and created[0][0] != created[1][0]
    for _, flags in created:
        assert flags & os.O_EXCL and flags & os.O_NOFOLLOW and flags & os.O_CREAT
    assert os.listdir(run) == [STATE]


def test_a_symlink_planted_at_the_temporary_name_is_never_written_through(
        run: Path, secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a producer that guessed the random name (here: forced) only makes the write fail."""
    monkeypatch.setattr("watcher.runfolder.dirhandle.secrets.token_hex", lambda n: "guessed")
    (run / f"{TMP_PREFIX}guessed").symlink_to(secret)
    with RunDir.open(run) as d, pytest.raises(FileExistsError):
        d.write_atomic(STATE, b"journal")
    assert secret.read_bytes() == SECRET
    assert (run / f"{TMP_PREFIX}guessed").is_symlink()
    assert not (run / STATE).exists()


@pytest.mark.parametrize("umask", [0, 0o022])
def test_state_files_are_0640_whatever_the_umask(run: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with RunDir.open(run) as d:
            d.write_atomic(STATE, b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(run / STATE).st_mode) == 0o640


def test_a_failed_write_leaves_no_temporary_file(run: Path) -> None:
    (run / STATE).mkdir()
    with RunDir.open(run) as d, pytest.raises(IsADirectoryError):
        d.write_atomic(STATE, b"{}")
    assert os.listdir(run) == [STATE]


# --- read_state ------------------------------------------------------------------------------------

OWNERS = frozenset({os.geteuid(), 0})


def read_state(run: Path, limit: int = 1024, owners: frozenset[int] | None = OWNERS) -> bytes | None:
    with RunDir.open(run) as d:
        return d.read_state(STATE, limit=limit, owners=owners)


def test_read_state_reads_our_file_and_none_when_missing(run: Path) -> None:
    assert read_state(run) is None
    (run / STATE).write_bytes(b"{}")
    assert read_state(run) == b"{}"


@pytest.mark.timeout(20)
def test_a_fifo_state_file_is_unsafe_never_read_never_blocking(run: Path) -> None:
    with loaded_fifo(run / STATE) as untouched:
        with pytest.raises(UnsafeStateFile, match=rf"{STATE} is a FIFO, not a regular file") as err:
            read_state(run)
        assert untouched()
    assert err.value.name == STATE and not err.value.untrusted
    (run / STATE).unlink()
    os.mkfifo(run / STATE)   # no writer: a blocking open would hang here
    with pytest.raises(UnsafeStateFile, match=r"FIFO"):
        read_state(run)


def test_a_symlinked_state_file_is_unsafe_and_not_followed(run: Path, secret: Path) -> None:
    (run / STATE).symlink_to(secret)
    with pytest.raises(UnsafeStateFile, match=rf"{STATE} is a symlink") as err:
        read_state(run)
    assert SECRET.decode() not in str(err.value)


def test_a_directory_or_socket_state_file_is_unsafe(run: Path) -> None:
    (run / STATE).mkdir()
    with pytest.raises(UnsafeStateFile, match=rf"{STATE} is a directory"):
        read_state(run)
    (run / STATE).rmdir()
    with unix_socket(run / STATE), pytest.raises(UnsafeStateFile, match=rf"{STATE} is a socket"):
        read_state(run)


def test_a_state_file_over_the_limit_is_unsafe(run: Path) -> None:
    (run / STATE).write_bytes(b"x" * 1024)
    assert read_state(run, limit=1024) == b"x" * 1024
    with os.fdopen(os.open(run / STATE, os.O_WRONLY), "wb") as f:
        f.truncate(3 * 1024**3)   # sparse: 3 GB that cost nothing on disk
    with pytest.raises(UnsafeStateFile, match=rf"{STATE} is {3 * 1024**3} bytes, more than a state file can be"):
        read_state(run, limit=1024)


def test_a_state_file_of_another_owner_is_untrusted_unless_listed(run: Path) -> None:
    (run / STATE).write_bytes(b'{"forged": true}')
    chown_or_skip(run / STATE, 12345)
    with pytest.raises(UnsafeStateFile, match=r"owned by uid 12345") as err:
        read_state(run)
    assert err.value.untrusted and err.value.uid == 12345
    assert read_state(run, owners=OWNERS | {12345}) == b'{"forged": true}'
    assert read_state(run, owners=None) == b'{"forged": true}'


# --- removal ---------------------------------------------------------------------------------------


def test_unlink_removes_a_deep_tree_without_recursion(run: Path) -> None:
    (run / STATE).mkdir()
    deep_dirs(run / STATE, TOO_DEEP)
    with RunDir.open(run) as d:
        assert d.unlink(STATE) is True
    assert os.listdir(run) == []


@pytest.mark.timeout(20)
def test_unlink_removes_fifos_and_symlinks_inside_without_opening_or_following(run: Path, secret: Path) -> None:
    put(run, {f"{STATE}/sub/f": b""})
    (run / STATE / "sub" / "key").symlink_to(secret)
    (run / STATE / "dir-link").symlink_to(secret.parent)
    os.mkfifo(run / STATE / "sub" / "pipe")
    with RunDir.open(run) as d:
        assert d.unlink(STATE) is True
    assert os.listdir(run) == []
    assert secret.read_bytes() == SECRET


def test_unlink_holds_few_descriptors_whatever_the_depth(run: Path) -> None:
    (run / "tree").mkdir()
    deep_dirs(run / "tree", 200)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with RunDir.open(run) as d:
        used = {int(fd) for fd in os.listdir("/proc/self/fd")}
        limit = next(n for n in range(4096) if len(set(range(n)) - used) == 12)   # 12 more descriptors
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            assert d.unlink("tree") is True
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert os.listdir(run) == []


def test_unlink_of_nothing_is_false(run: Path) -> None:
    with RunDir.open(run) as d:
        assert d.unlink("nothing") is False


# --- StateStore: markers a producer planted ----------------------------------------------------------


def ours(folder: Path, name: str, data: dict[str, object]) -> None:
    StateStore(folder.parent / "unused-state").write(folder, name, data)


@pytest.mark.timeout(20)
def test_a_fifo_tracked_marker_does_not_hide_our_failed_marker(run: Path, store: StateStore) -> None:
    ours(run, FAILED, {"error": "x"})
    os.mkfifo(run / TRACKED)   # nobody writes: opening it would block
    with RunDir.open(run) as d:
        assert store.finished(d) == "failed"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("plant", ["fifo", "symlink", "directory", "socket"])
def test_a_marker_name_taken_by_something_else_raises_naming_it(
        run: Path, tmp_path: Path, store: StateStore, plant: str) -> None:
    other = tmp_path / "runs" / "run-2"
    other.mkdir()
    ours(other, TRACKED, {"run_id": "run-of-another-team"})
    with planted(run / TRACKED, plant, other / TRACKED):
        with RunDir.open(run) as d, pytest.raises(UnsafeStateFile, match=f"{TRACKED} is a {WORDS[plant]}") as err:
            store.finished(d)
        assert err.value.name == TRACKED
        assert store.quick_state(run) is None   # the scan's hint neither follows nor trusts it


def test_a_strangers_marker_is_untrusted_unless_its_owner_is_listed(run: Path, tmp_path: Path) -> None:
    ours(run, TRACKED, {"run_id": "forged"})
    chown_or_skip(run / TRACKED, FOREIGN)
    strict, sharing = StateStore(tmp_path / "state"), StateStore(tmp_path / "state", owners=[FOREIGN])
    with RunDir.open(run) as d:
        with pytest.raises(UnsafeStateFile, match=f"owned by uid {FOREIGN}") as err:
            strict.finished(d)
        assert err.value.untrusted
        with pytest.raises(UnsafeStateFile, match=f"owned by uid {FOREIGN}"):
            strict.tracked(d)
        assert sharing.finished(d) == "tracked"
        assert sharing.tracked(d) == {"run_id": "forged", "schema": 1}
    assert strict.quick_state(run) is None
    assert sharing.quick_state(run) == "tracked"


def test_quick_state_reads_our_markers(run: Path, store: StateStore) -> None:
    assert store.quick_state(run) is None
    ours(run, FAILED, {"error": "x"})
    assert store.quick_state(run) == "failed"
    ours(run, TRACKED, {"run_id": "r"})
    assert store.quick_state(run) == "tracked"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("plant", ["fifo", "socket"])
def test_a_journal_that_is_no_file_is_unsafe_not_a_state_error(run: Path, store: StateStore, plant: str) -> None:
    with planted(run / JOURNAL, plant), RunDir.open(run) as d, \
            pytest.raises(UnsafeStateFile, match=f"{JOURNAL} is a {WORDS[plant]}"):
        store.journal(d)


def test_writing_a_marker_replaces_a_planted_symlink_and_leaves_its_target_alone(
        run: Path, secret: Path, store: StateStore) -> None:
    (run / TRACKED).symlink_to(secret)
    with RunDir.open(run) as d:
        store.mark_tracked(d, "run-1", "app-1", 1000.0)
        assert store.tracked(d) is not None
    assert secret.read_bytes() == SECRET
    assert stat.S_ISREG(os.lstat(run / TRACKED).st_mode)


def test_writing_a_marker_replaces_a_planted_directory_however_deep(run: Path, store: StateStore) -> None:
    (run / FAILED).mkdir()
    deep_dirs(run / FAILED, TOO_DEEP)
    with RunDir.open(run) as d:
        store.mark_failed(d, "invalid folder", 1, 1000.0)
        assert store.finished(d) == "failed"
    assert sorted(os.listdir(run)) == [FAILED]


# --- Claims ------------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_a_fifo_claim_is_moved_aside_unread_and_the_folder_claimed(run: Path, store: StateStore) -> None:
    with loaded_fifo(run / CLAIM) as untouched, RunDir.open(run) as d:
        claim = claims(store).acquire(d)
        assert claim is not None
        assert claim.replaced is not None and "FIFO" in claim.replaced
        assert untouched()   # the FIFO was renamed and unlinked, never read
        assert os.listdir(run) == [CLAIM]
        assert json.loads((run / CLAIM).read_bytes())["id"] == claim.claim_id
        claims(store).release(claim)
        assert not d.closed   # the caller's handle: the claim does not own it


def test_a_symlinked_claim_is_moved_aside_and_its_target_never_read_or_written(
        run: Path, tmp_path: Path, store: StateStore) -> None:
    elsewhere = tmp_path / "other-claim"
    elsewhere.write_bytes(live_claim_of_another_host())   # if followed and trusted: "held elsewhere"
    (run / CLAIM).symlink_to(elsewhere)
    with RunDir.open(run) as d:
        claim = claims(store).acquire(d)
        assert claim is not None and claim.replaced == "is a symlink, not a regular file"
        claims(store).renew(claim)
        claims(store).release(claim)
    assert elsewhere.read_bytes() == live_claim_of_another_host()
    assert os.listdir(run) == []


def test_a_strangers_live_claim_is_replaced_unless_its_owner_is_listed(run: Path, tmp_path: Path) -> None:
    (run / CLAIM).write_bytes(live_claim_of_another_host())
    chown_or_skip(run / CLAIM, FOREIGN)
    with RunDir.open(run) as d:
        assert claims(StateStore(tmp_path / "state", owners=[FOREIGN])).acquire(d) is None   # a peer's: respected
        claim = claims(StateStore(tmp_path / "state")).acquire(d)
        assert claim is not None and claim.replaced is not None
        assert claim.replaced.startswith(f"is owned by uid {FOREIGN}")
        assert UnsafeStateFile(d.label, CLAIM, claim.replaced).untrusted   # as the worker reports it
        claims().release(claim)


@pytest.mark.parametrize("plant", ["socket", "directory"])
def test_a_socket_or_a_directory_claim_is_replaced_and_named(run: Path, store: StateStore, plant: str) -> None:
    with planted(run / CLAIM, plant), RunDir.open(run) as d:
        if plant == "directory":
            deep_dirs(run / CLAIM, TOO_DEEP)
        claim = claims(store).acquire(d)
        assert claim is not None and claim.replaced is not None and plant in claim.replaced
        assert not [n for n in os.listdir(run) if n.startswith(f"{CLAIM}.stale")]
        claims(store).release(claim)


def test_renewing_after_release_writes_nowhere_even_when_the_descriptor_number_is_reused(
        run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-team-folder"
    other.mkdir()
    mine = claims()
    keeper = LeaseKeeper(mine)
    claim = mine.acquire(run)   # a path: the claim opens the folder and owns that descriptor
    assert claim is not None and claim.owns_place
    number = claim.place.fileno()
    keeper.hold(claim)
    mine.release(claim)
    assert claim.place.closed
    reused: list[int] = []   # open the other folder until it gets the claim's old descriptor number
    try:
        while number not in reused and len(reused) < 8:
            reused.append(os.open(other, os.O_RDONLY | os.O_DIRECTORY))
        assert number in reused
        with pytest.raises(ClaimLost, match="released"):
            mine.renew(claim)
        with pytest.raises(ClaimLost, match="released"):
            mine.verify(claim)
        keeper.renew_all()   # a renewal racing the release finds it released too
    finally:
        for fd in reused:
            os.close(fd)
    assert os.listdir(other) == []
    assert os.listdir(run) == []


def test_a_failed_acquire_by_path_closes_the_folder_it_opened(run: Path) -> None:
    def clock() -> float:   # the folder vanishes right before the claim file is created
        shutil.rmtree(run)
        return 1000.0

    with pytest.raises(StateError, match="cannot create claim"):
        Claims(lease_seconds=60.0, clock=clock, host="h", pid=os.getpid()).acquire(run)


@pytest.mark.timeout(20)
def test_a_fifo_swapped_in_for_our_claim_loses_it_without_blocking(run: Path) -> None:
    mine = claims()
    with RunDir.open(run) as d:
        claim = mine.acquire(d)
        assert claim is not None
        (run / CLAIM).unlink()
        os.mkfifo(run / CLAIM)
        with pytest.raises(ClaimLost, match="taken over"):
            mine.verify(claim)
        assert mine.holder(d)["id"] == "unsafe"   # type: ignore[index]
        mine.release(claim)   # not ours: left where it is
    assert stat.S_ISFIFO(os.lstat(run / CLAIM).st_mode)
