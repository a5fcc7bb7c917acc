"""`make bench` cannot rot: its quick form (`python -m bench --quick`, some
seconds: 50 phones, a few hundred requests, no chart; the SSE phase with 20
phones a side at 50 sends a second for 1 s) runs here, in real
processes on loopback with its own embedded PostgreSQL. This checks that
every row of the table is there with sane numbers, not how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = ("sends/s end to end", "sends/s accept path", "p50 / p99 / p99.9",
        "RSS KiB per idle phone", "idle CPU", "reconnect after kill -9", "API-key check",
        "device pick", "longest GC pause", "`event: MessageEnqueued` read, SMS Gateway phone",
        "`GET /message` answered with the job, SMS Gateway phone",
        "webhook events/s delivered from a full outbox", "webhook event written → received",
        "accept path with one webhook endpoint", "ms dashboard page `/dashboard/messages` (first page)",
        "ms dashboard page `/dashboard/messages/{id}`",
        "sent through node a (cross node, postgres bus)", "`serve --workers 2`",
        "µs of broker CPU per accepted send")

pytestmark = pytest.mark.timeout(135)


def run_quick(out: Path) -> tuple[str, dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=105)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the harness ends its processes and PostgreSQL on SIGTERM
        stdout, stderr = proc.communicate(timeout=30)
        pytest.fail(f"bench --quick took over 105 s\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, json.loads(out.read_text())


def test_quick_bench_has_every_row_with_sane_numbers(tmp_path: Path) -> None:
    table, results = run_quick(tmp_path / "results.json")
    for row in ROWS:
        assert row in table, f"row {row!r} missing from the table:\n{table}"
    assert results["table"] in table

    r = results["rows"]
    assert r["baseline"]["per_s"] > 0
    t = r["throughput"]
    assert t["accept_per_s"] > 0 and t["frames"] == t["statuses"]["201"] > 0
    life = r["lifecycle"]
    assert life["e2e_per_s"] > 0 and life["delivered"] > 0 and life["drained"]
    assert len(r["latency"]) == 2
    for row in r["latency"]:
        assert row["samples"] > 0 and row["missing_frames"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p999_ms"]
    s = r["sse"]
    assert s["ws_online"] == s["sse_online"] == s["phones"] > 0
    ws, sse = s["ws"], s["sse"]
    for side in (ws, sse):  # every send accepted, reached its phone and ended
        assert list(side["statuses"]) == ["201"] and side["missing"] == 0 and side["drained"]
        assert abs(side["statuses"]["201"] - s["rate"] * s["seconds"]) <= 1
        assert side["phones_with_jobs"] > 0
    sent = sse["statuses"]["201"]
    assert sse["event"]["samples"] + sse["without_own_event"] == sse["listed"]["samples"] == sent
    for p in (ws, sse["event"], sse["listed"]):
        assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"] <= p["max_ms"] < 10_000
    assert all(s["ratio"][leg]["p50_ms"] > 0 for leg in ("event", "listed"))
    assert sse["counts"]["patch_200"] >= sent and sse["counts"]["streams_opened"] == s["phones"]
    w = r["webhooks"]
    assert w["online"] == 3 * w["sizes"]["phones"]
    for leg in ("prefilled_1", "prefilled_4", "from_sends"):  # every event delivered, once
        x = w[leg]
        assert x["events"] == x["arrived"] > 0 and x["pending"] == 0 and x["per_s"] > 0
        assert 0 < x["latency"]["p50_ms"] <= x["latency"]["p99_ms"] < 60_000
    assert w["prefilled_1"]["events"] == w["sizes"]["prefill"]
    assert w["from_sends"]["statuses"] == {"201": w["from_sends"]["sends"]}
    assert w["receiver"]["requests"] == w["receiver"]["ids"]  # no repeat on a healthy run
    acc = w["accept"]
    for name in ("plain-1", "hooked", "plain-2"):
        assert acc[name]["accept_per_s"] > 0 and list(acc[name]["statuses"]) == ["201"]
    assert acc["plain-1"]["events_written"] == acc["plain-2"]["events_written"] == 0
    assert acc["hooked"]["events_written"] >= 2 * acc["hooked"]["statuses"]["201"]
    assert acc["ratio"] > 0
    d = r["dashboard"]  # every request a 200 naming its message (or the phase fails)
    assert d["sizes"]["messages"] == 10_000
    for page in ("list", "list_failed", "list_oldest", "detail"):
        p = d[page]
        assert p["samples"] == d["sizes"]["requests"] and p["bytes"] > 0
        assert 0 < p["p50_ms"] <= p["p99_ms"] <= p["max_ms"] < 10_000
    c = r["cluster"]  # every send of both routes accepted and at a phone of node b
    lat = c["latency"]["postgres"]
    assert lat["presence"] == {"b": c["sizes"]["phones"]}
    for route in ("same", "cross"):
        x = lat[route]
        assert list(x["statuses"]) == ["201"] and x["missing_frames"] == 0 and x["drained"]
        assert x["samples"] > 0 and 0 < x["p50_ms"] <= x["p99_ms"] < 10_000
    runs = c["workers"]["runs"]
    assert [w["workers"] for w in runs] == [1, 2]
    assert [sorted(w["phones_by_node"]) for w in runs] == [["bench"], ["bench-1", "bench-2"]]
    for w in runs:
        assert list(w["statuses"]) == ["201"] and w["frames"] == w["statuses"]["201"] > 0
        assert w["accept_per_s"] > 0 and w["broker_cpu_s"] > 0
    assert c["projection"]["sends_per_core_s"] > 0
    for side in (r["memory"], r["bare"]):
        for level in side["levels"]:
            assert level["connected"] == level["phones"] > 0
            assert level["kib_per_phone"] > 0 and level["idle_cores"] >= 0
    rc = r["reconnect"]
    assert rc["reconnected"] == rc["phones"] > 0 and rc["seconds"] > 0 and rc["refused"] == 0
    m = r["micro"]
    assert all(m[k] > 0 for k in ("key_check_us", "pick_fresh_us", "pick_filling_us",
                                  "pick_small_fresh_us", "pick_small_filling_us"))
    g = r["gc"]
    assert g["longest_ms"] >= 0 and g["longest_ms_whole_run"] >= 0
    assert len(g["collections"]) == 3
