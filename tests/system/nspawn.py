"""A Debian tree booted with systemd-nspawn, so that PID 1 is a real systemd, and commands run in it.

The host needs no systemd or D-Bus: `--register=no --keep-unit` skip machined and the host's
manager, and SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 gives the container a cgroup v2 tree. The root is
`--volatile=overlay` (the cached tree stays unchanged; what the tests write is lost at power-off) and
the network is private (loopback only: the emulator and the daemon talk inside). Commands enter the
container's namespaces with nsenter and an empty environment, so nothing of the host's (its pip
settings, say) leaks in.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from helpers import Result, wait_for

INSIDE_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"


class CommandFailed(AssertionError):
    """A command inside the container exited non-zero; the message holds its output."""


class Container:
    """One booted container: `boot()`, then `run()`/`sh()`/`write()`, and `poweroff()` at the end."""

    def __init__(self, rootfs: Path, name: str, log: Path, bind_ro: Mapping[Path, str]) -> None:
        self.rootfs = rootfs
        self.name = name
        self.log = log
        self.bind_ro = dict(bind_ro)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.pid = 0   # the container's PID 1, as the host sees it

    def boot(self, timeout: float = 90.0) -> None:
        """Start systemd-nspawn -b and return once `systemctl is-system-running` says running.
        Raises AssertionError naming the failed units (or the console log) otherwise."""
        argv = ["systemd-nspawn", "--quiet", "--boot", f"--directory={self.rootfs}", f"--machine={self.name}",
                "--register=no", "--keep-unit", "--volatile=overlay", "--private-network",
                *(f"--bind-ro={host}:{inside}" for host, inside in self.bind_ro.items())]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env=env)
        self.pid = wait_for(self._init_pid, timeout, f"the container's systemd (console: {self.log})", interval=0.1)
        booted = wait_for(lambda: self._system_state(timeout), timeout, "systemd to boot in the container",
                          interval=0.1)
        if booted != "running":
            failed = self.run("systemctl", "--failed", "--no-legend", check=False).out
            raise AssertionError(f"the container booted {booted!r}, not 'running'; failed units:\n{failed}")

    def _system_state(self, timeout: float) -> str:
        """`systemctl is-system-running --wait` once the boot is over (running, degraded...), or "" while
        it cannot tell: until PID 1 has set up its namespaces nothing runs in there, and until it has
        made /run/systemd/system systemctl says "offline"."""
        state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=timeout).out.strip()
        return "" if state == "offline" else state

    def _init_pid(self) -> int | None:
        """The host pid of systemd as PID 1 in a pid namespace below systemd-nspawn, once it runs."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}: see {self.log}")
        parents: dict[int, int] = {}
        inits = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            except OSError:
                continue   # gone meanwhile
            pid = int(entry.name)
            parents[pid] = int(fields["PPid"])
            nspids = fields.get("NSpid", "").split()
            if len(nspids) > 1 and nspids[-1] == "1" and fields["Name"].strip() == "systemd":
                inits.append(pid)
        for pid in inits:
            ancestor = parents.get(pid, 0)
            while ancestor > 1 and ancestor != self.proc.pid:
                ancestor = parents.get(ancestor, 0)
            if ancestor == self.proc.pid:
                return pid
        return None

    def run(self, *argv: str, input: str | None = None, check: bool = True, timeout: float = 60.0) -> Result:
        """Run `argv` inside the container as root, with only PATH set. `check`: raise CommandFailed
        (with the command's output) on a non-zero exit."""
        assert self.pid, "not booted"
        done = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "--",
                               "env", "-i", INSIDE_PATH, *argv],
                              input=input, capture_output=True, text=True, timeout=timeout, check=False)
        result = Result(done.returncode, done.stdout, done.stderr)
        if check and result.code != 0:
            raise CommandFailed(f"{' '.join(argv)} exited {result.code}\nstdout: {result.out}\nstderr: {result.err}")
        return result

    def sh(self, script: str, *args: str, input: str | None = None, check: bool = True,
           timeout: float = 60.0) -> Result:
        """Run a /bin/sh script (set -eu) inside, with `args` as $1..."""
        return self.run("/bin/sh", "-euc", script, "sh", *args, input=input, check=check, timeout=timeout)

    def write(self, path: str, text: str, *, mode: str = "644", owner: str = "root") -> None:
        """Write a file inside (its directory created), with this mode and owner."""
        self.sh('mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1" && chown "$3:$3" "$1"',
                path, mode, owner, input=text)

    def poweroff(self, timeout: float = 30.0) -> None:
        """`systemctl poweroff` inside and wait for systemd-nspawn to exit; terminate it if it does not."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None and self.pid:
                self.run("systemctl", "--no-block", "poweroff", check=False, timeout=10)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()   # systemd-nspawn asks the container to power off, then kills it
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            if self._log_file is not None:
                self._log_file.close()
            self.proc = None
