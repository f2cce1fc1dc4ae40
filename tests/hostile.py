"""A shared server as a hostile producer meets it, for the attack tests of issue 8 (test_attacks*.py).

    /tmp/nextmv-attacks-*/          0755 root
      etc/config.yaml               0644 root            two watched paths, two applications
      etc/api-key                   0640 root:daemon     the key: the daemon reads it, producers cannot
      state/                        0750 daemon:daemon   state_dir, spool, control socket
      team-a/  team-b/              2770 team:daemon     each team's watched path (setgid: group daemon)

As root the daemon runs as its own uid/gid (`DAEMON_ID`) with the unit's umask 0o027 and no
supplementary groups, and each team's files belong to that team's uid (`TEAM_A_ID`, `TEAM_B_ID`)
with the daemon's group, group-writable, so the daemon can write its markers there. Producer
actions are done by the test as root and then handed to the producer with `lchown`/`chmod`, the
way the producer itself would have made them. Not as root, everything belongs to the test's own
user and `distinct_owners` is False.

The daemon's uid must be able to run Python: when the test's interpreter lives where that uid
cannot reach it (pyenv under a 0700 /root), a system interpreter of the same version is used with
the test's site-packages on PYTHONPATH.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evidence import SECRET, Snapshot, changes, snapshot
from helpers import TRACKED, Daemon, wait_for, write_config

import watcher
from watcher.fakecloud import FakeCloud, RecordedRun

DAEMON_ID = 64051
TEAM_A_ID = 64052
TEAM_B_ID = 64053
DAEMON_UMASK = 0o027                          # the unit's UMask=
MARKER = "DONE"
CLI_TIMEOUT = 30.0
A_INPUT = b'{"team": "a", "stops": [1, 2, 3]}'
A_OUTPUT = b'{"team": "a", "value": 7}'
B_INPUT = b'{"team": "b", "secret plan": [4, 8, 15]}'
B_OUTPUT = b'{"team": "b", "solution": 16}'

@dataclass(frozen=True)
class Team:
    """One producer: its uid and its own watched path, tracked in its own application."""

    name: str
    uid: int
    path: Path
    app: str


@functools.cache
def daemon_python(uid: int, gid: int) -> tuple[str, tuple[tuple[str, str], ...]] | None:
    """An interpreter that `uid` can run the daemon with, and the environment it needs; None if none."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    paths = {str(Path(watcher.__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"]}
    extra = (("PYTHONPATH", os.pathsep.join(sorted(paths))),)
    candidates: list[tuple[str, tuple[tuple[str, str], ...]]] = [(sys.executable, ())]
    for other in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}", shutil.which(f"python{version}")):
        if other and os.path.exists(other) and os.path.realpath(other) != os.path.realpath(sys.executable):
            candidates.append((other, extra))
    for exe, env in candidates:
        try:
            probe = subprocess.run([exe, "-c", "import watcher.cli, watchdog, httpx, yaml, structlog"],
                                   user=uid, group=gid, extra_groups=[], env={**os.environ, **dict(env)},
                                   capture_output=True, timeout=60, check=False)
        except OSError:
            continue
        if probe.returncode == 0:
            return exe, env
    return None


class Server:
    """The set-up above, the emulator accepting `SECRET`, and the producers' and admin's actions."""

    def __init__(self, base: Path, cloud: FakeCloud) -> None:
        self.base = base
        self.cloud = cloud
        self.distinct_owners = os.geteuid() == 0
        self.daemon_uid = DAEMON_ID if self.distinct_owners else os.getuid()
        self.daemon_gid = DAEMON_ID if self.distinct_owners else os.getgid()
        self.python, self.python_env = sys.executable, {}
        if self.distinct_owners:
            found = daemon_python(self.daemon_uid, self.daemon_gid)
            if found is None:
                raise RuntimeError(f"no Python interpreter that uid {self.daemon_uid} may run (the test's "
                                   f"{sys.executable} is not reachable for it)")
            self.python, self.python_env = found[0], dict(found[1])
        etc = base / "etc"
        etc.mkdir(mode=0o755)
        self.key_file = etc / "api-key"
        self.key_file.write_text(SECRET)
        self._chown(self.key_file, 0, self.daemon_gid)
        os.chmod(self.key_file, 0o640)
        self.state_dir = base / "state"
        self.state_dir.mkdir()
        self._chown(self.state_dir, self.daemon_uid, self.daemon_gid)
        os.chmod(self.state_dir, 0o750)
        uid_a, uid_b = (TEAM_A_ID, TEAM_B_ID) if self.distinct_owners else (os.getuid(), os.getuid())
        self.a = Team("team-a", uid_a, base / "team-a", "app-a")
        self.b = Team("team-b", uid_b, base / "team-b", "app-b")
        for team in (self.a, self.b):
            team.path.mkdir()
            self.own(team, team.path)
        self.daemons: list[Daemon] = []
        self.config = self.write_config()

    # -- the daemon and the admin -------------------------------------------------------------

    def write_config(self, name: str = "config.yaml", **overrides: Any) -> Path:
        """A config for both teams (key file, long read timeout so that holds do not time out)."""
        api = {"key_file": str(self.key_file), "read_timeout_seconds": 60, **overrides.pop("api", {})}
        path = write_config(self.base / "etc" / name, self.cloud.url,
                            [(self.a.path, self.a.app), (self.b.path, self.b.app)], self.state_dir,
                            api=api, completion={"marker": MARKER}, **overrides)
        os.chmod(path, 0o644)
        return path

    def start_daemon(self, config: Path | None = None, *, umask: int = DAEMON_UMASK) -> Daemon:
        """Start the daemon as its own user and wait for its start-up scan; fail if it exits instead."""
        log = self.base / f"daemon-{len(self.daemons)}.log"
        env = {"NEXTMV_API_KEY": "", "HOME": str(self.state_dir), **self.python_env}
        user = (self.daemon_uid, self.daemon_gid) if self.distinct_owners else (None, None)
        daemon = Daemon(config or self.config, log, env=env, user=user[0], group=user[1], umask=umask,
                        python=self.python)
        self.daemons.append(daemon)
        daemon.start()
        wait_for(lambda: not daemon.alive() or "startup_scan_done" in daemon.names(), 30, "daemon start-up scan")
        assert daemon.alive(), f"the daemon exited at start-up: {log.read_text(errors='replace').strip()[-500:]}"
        with open(f"/proc/{daemon.pid}/status") as f:
            ids = {k: v.split() for k, v in (line.split(":", 1) for line in f) if k in ("Uid", "Gid", "Groups")}
        assert ids["Uid"][0] == str(self.daemon_uid) and ids["Gid"][0] == str(self.daemon_gid), ids
        return daemon

    def cli(self, *args: str, config: Path | None = None,
            timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run `nextmv-watcher ARGS --config CONFIG` as the admin (the test's user); fail the test if it
        has not finished within `timeout` seconds."""
        command = [sys.executable, "-m", "watcher", *args, "--config", str(config or self.config)]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"`nextmv-watcher {' '.join(args)}` did not finish within {timeout}s") from None

    def status(self, daemon: Daemon) -> dict[str, Any]:
        """`status --json` answered by `daemon` itself over its control socket (asked with its configuration:
        `status` shows only a daemon that runs the configuration it was given)."""
        done = self.cli("status", "--json", config=daemon.config)
        assert done.returncode == 0, done.stderr
        status: dict[str, Any] = json.loads(done.stdout)
        assert status.get("pid") == daemon.pid, f"status did not come from the daemon: {done.stderr.strip()}"
        return status

    def scan(self, config: Path | None = None) -> dict[str, dict[str, Any]]:
        """`scan --json` (with the daemon's configuration, or `config`) by folder name."""
        done = self.cli("scan", "--json", config=config)
        assert done.returncode == 0, done.stderr
        return {Path(r["folder"]).name: r for r in json.loads(done.stdout)}

    def assert_still_serving(self, daemon: Daemon, label: str) -> None:
        """The daemon goes on: a fresh folder of team B is tracked from its own content (its run is in
        the emulator), and the daemon answers `status --json` on its control socket."""
        name = f"fresh-{label}"
        content = json.dumps({"fresh": label})
        self.put_folder(self.b, name, {"input.json": content, "output.json": "{}"})
        run = wait_for(lambda: self.run_named(self.b, name), 30, f"a fresh folder of team B ({name}) tracked")
        upload = run.artifact("input")
        assert upload is not None and upload.data == content.encode()
        self.status(daemon)

    def run_named(self, team: Team, name: str) -> RecordedRun | None:
        """The one run of `team`'s application named `name` (a folder's name), or None."""
        runs = [r for r in self.cloud.runs(team.app) if r.body.get("name") == name]
        assert len(runs) <= 1, f"{name}: {len(runs)} runs"
        return runs[0] if runs else None

    def victim(self) -> Path:
        """Team B's folder b1, written but not complete yet (no marker): what attacks aim at."""
        return self.put_folder(self.b, "b1", {"input.json": B_INPUT, "output.json": B_OUTPUT}, done=False)

    def check_victim(self, victim: Path, before: Snapshot) -> None:
        """Team B's tree is as it was before the attack, then b1, once complete, is tracked from its own
        content."""
        changed = changes(before, snapshot(self.b.path))
        assert not os.path.lexists(victim / TRACKED), f"a tracked marker appeared in team B's folder b1: {changed}"
        assert changed == [], f"team B's files were changed: {changed}"
        self.finish(self.b, victim)
        run = wait_for(lambda: self.run_named(self.b, victim.name), 30, "team B's folder b1 tracked")
        for field, content in (("input", B_INPUT), ("output_upload_id", B_OUTPUT)):
            upload = run.artifact(field)
            assert upload is not None and upload.data == content, f"b1 tracked with the wrong {field}"

    # -- producers ------------------------------------------------------------------------------

    def _chown(self, path: Path, uid: int, gid: int) -> None:
        if self.distinct_owners:
            os.lchown(path, uid, gid)

    def own(self, team: Team, path: Path) -> None:
        """Hand `path` to `team`: its uid, the daemon's group, group-writable (setgid directories)."""
        self._chown(path, team.uid, self.daemon_gid)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            os.chmod(path, 0o2770)
        elif not stat.S_ISLNK(st.st_mode):
            os.chmod(path, 0o660)

    def put_folder(self, team: Team, name: str, files: dict[str, str | bytes], *, done: bool = True,
                   prepare: Callable[[Path], None] | None = None) -> Path:
        """Write a run folder as `team`'s producer: under a dot-name, owned by the team, renamed into
        place, the marker last (`done=False`: no marker yet). `prepare(work)` adds to it before the rename."""
        work = team.path / f".incoming-{name}"
        work.mkdir()
        self.own(team, work)
        for rel, content in files.items():
            path = work / rel
            missing = [d for d in path.relative_to(work).parents if not (work / d).exists()]
            for d in reversed(missing):
                (work / d).mkdir()
                self.own(team, work / d)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
            self.own(team, path)
        if prepare is not None:
            prepare(work)
            for entry in work.rglob("*"):
                self.own(team, entry)
        target = team.path / name
        os.rename(work, target)
        if done:
            self.finish(team, target)
        return target

    def finish(self, team: Team, folder: Path) -> None:
        """The producer's last step: the completion marker."""
        (folder / MARKER).touch()
        self.own(team, folder / MARKER)

    def symlink(self, team: Team, link: Path, target: Path) -> None:
        os.symlink(target, link)
        self.own(team, link)

    def fifo(self, team: Team, path: Path) -> None:
        os.mkfifo(path)
        self.own(team, path)

    def swap_for_symlink(self, team: Team, folder: Path, rel: str, target: Path) -> Path:
        """Move `folder/rel` aside (a dot-name in the run folder's root, which is never uploaded) and put
        a symlink to `target` in its place. Returns where the original went."""
        aside = folder / f".orig-{Path(rel).name}"
        os.rename(folder / rel, aside)
        self.symlink(team, folder / rel, target)
        return aside

    def swap_for_fifo(self, team: Team, folder: Path, rel: str) -> Path:
        """Like `swap_for_symlink`, with a FIFO in the original's place."""
        aside = folder / f".orig-{Path(rel).name}"
        os.rename(folder / rel, aside)
        self.fifo(team, folder / rel)
        return aside

    @staticmethod
    def swap_back(path: Path, aside: Path) -> None:
        """Put the original back in one rename (same inode, size and mtime as when inspected)."""
        os.rename(aside, path)
