"""`smsdora serve --workers N`: N broker nodes on one host, one port.

A supervisor process (the one `serve` started as) applies the migrations
once, starts the embedded PostgreSQL if it is the one in use (it stops when
the process that started it exits, so the supervisor, which outlives its
workers, is that process), then starts N workers. Each worker is a whole
broker node (`python -m broker serve --worker-of PID`) with a name of its
own, `{SMSDORA_NODE}-{i}`, and its own metrics port (SMSDORA_METRICS_ADDR's
port + i - 1); each binds the same host and port with SO_REUSEPORT, so the
kernel spreads new connections over those listening. Phones and sends on different
workers meet as any two nodes do (CONTRACT section 13: leases, presence
rows, the bus).

SIGTERM or SIGINT to the supervisor: SIGTERM to every worker, each drains
as one `serve` does (broker/ops/server.py), and the supervisor exits 0 once
all have exited 0; a second signal is passed on as SIGINT, which makes
uvicorn stop without waiting. A worker that dies meanwhile is started again
after a delay that doubles (`Deaths`); one that dies `limit` times within
`window_s` stops them all, exit 1. Workers are in a session of their own
(a terminal's Ctrl-C reaches the supervisor only, which passes it on once),
and get SIGTERM from the kernel if the supervisor dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType

from broker.settings import Settings

log = logging.getLogger("smsdora.workers")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class WorkerSpec:
    index: int  # 1..N
    node: str  # its SMSDORA_NODE
    metrics_addr: str  # its SMSDORA_METRICS_ADDR ("" = off)


def specs(settings: Settings, count: int) -> list[WorkerSpec]:
    """The workers of `serve --workers count`: names and metrics ports."""
    out = []
    for i in range(1, count + 1):
        metrics = ""
        if settings.metrics_addr is not None:
            host, base = settings.metrics_addr
            port = base + i - 1 if base else 0
            metrics = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        out.append(WorkerSpec(i, f"{settings.node}-{i}", metrics))
    return out


def worker_env(env: Mapping[str, str], spec: WorkerSpec, database_url: str) -> dict[str, str]:
    """A worker's environment: the supervisor's, with its own name and
    metrics address, and the database the supervisor resolved (the
    embedded server's DSN: the worker attaches to nothing, so the server's
    life is the supervisor's)."""
    return {**env, "SMSDORA_NODE": spec.node, "SMSDORA_METRICS_ADDR": spec.metrics_addr,
            "DATABASE_URL": database_url, "SMSDORA_WORKERS": "1"}


def _family(host: str, port: int) -> socket.AddressFamily:
    return socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                              flags=socket.AI_PASSIVE)[0][0]


def check_free(host: str, port: int) -> None:
    """OSError if something listens on host:port already. A listener with
    SO_REUSEPORT of this user (an earlier `serve --workers` still running)
    would otherwise share the port with the new workers without a word; a
    bind without SO_REUSEPORT is refused by any listener."""
    with socket.socket(_family(host, port), socket.SOCK_STREAM) as probe:
        # Connections of an earlier server in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def bind(host: str, port: int) -> socket.socket:
    """A worker's socket, bound into the port's SO_REUSEPORT group (the
    first address `host` resolves to) but not listening: asyncio listens
    once the app has started, so the kernel hands it no connection before
    it can take them (a worker started again waits seconds for its lease)."""
    family = _family(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as asyncio binds `::` for a single serve
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def follow_parent(supervisor_pid: int) -> None:
    """SIGTERM from the kernel when the supervisor dies, however it dies
    (a SIGKILL runs none of its code): the worker then drains and exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != supervisor_pid:  # it died before the prctl
        raise SystemExit(f"smsdora serve: the supervisor (pid {supervisor_pid}) is gone")


class _WorkerField(logging.Filter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.node
        return True


def tag_logs(node: str) -> None:
    """Every log line of this worker carries `"worker": its node name`, as
    the supervisor's lines about it do: the workers write to one stream, the
    supervisor's (a line's `node` may name another node, e.g. one reaped)."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(node))


class Deaths:
    """When a worker that died unasked is started again: after `first_s`,
    doubling with each death within the last `window_s` (at most `max_s`);
    the `limit`-th death within it, never (it will not stay up)."""

    def __init__(self, limit: int = 5, window_s: float = 30.0, first_s: float = 0.5,
                 max_s: float = 8.0) -> None:
        self.limit, self.window_s, self.first_s, self.max_s = limit, window_s, first_s, max_s
        self._at: collections.deque[float] = collections.deque()

    def died(self, now_mono: float) -> float | None:
        """The delay before the next start, or None: give up."""
        self._at.append(now_mono)
        while self._at[0] <= now_mono - self.window_s:
            self._at.popleft()
        if len(self._at) >= self.limit:
            return None
        return min(self.max_s, self.first_s * (1 << (len(self._at) - 1)))

    def __len__(self) -> int:
        return len(self._at)


def _how(code: int) -> str:
    if code >= 0:
        return f"status {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


class Supervisor:
    """Starts a process per spec (`argv(spec)` with `env(spec)`), restarts
    the ones that die, stops them all on SIGTERM/SIGINT. `run()` blocks, in
    the main thread (signal handlers), and returns the exit status."""

    def __init__(self, workers: list[WorkerSpec], argv: Callable[[WorkerSpec], list[str]],
                 env: Callable[[WorkerSpec], dict[str, str]],
                 deaths: Callable[[], Deaths] = Deaths) -> None:
        self.workers = {spec.index: spec for spec in workers}
        self._argv, self._env = argv, env
        self._deaths = {index: deaths() for index in self.workers}
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        self._due: dict[int, float] = {}  # index -> when it starts again (monotonic)
        self._signals: list[int] = []
        self._stopping = False
        self._failure: str | None = None  # why it gave up
        self._unclean: list[str] = []  # workers that did not exit 0 when told to stop

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        previous_fd = signal.set_wakeup_fd(wake_w)
        try:
            for index in self.workers:
                self._start(index)
            self._loop(wake_r)
        finally:
            self._end_all()
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        if self._failure is not None:
            log.error(self._failure)
            return 1
        if self._unclean:
            log.error("workers did not stop cleanly", extra={"workers": ", ".join(self._unclean)})
            return 1
        log.info("every worker stopped")
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)  # the wake-up fd ends the loop's wait

    def _loop(self, wake_fd: int) -> None:
        while self._running or self._due:
            now = time.monotonic()
            timeout = min([1.0, *(at - now for at in self._due.values())])
            select.select([wake_fd], [], [], max(0.0, timeout))
            while True:
                try:
                    if not os.read(wake_fd, 512):
                        break
                except BlockingIOError:
                    break
            while self._signals:
                if self._signals.pop(0) in (signal.SIGTERM, signal.SIGINT):
                    self._stop()
            for index, proc in list(self._running.items()):
                code = proc.poll()
                if code is not None:
                    del self._running[index]
                    self._exited(index, proc, code)
            now = time.monotonic()
            for index, at in list(self._due.items()):
                if at <= now:
                    del self._due[index]
                    self._start(index)

    def _start(self, index: int) -> None:
        spec = self.workers[index]
        proc = subprocess.Popen(self._argv(spec), env=self._env(spec), stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self._running[index] = proc
        log.info("worker started", extra={"worker": spec.node, "pid": proc.pid})

    def _exited(self, index: int, proc: subprocess.Popen[bytes], code: int) -> None:
        spec = self.workers[index]
        how = _how(code)
        fields = {"worker": spec.node, "pid": proc.pid, "exit": how}
        if self._stopping:
            log.info("worker stopped", extra=fields)
            if code != 0:
                self._unclean.append(f"{spec.node} ({how})")
            return
        deaths = self._deaths[index]
        delay = deaths.died(time.monotonic())
        if delay is None:
            self._failure = (f"worker {index} ({spec.node}) died {len(deaths)} times within"
                             f" {deaths.window_s:g} s, last with {how}: stopping every worker")
            log.error("worker keeps dying", extra=fields)
            self._stop()
            return
        log.warning("worker died: starting it again", extra={**fields, "delay_s": delay})
        self._due[index] = time.monotonic() + delay

    def _stop(self) -> None:
        """The first time: SIGTERM to all (each drains); again: SIGINT
        (uvicorn then stops without waiting for open requests)."""
        sig = signal.SIGINT if self._stopping else signal.SIGTERM
        if not self._stopping:
            log.info("stopping every worker", extra={"workers": len(self._running)})
        self._stopping = True
        self._due.clear()
        for proc in self._running.values():
            proc.send_signal(sig)

    def _end_all(self) -> None:
        """Only after an error of ours in the loop: nothing is left behind."""
        for proc in self._running.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self._running.values():
            proc.wait()
        self._running.clear()
