"""`run` with `processes: N` (N > 1): N daemon processes, each on its share of the folders, one daemon to
systemd and to the operator.

The supervisor is the process systemd started, and process 0: it does its own share of the work on a
thread (`watcher.daemon.inprocess`), so that N processes are N interpreters. It holds the state
directory's lock and hands the locked descriptor to every child (`$NEXTMV_WATCHER_LOCK_FD`), so the
lock is held while any of them lives and no second daemon can start beside them. Each child is
`nextmv-watcher run` itself (forked at the first start, `watcher.daemon.forked`; exec'd when restarted)
with `$NEXTMV_WATCHER_SHARD=i/N` (`watcher.daemon.shard`: its folders, its share of `workers`, a control
socket of its own) and `$NOTIFY_SOCKET` naming a socket of the supervisor's, so that a child speaks
sd_notify exactly as it would to systemd:

- READY=1 goes to systemd once every child has said it (and again after a reload, once every child
  has reloaded); STATUS= is the children's lines joined;
- WATCHDOG=1 goes to systemd only while every child keeps pinging: a wedged child withholds it, and
  systemd restarts the whole unit;
- SIGTERM/SIGINT are passed on (each child drains), SIGHUP too, after the supervisor has read the new
  configuration without error;
- a child that exits by itself is started again after a pause (1 s, doubling up to 30 s); one that
  exits 2 (a configuration or listener problem, which a restart does not fix) stops them all, exit 2;
  process 0 is not restarted: if it ends, they all stop with its code (1 for a crash; systemd restarts);
  its sd_notify goes to its socket like a child's, and signals reach it as calls, not as signals;
- the control socket and the metrics listener are the supervisor's (`control_socket`, `metrics.listen`):
  `status`, /metrics and /healthz ask every child over its own control socket (`<control_socket>.<i>`)
  and answer with the merge (`watcher.daemon.views`); `rescan` and `retry` go to every child (each
  takes its own folders).

Besides process 0's share, it keeps no other state.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from watcher.config import SHARD_ENV, SHARD_SOCKET_ENV, Config, load_config, shard_socket
from watcher.daemon.control_socket import request
from watcher.daemon.forked import Forked
from watcher.daemon.identity import describe
from watcher.daemon.inprocess import InProcess
from watcher.daemon.listeners import Listeners
from watcher.daemon.notify import Notifier
from watcher.daemon.pacing import THROTTLED, Pacer, log_change
from watcher.daemon.shard import Shard
from watcher.daemon.sharedpace import FLUSH_SECONDS, MESSAGE, PaceFile, parse
from watcher.daemon.signals import SignalRelay
from watcher.daemon.views import merge_health, merge_metrics, merge_status
from watcher.errors import EXIT_FAILED, EXIT_USAGE, ConfigError, ListenerError

if TYPE_CHECKING:
    from watcher.daemon.service import Service

log = structlog.get_logger("watcher.daemon.supervisor")

LOCK_FD_ENV = "NEXTMV_WATCHER_LOCK_FD"
SUPERVISOR_PID_ENV = "NEXTMV_WATCHER_SUPERVISOR_PID"   # a process whose parent is not this one is orphaned
RESTART_FIRST, RESTART_MAX = 1.0, 30.0
STOP_GRACE = 30.0   # beyond drain_timeout_seconds, before a child that did not stop is killed


@dataclass
class Child:
    index: int
    shard: str                    # "i/N": its $NEXTMV_WATCHER_SHARD, and how events name it
    sock: socket.socket           # where this child's sd_notify datagrams arrive
    address: str                  # its $NOTIFY_SOCKET ('@' + abstract name)
    proc: subprocess.Popen[bytes] | Forked | InProcess | None = None
    ready: bool = False
    status: str = ""
    pinged_at: float = 0.0
    restart_at: float | None = None
    pause: float = RESTART_FIRST
    lines: list[str] = field(default_factory=list)


Call = tuple[float, int | None, float, float | None]   # an API call's answer: answered at, status, seconds, Retry-After
# Seconds after an API call's turn by when its answer is taken to have reached the supervisor: answered
# (a slow call's later), gathered by its process for up to FLUSH_SECONDS, sent, read.
SETTLE = FLUSH_SECONDS + 0.25


def _turn(call: Call) -> float:
    """When an answer goes to the pace's rule (less `SETTLE`): a 429 when it was answered, any other when
    its call was sent, so that a 429 comes after every call sent before its answer."""
    answered, status, seconds, _ = call
    return answered if status == THROTTLED else answered - seconds


class Supervisor:
    def __init__(self, config: Config, *, lock_fd: int, key_env: Mapping[str, str],
                 local: Callable[[Mapping[str, str]], Service], notifier: Notifier | None = None,
                 forked_main: Callable[[], int] | None = None) -> None:
        self.config = config
        self.count = config.processes
        self.lock_fd = lock_fd
        self.key_env = dict(key_env)   # how the children get the API key (the supervisor's env is scrubbed)
        self.local = local   # process 0's Service, from the environment a child would get
        self.forked_main = forked_main   # a child's `run`, when it is forked (`watcher.daemon.forked`)
        self.relay: SignalRelay | None = None
        self.notifier = notifier or Notifier()
        self.stopping = False
        self.reload_pending = False
        self.reloading = False
        self.announced_ready = False
        self.exit_code = 0
        self.watchdog_sent = 0.0
        self.children = [self._child(i) for i in range(self.count)]
        assert config.control_socket is not None, "parse_config always gives one"
        self.control_socket: Path = config.control_socket   # as the daemon started: a reload moves it not
        self.refused = 0   # connections the metrics listener closed unserved
        self.pacer = Pacer()   # the pace's rule, on every process's API-call answers (`sharedpace`)
        self.calls: list[Call] = []   # ... read, not judged until every call sent before can have arrived
        self.pace = PaceFile(config.state_dir)
        self.pace.set_rate(None, time.monotonic(), empty=True)   # not the last run's pace
        self.listeners = Listeners(self.handle, _MergedMetrics(self), self.health, identify=self.identity)

    def _child(self, index: int) -> Child:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"nextmv-watcher-{os.getpid()}-{index}-{os.urandom(4).hex()}"
        sock.bind("\0" + name)
        sock.setblocking(False)
        return Child(index, str(Shard(index, self.count)), sock, "@" + name)

    # -- requests (signals, on the relay thread) -------------------------------------------

    def request_stop(self) -> None:
        self.stopping = True

    def request_reload(self) -> None:
        self.reload_pending = True

    def signals(self) -> SignalRelay:
        self.relay = SignalRelay({signal.SIGTERM: self.request_stop, signal.SIGINT: self.request_stop,
                                  signal.SIGHUP: self.request_reload})
        return self.relay

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        log.info("processes_starting", processes=self.count, workers=self.config.workers)
        try:
            for child in self.children[1:]:   # forked while no thread of ours but the signal relay's runs
                self._spawn(child, fork=True)
            try:
                self.listeners.start(self.config)
            except ListenerError as exc:   # another process holds the address: a restart would not help
                log.error("start_failed", error=str(exc), key=exc.key, address=exc.address)
                return EXIT_USAGE
            self._spawn(self.children[0])
            while not self.stopping and self.exit_code == 0:
                self._receive(timeout=0.5)
                self._watch_children()
                if self.reload_pending:
                    self.reload_pending = False
                    self._reload()
                self._relay_watchdog()
                self._pace_tick()
        finally:
            self._stop_all()
        return self.exit_code

    def _spawn(self, child: Child, *, fork: bool = False) -> None:   # fork: if `forked_main` is given
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS")}
        env.update({SHARD_ENV: child.shard, "NOTIFY_SOCKET": child.address,
                    SHARD_SOCKET_ENV: str(self._socket(child))})
        if child.index == 0:   # this process's own share
            child.proc = InProcess(lambda: self.local(env), name="process-0")
        else:
            env.update({**self.key_env, LOCK_FD_ENV: str(self.lock_fd), SUPERVISOR_PID_ENV: str(os.getpid())})
            if fork and self.forked_main is not None:
                child.proc = Forked.start(self.forked_main, env, self._in_child)
            else:
                child.proc = subprocess.Popen(  # noqa: S603 - our own program, our own arguments
                    [sys.executable, "-m", "watcher", "run", "--config", self.config.source],
                    env=env, pass_fds=(self.lock_fd,))
        child.ready, child.pinged_at, child.restart_at = False, time.monotonic(), None
        log.info("process_started", shard=child.shard, pid=child.proc.pid, how=type(child.proc).__name__)

    def _in_child(self) -> None:
        """A forked child's first step: nothing of the supervisor's that would act for it (`forked`)."""
        if self.relay is not None:
            self.relay.forget()
        for child in self.children:
            child.sock.close()

    def _receive(self, timeout: float) -> None:
        """Every process's datagrams. Their API-call answers go to the pace's rule, from any process, `SETTLE`
        after their turn (`_turn`): a 429 after every call sent before it was answered, so that it is judged
        with every call the API may have taken before it (as read, or in the order answered or sent, it was not)."""
        if self.calls:   # kept in turn order
            timeout = min(timeout, max(0.0, _turn(self.calls[0]) + SETTLE - time.monotonic()))
        readable, _, _ = select.select([c.sock for c in self.children], [], [], timeout)
        for child in self.children:
            if child.sock not in readable:
                continue
            while True:
                try:
                    data = child.sock.recv(65536)
                except BlockingIOError:
                    break
                self._message(child, data.decode("utf-8", "replace").splitlines(), self.calls)
        due = time.monotonic() - SETTLE
        self.calls.sort(key=_turn)
        cut = next((i for i, call in enumerate(self.calls) if _turn(call) > due), len(self.calls))
        ready, self.calls = self.calls[:cut], self.calls[cut:]
        for answered, status, seconds, retry_after in ready:
            self.pacer.observe(answered, status=status, seconds=seconds, retry_after=retry_after)
            self._pace_news()

    def _message(self, child: Child, lines: list[str], calls: list[Call]) -> None:
        for line in lines:
            key, _, value = line.partition("=")
            if key == "READY" and value == "1":
                child.ready = True
            elif key == "RELOADING" and value == "1":
                child.ready = False
            elif key == "STATUS":
                child.status = value
            elif key == "WATCHDOG" and value == "1":
                child.pinged_at = time.monotonic()
            elif key == MESSAGE and (call := parse(value)) is not None:
                status, seconds, retry_after, answered = call
                calls.append((answered, status, seconds, retry_after))
        if all(c.ready for c in self.children) and (not self.announced_ready or self.reloading):
            self.announced_ready, self.reloading = True, False
            self.notifier.ready(self._status())
            log.info("processes_ready", processes=self.count)
        if any(line.startswith("STATUS=") for line in lines):
            self.notifier.status(self._status())

    def _status(self) -> str:
        return f"{self.count} processes: " + " | ".join(c.status or "starting" for c in self.children)

    def _watch_children(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.proc is None:
                if child.restart_at is not None and now >= child.restart_at and not self.stopping:
                    self._spawn(child)
                continue
            code = child.proc.poll()
            if code is None:
                continue
            child.proc, child.ready = None, False
            if code == EXIT_USAGE:
                log.error("process_exited", shard=child.shard, code=code,
                          hint="a configuration or listener problem: every process stops (see its start_failed)")
                self.exit_code = EXIT_USAGE
                return
            if child.index == 0:   # this process's own share: not started again
                log.error("process_exited", shard=child.shard, code=code,
                          hint="the supervisor's own share ended: every process stops (systemd starts them again)")
                self.exit_code = code or EXIT_FAILED
                return
            child.restart_at = now + child.pause
            log.error("process_exited", shard=child.shard, code=code,
                      restart_in=child.pause, hint="restarted; its claimed folders are taken over")
            child.pause = min(RESTART_MAX, child.pause * 2)

    def _pace_tick(self) -> None:
        """The rule's window: whether a call had to wait for a token (in any process), then rise or not."""
        if self.pace.take_waits():
            self.pacer.waited = True
        self.pacer.tick(time.monotonic())
        self._pace_news()

    def _pace_news(self) -> None:
        news, self.pacer.news = self.pacer.news, None
        if news is not None:
            self.pace.set_rate(self.pacer.rate, time.monotonic(), empty=news == "decreased")
            log_change(news, self.pacer.rate)

    def _relay_watchdog(self) -> None:
        """WATCHDOG=1 to systemd while every child has pinged within its interval (half of WatchdogSec)."""
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        now = time.monotonic()
        if now - self.watchdog_sent < interval:
            return
        if all(c.proc is not None and now - c.pinged_at < 2 * interval for c in self.children):
            self.watchdog_sent = now
            self.notifier.watchdog()

    def _reload(self) -> None:
        try:
            new = load_config(Path(self.config.source))
        except ConfigError as exc:
            log.error("reload_failed", error=str(exc), hint="the processes keep running as before")
            return
        stay = [key for key, changed in (("processes", new.processes != self.count),
                                         ("control_socket", new.control_socket != self.config.control_socket),
                                         ("metrics.listen", new.metrics.listen != self.config.metrics.listen))
                if changed]
        if stay:   # the supervisor's listeners and its processes' count are set at start
            log.warning("reload_partial", restart_required=stay, hint="these apply when the daemon is restarted")
            new = dataclasses.replace(new, processes=self.count, control_socket=self.config.control_socket,
                                      metrics=dataclasses.replace(new.metrics, listen=self.config.metrics.listen))
        self.config = new
        self.reloading = True
        self.notifier.reloading()
        for child in self.children:
            if child.proc is not None:
                child.proc.send_signal(signal.SIGHUP)

    def _stop_all(self) -> None:
        self.notifier.stopping()
        live = [c.proc for c in self.children if c.proc is not None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout_seconds + STOP_GRACE
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("process_killed", pid=proc.pid, hint="it did not stop within the drain timeout")
                proc.kill()
                proc.wait()
        for child in self.children:
            child.sock.close()
        self.listeners.stop()
        log.info("processes_stopped", processes=self.count)

    # -- one daemon's views ------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        return describe(self.config, os.getpid())

    def ask(self, command: str, **args: Any) -> list[dict[str, Any] | None]:
        """Every child's answer to `command` on its control socket (None: it did not answer)."""
        answers: list[dict[str, Any] | None] = []
        for child in self.children:
            path = self._socket(child)
            try:
                answer = request(path, command, **args)
            except OSError:
                answer = None
            answers.append(answer if answer is not None and answer.get("ok") else None)
        return answers

    def _socket(self, child: Child) -> Path:
        """A child's control socket: beside the supervisor's as it started (a reload moves neither)."""
        return shard_socket(self.control_socket, child.index)

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        command = req.get("command")
        if command == "identify":
            return {"ok": True}
        if command == "status":
            answers = self.ask("status")
            merged = merge_status([a["status"] for a in answers if a is not None])
            merged["pid"] = os.getpid()
            merged["processes"] = [{"shard": c.shard, "pid": c.proc.pid if c.proc else None,
                                    "answering": a is not None} for c, a in zip(self.children, answers, strict=True)]
            return {"ok": True, "status": merged}
        if command in ("rescan", "retried"):
            args = {k: v for k, v in req.items() if k != "command"}
            answers = self.ask(command, **args)
            if any(a is None for a in answers):
                return {"ok": False, "error": "a process did not answer; try again"}
            return {"ok": True, **({"retried": sum(a.get("retried", 0) for a in answers if a)}
                                   if command == "retried" else {})}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def health(self) -> tuple[bool, dict[str, Any]]:
        found: list[tuple[bool, dict[str, Any]]] = []
        for child, answer in zip(self.children, self.ask("health"), strict=True):
            if answer is None:
                found.append((False, {"reasons": [f"process {child.index}/{self.count} not answering"]}))
            else:
                found.append((bool(answer.get("healthy")), dict(answer.get("details") or {})))
        return merge_health(found)


class _MergedMetrics:
    """What the metrics listener serves: the children's /metrics merged, and its own refusals."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def render(self) -> bytes:
        texts = [str(a["text"]) for a in self.supervisor.ask("metrics") if a is not None]
        own = ("# TYPE nextmv_watcher_metrics_connections_refused counter\n"
               f"nextmv_watcher_metrics_connections_refused_total {self.supervisor.refused}\n")
        return merge_metrics([*texts, own])

    def connection_refused(self) -> None:
        self.supervisor.refused += 1
