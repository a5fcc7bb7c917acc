"""The simulated phones as a fleet of client processes, and the servers
they connect to, from the harness's side.

Phones are split into slices of at most `SLICE` sockets, one process each,
each bound to its own loopback source address (127.0.0.11, .12, ...): one
source address has about 28k ephemeral ports, and a restart leaves the old
connections in TIME_WAIT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import Controlled, Procs

SLICE = 5000


def slices(levels: tuple[int, ...]) -> list[tuple[int, int]]:
    """(first, count) of each phone process: level boundaries, then at most
    SLICE phones each, so that each level is a whole number of processes."""
    out: list[tuple[int, int]] = []
    start = 0
    for level in levels:
        while start < level:
            count = min(SLICE, level - start)
            out.append((start, count))
            start += count
    return out


@dataclass
class Fleet:
    procs: Procs
    url: str  # ws://127.0.0.1:PORT/devices/ws
    tokens_file: Path
    name: str
    jitter_s: float = 1.0
    running: list[tuple[tuple[int, int], Controlled]] = field(default_factory=list)

    def start(self, part: tuple[int, int]) -> None:
        first, count = part
        index = len(self.running)
        proc = self.procs.spawn(
            f"{self.name}-phones-{index}",
            ["-m", "bench.phones", "--url", self.url, "--tokens", str(self.tokens_file),
             "--first", str(first), "--count", str(count),
             "--source-ip", f"127.0.0.{11 + index}", "--jitter", str(self.jitter_s),
             "--counter", str(self.counter(index))],
            control=True)
        self.running.append((part, Controlled(proc)))

    def counter(self, index: int) -> Path:
        return self.tokens_file.parent / f"delivered-{self.name}-{index}.bin"

    def counters(self) -> list[Path]:
        """The `delivered` receipt counters of the running processes."""
        return [self.counter(i) for i in range(len(self.running))]

    def stats(self, since_ns: int = 0) -> list[dict[str, Any]]:
        return [c.call({"cmd": "stats", "since_ns": since_ns}) for _, c in self.running]

    def hold(self, on: bool) -> None:
        """While on, the phones time `send` frames but ack none of them."""
        for _, c in self.running:
            c.call({"cmd": "hold", "on": on})

    def connected(self) -> int:
        return sum(s["connected"] for s in self.stats())

    def wait_connected(self, n: int, timeout_s: float) -> tuple[int, float]:
        """Until `n` phones are welcomed (or the timeout); (connected, seconds)."""
        started = time.monotonic()
        got = self.connected()
        while got < n and time.monotonic() - started < timeout_s:
            time.sleep(0.1)
            got = self.connected()
        return got, time.monotonic() - started

    def dump_frames(self, workdir: Path, tag: str) -> dict[str, int]:
        """Every process's send-frame times (message id -> ns), merged; each
        process forgets what it handed over."""
        import msgspec

        merged: dict[str, int] = {}
        for i, (_, c) in enumerate(self.running):
            path = workdir / f"frames-{self.name}-{tag}-{i}.json"
            c.call({"cmd": "dump", "path": str(path)}, timeout_s=60)
            merged.update(msgspec.json.decode(path.read_bytes()))
            path.unlink()
        return merged

    def quit(self, keep: int = 0) -> None:
        """Stop every phone process past the first `keep` phones."""
        while self.running and self.running[-1][0][0] >= keep:
            _, c = self.running.pop()
            try:
                c.call({"cmd": "quit"}, timeout_s=10)
            except (TimeoutError, RuntimeError, OSError):
                pass
            c.proc.stop(grace_s=5)
