"""`python -m broker serve`, with the garbage collector's pauses measured.

The broker is not changed: this wrapper adds a `gc.callbacks` hook that
times every collection (start to stop: wall time with perf_counter_ns, and
the collecting thread's CPU time with thread_time_ns, so that a pause
stretched by the scheduler on a saturated machine shows as such) and calls
`broker.cli.main(["serve", ...])` in the same process. Every 0.5 s (and on
SIGUSR1) a thread writes to $BENCH_GC_FILE the count and total per
generation and, for each wall-clock second, the longest pause in it, so the
harness can take the longest pause inside any time window.

    BENCH_GC_FILE=gc.json python -m bench.serve_with_gc --port P
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from array import array
from typing import Any

import msgspec

from bench.procs import raise_nofile

# Fixed-size arrays, not dicts: a collection can start inside the writer
# thread while it reads them, and its callback must not resize what is read.
SECONDS = 4 * 3600
_base = int(time.time())
_started = [0, 0]  # perf_counter_ns, thread_time_ns
_count = array("q", [0, 0, 0])
_total_ns = array("q", [0, 0, 0])
_longest_ms = array("d", [0.0]) * SECONDS  # per second since _base
_longest_gen = array("b", [0]) * SECONDS
_longest_cpu_ms = array("d", [0.0]) * SECONDS  # the CPU time of that longest pause
_longest_cpu_only_ms = array("d", [0.0]) * SECONDS  # the longest by CPU time
_lock = threading.Lock()


_PROBE = os.environ.get("BENCH_GC_PROBE")  # a file: what the slow collections held
_probe_last: list[Any] = [None]


def _probe(phase: str, info: dict[str, Any], took_ns: int) -> None:
    """BENCH_GC_PROBE (bench/profile.py): before each young collection, the
    young objects by type and how many references they hold; kept for the
    collections that took over 10 ms. Costly: a diagnosis, not the bench."""
    gen = int(info.get("generation", 0))
    if phase == "start":
        if gen > 1:
            _probe_last[0] = None
            return
        import collections

        objs = gc.get_objects(gen)
        kinds = collections.Counter(type(o).__qualname__ for o in objs)
        refs = collections.Counter()
        for o in objs:
            refs[type(o).__qualname__] += len(gc.get_referents(o))
        _probe_last[0] = {"generation": gen, "objects": len(objs),
                          "by_type": kinds.most_common(15), "refs_by_type": refs.most_common(15)}
        del objs
        return
    if _probe_last[0] is not None and took_ns > 10_000_000 and _PROBE:
        entry = dict(_probe_last[0], ms=took_ns / 1e6, collected=info.get("collected"))
        with open(_PROBE, "ab") as f:
            f.write(msgspec.json.encode(entry) + b"\n")


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if _PROBE and phase == "start":
        _probe(phase, info, 0)
    if phase == "start":
        _started[0] = time.perf_counter_ns()
        _started[1] = time.thread_time_ns()
        return
    took = time.perf_counter_ns() - _started[0]
    cpu = time.thread_time_ns() - _started[1]
    if _PROBE:
        _probe(phase, info, cpu)
    gen = int(info.get("generation", 0))
    _count[gen] += 1
    _total_ns[gen] += took
    second = int(time.time()) - _base
    if 0 <= second < SECONDS and took / 1e6 > _longest_ms[second]:
        _longest_ms[second] = took / 1e6
        _longest_gen[second] = gen
        _longest_cpu_ms[second] = cpu / 1e6
    if 0 <= second < SECONDS and cpu / 1e6 > _longest_cpu_only_ms[second]:
        _longest_cpu_only_ms[second] = cpu / 1e6


def _write(path: str) -> None:
    # Only the seconds lived so far: the whole array every 0.5 s cost the
    # broker's thread about 2 % of its samples under load.
    upto = min(SECONDS, int(time.time()) - _base + 1)
    with _lock:
        longest, gens = _longest_ms[:upto].tolist(), _longest_gen[:upto].tolist()
        cpu, cpu_only = _longest_cpu_ms[:upto].tolist(), _longest_cpu_only_ms[:upto].tolist()
        data = {"count": _count.tolist(), "total_ms": [t / 1e6 for t in _total_ns.tolist()],
                # [second, longest wall ms, its generation, its CPU ms, longest CPU ms]
                "per_second": [[_base + i, ms, gens[i], cpu[i], cpu_only[i]]
                               for i, ms in enumerate(longest) if ms],
                # (not gc.get_freeze_count(): it walks every frozen object,
                # 0.2 cores at 10k phones when called every 0.5 s)
                "thresholds": list(gc.get_threshold())}
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(data))
        os.replace(tmp, path)


def _writer(path: str) -> None:
    while True:
        time.sleep(0.5)
        _write(path)


def _dump_garbage(path: str) -> None:
    """SIGUSR2 (bench/profile.py): collect everything, frozen objects too,
    keeping the garbage, and write how many unreachable objects of each type
    the cyclic collector had to find: what refcounting alone could not free
    (and, of frozen objects, what a freeze kept from being collected)."""
    import collections

    gc.unfreeze()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        counts = collections.Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()  # now freed for real
    with open(path, "wb") as f:
        f.write(msgspec.json.encode(dict(counts.most_common(60))))


def main() -> int:
    raise_nofile()
    path = os.environ.get("BENCH_GC_FILE")
    if path:
        gc.callbacks.append(_on_gc)
        threading.Thread(target=_writer, args=(path,), daemon=True, name="gc-writer").start()
        signal.signal(signal.SIGUSR1, lambda signum, frame: _write(path))
        signal.signal(signal.SIGUSR2, lambda signum, frame: _dump_garbage(f"{path}.garbage"))
    from broker.cli import main as broker_main

    return broker_main(["serve", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
