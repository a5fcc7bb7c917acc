"""The benchmark's processes and what /proc says about them.

Every process the harness starts goes through `Procs.spawn`, so that one
`finally` can end them all, each by its own pid (SIGTERM, then SIGKILL).
Memory is VmRSS from /proc/<pid>/status; CPU is utime+stime from
/proc/<pid>/stat, in clock ticks.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import msgspec

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (an unprivileged process may
    not go past it); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


class MainThread:
    """Where a process's main thread spent a stretch of wall time, from the
    scheduler's own accounting (/proc/PID/task/PID/schedstat): running,
    runnable but waiting for a CPU, and asleep (its event loop waiting for a
    socket). A single-threaded server near 1.0 running is bound by its own
    CPU; one asleep a tenth of the time waits for something else."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = self._now()

    def _now(self) -> tuple[float, int, int]:
        run, wait, _ = Path(f"/proc/{self.pid}/task/{self.pid}/schedstat").read_text().split()
        return time.monotonic(), int(run), int(wait)

    def shares(self) -> dict[str, float]:
        (t0, run0, wait0), (t1, run1, wait1) = self.start, self._now()
        wall = max(t1 - t0, 1e-9)
        running, waiting = (run1 - run0) / 1e9 / wall, (wait1 - wait0) / 1e9 / wall
        return {"running": running, "waiting_cpu": waiting,
                "asleep": max(0.0, 1.0 - running - waiting)}


def idle_cores(pid: int, seconds: float) -> float:
    """Average cores the process used over `seconds` of wall time."""
    c0, t0 = cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_s(pid) - c0) / (time.monotonic() - t0)


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"--- last lines of {self.log}:\n" + "\n".join(text)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; never raises."""
        if self.popen.poll() is None:
            try:
                self.popen.terminate()
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)


class Procs:
    """Every process of one run; `close()` ends those still running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.all: list[Proc] = []

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
              control: bool = False) -> Proc:
        """`python <args>` from the repository root; stderr (and stdout, unless
        `control`: then stdin/stdout are the JSON-lines control pipe) to a log."""
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                [sys.executable, *args], cwd=REPO, env=env,
                stdin=subprocess.PIPE if control else subprocess.DEVNULL,
                stdout=subprocess.PIPE if control else out, stderr=out)
        proc = Proc(name, popen, log)
        self.all.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.all):
            proc.stop(grace_s=5.0)


def wait_port(port: int, proc: Proc, timeout_s: float, host: str = "127.0.0.1") -> float:
    """Wall time (time.time) at which `port` first accepted a connection."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode})\n{proc.tail()}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return time.time()
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout_s} s\n{proc.tail()}")


class Controlled:
    """A child that takes one JSON command a line on stdin and answers one
    JSON line on stdout (bench/phones.py)."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self._buf = b""

    def send(self, cmd: dict[str, Any]) -> None:
        stdin: IO[bytes] | None = self.proc.popen.stdin
        assert stdin is not None
        stdin.write(msgspec.json.encode(cmd) + b"\n")
        stdin.flush()

    def reply(self, timeout_s: float) -> dict[str, Any]:
        stdout = self.proc.popen.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.proc.name}: no answer in {timeout_s} s\n"
                                   f"{self.proc.tail()}")
            ready, _, _ = select.select([stdout], [], [], left)
            if ready:
                chunk = os.read(stdout.fileno(), 1 << 16)
                if not chunk:
                    raise RuntimeError(f"{self.proc.name} exited\n{self.proc.tail()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        out: dict[str, Any] = msgspec.json.decode(line)
        return out

    def call(self, cmd: dict[str, Any], timeout_s: float = 30.0) -> dict[str, Any]:
        self.send(cmd)
        return self.reply(timeout_s)
