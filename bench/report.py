"""From raw runs to figures: rates, percentiles, the GC window, the table
(markdown, so it pastes into docs/PERFORMANCE.md as printed) and the chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec


def answered_rate(run: dict[str, Any], warmup_s: float,
                  frames: dict[str, int] | None = None) -> float:
    """201s a second after the warm-up, to the last answer; with `frames`,
    only those whose `send` frame reached a phone."""
    if not run["t_answer"]:
        return 0.0
    hi = max(run["t_answer"])
    lo = run["t0_ns"]
    if hi - lo > 4 * warmup_s * 1e9:  # a run too short for a warm-up counts whole
        lo += int(warmup_s * 1e9)
    n = sum(1 for mid, t in zip(run["ids"], run["t_answer"])
            if t >= lo and (frames is None or mid in frames))
    return n / ((hi - lo) / 1e9) if hi > lo else 0.0


def _rank(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return 0.0
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def latency(run: dict[str, Any], frames: dict[str, int]) -> dict[str, Any]:
    """Request written -> `send` frame read by the phone, and request -> 201."""
    to_phone = sorted((frames[mid] - sent) / 1e6
                      for mid, sent in zip(run["ids"], run["t_send"]) if mid in frames)
    http = sorted((answered - sent) / 1e6
                  for sent, answered in zip(run["t_send"], run["t_answer"]))
    return {"samples": len(to_phone), "missing_frames": len(run["ids"]) - len(to_phone),
            "p50_ms": _rank(to_phone, 0.5), "p99_ms": _rank(to_phone, 0.99),
            "p999_ms": _rank(to_phone, 0.999), "max_ms": to_phone[-1] if to_phone else 0.0,
            "http_p50_ms": _rank(http, 0.5), "http_p99_ms": _rank(http, 0.99)}


def gc_window(path: Path, t0: float, t1: float) -> dict[str, Any]:
    """The longest collection inside [t0, t1] (wall seconds), from the file
    bench/serve_with_gc.py writes."""
    data = msgspec.json.decode(path.read_bytes())
    seconds = data["per_second"]
    inside = [s for s in seconds if int(t0) <= s[0] <= int(t1)]
    worst = max(inside, key=lambda s: s[1], default=[0, 0.0, -1, 0.0, 0.0])  # -1: none
    overall = max(seconds, key=lambda s: s[1], default=[0, 0.0, 0, 0.0, 0.0])
    return {"longest_ms": worst[1], "generation": worst[2], "window_s": t1 - t0,
            "longest_cpu_ms": worst[3], "longest_by_cpu_ms": max((s[4] for s in inside),
                                                                 default=0.0),
            "longest_ms_whole_run": overall[1], "generation_whole_run": overall[2],
            "collections": data["count"],
            "total_ms": data["total_ms"], "thresholds": data["thresholds"]}


def fleet_summary(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """What the phones saw during the load runs, summed over processes."""
    counts: dict[str, int] = {}
    for st in stats:
        for kind, n in st["counts"].items():
            counts[kind] = counts.get(kind, 0) + n
    return {"connected": sum(st["connected"] for st in stats), "counts": counts,
            "phones_with_jobs": sum(st["phones_with_jobs"] for st in stats),
            "most_jobs_one_phone": max((st["most_jobs"] for st in stats), default=0)}


# --- the table --------------------------------------------------------------


def thread_shares(shares: dict[str, float] | None) -> str:
    if not shares:
        return "—"
    return f"{shares['running']:.2f} / {shares['waiting_cpu']:.2f} / {shares['asleep']:.2f}"


def thread_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """Where the server's one thread went in each closed loop: a server
    that is not running all the time is not bound by its own CPU alone."""
    ours = [(name, row.get("main_thread")) for name, row in (
        ("end to end", r["lifecycle"]), ("accept path, held", r["throughput"]),
        ("accept path, answering", r["throughput"].get("answering") or {}))]
    if not any(shares for _, shares in ours):
        return []
    return [("share of the server's main thread running / runnable, waiting for a CPU / "
             "asleep (the scheduler's accounting): " + ", ".join(name for name, _ in ours),
             ", ".join(thread_shares(shares) for _, shares in ours),
             f"{thread_shares(r['baseline'].get('main_thread'))} (the baseline's server)", "", "", "")]


def _n(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"


def _holds(ok: bool) -> str:
    return "yes" if ok else "**no**"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    r = results["rows"]
    out: list[tuple[str, str, str, str, str, str]] = []
    base = r["baseline"]["per_s"]
    label = "bare Starlette + 1 INSERT"
    for name, value, need in (
            ("sends/s end to end (201, frame, ack, sent, delivered stored)",
             r["lifecycle"]["e2e_per_s"], 0.5),
            ("sends/s accept path (201 answered, `send` frame at the phone; the phones "
             "hold their reports)", r["throughput"]["accept_per_s"], 0.8)):
        ratio = value / base if base else 0.0
        out.append((name, _n(value), f"{_n(base)} ({label})", f"{ratio:.2f}",
                    f"≥ {need} × baseline", _holds(ratio >= need)))
    answering = r["throughput"].get("answering")
    if answering is not None:
        value = answering["accept_per_s"]
        out.append(("sends/s accept path while the phones answer as ever (their reports "
                    "written too)", _n(value), f"{_n(base)} ({label})",
                    f"{value / base if base else 0.0:.2f}", "", ""))
    out += thread_rows(r)
    f = r["phones"]
    out.append(("phones that got jobs (end-to-end and latency runs) / jobs on the busiest "
                "phone / phone sockets dropped there, and in the accept-path run",
                f"{f['phones_with_jobs']:,} / {f['most_jobs_one_phone']:,} / "
                f"{f['counts'].get('dropped', 0)}, {r['throughput']['dropped']}",
                "—", "", "", ""))
    phones = r["load_phones"]
    for row in r["latency"]:
        pct = round(row["fraction"] * 100)
        target, ok = ("p99 ≤ 10 ms", row["p99_ms"] <= 10) if pct == 50 else ("", True)
        out.append((f"ms request → `send` frame p50 / p99 / p99.9 at {pct} % of the end-to-end max "
                    f"({_n(row['offered_per_s'])}/s for {row['seconds']:.0f} s, "
                    f"{_k(phones)} phones connected)",
                    f"{row['p50_ms']:.2f} / {row['p99_ms']:.2f} / {row['p999_ms']:.2f}",
                    "—", "", target, _holds(ok) if target else ""))
    out += sse_rows(r.get("sse"))
    out += webhook_rows(r.get("webhooks"))
    out += dashboard_rows(r.get("dashboard"))
    bare = {row["phones"]: row for row in r["bare"]["levels"]}
    for row in r["memory"]["levels"]:
        b = bare.get(row["phones"], {})
        n = row["phones"]
        name = f"RSS KiB per idle phone at {_k(n)} phones"
        if n not in (1000, 5000, 10_000, 20_000) and n > 10_000:
            name += " (20k: past the fd limit)"
        ratio = row["kib_per_phone"] / b["kib_per_phone"] if b.get("kib_per_phone") else 0.0
        out.append((name, f"{row['kib_per_phone']:.1f}",
                    f"{b.get('kib_per_phone', 0):.1f} (bare websockets)", f"{ratio:.2f}",
                    "≤ 30", _holds(row["kib_per_phone"] <= 30)))
    for row in r["memory"]["levels"]:
        if "idle_cores" not in row:
            continue
        b = bare.get(row["phones"], {})
        ratio = row["idle_cores"] / b["idle_cores"] if b.get("idle_cores") else 0.0
        top = row["phones"] == max(x["phones"] for x in r["memory"]["levels"])
        out.append((f"idle CPU, cores, at {_k(row['phones'])} phones", f"{row['idle_cores']:.3f}",
                    f"{b.get('idle_cores', 0):.3f} (bare websockets)", f"{ratio:.1f}",
                    "≤ 0.1 at 20k" if top else "", _holds(row["idle_cores"] <= 0.1) if top else ""))
    rc = r["reconnect"]
    out.append((f"s for {_k(rc['phones'])} phones to reconnect after kill -9 and restart",
                f"{rc['seconds']:.1f} ({rc['reconnected']:,} back, {rc['refused']} refused, "
                f"{rc['failed_after_listen']} failed; broker up in {rc['broker_start_s']:.1f})",
                "—", "", "≤ 15 s, none refused",
                _holds(rc["seconds"] <= 15 and rc["refused"] == 0
                       and rc["reconnected"] >= rc["phones"])))
    m = r["micro"]
    out.append(("µs per API-key check (no DB lookup)", f"{m['key_check_us']:.2f}", "—", "",
                "≤ 20", _holds(m["key_check_us"] <= 20)))
    growth = (m["pick_filling_us"] / m["pick_small_filling_us"]
              if m["pick_small_filling_us"] else 0.0)
    out.append((f"µs per device pick, {_k(m['pick_phones'])} phones of one account: "
                "all have room / filling up (each pick fills the phone it picks)",
                f"{m['pick_fresh_us']:.2f} / {m['pick_filling_us']:.2f}",
                f"{m['pick_small_fresh_us']:.2f} / {m['pick_small_filling_us']:.2f} "
                f"at {_k(m['pick_small_phones'])} phones", f"{growth:.1f}",
                "O(1) or O(log n)", _holds(growth <= 2.0)))
    g = r["gc"]
    worst = f"gen {g['generation']}" if g["generation"] >= 0 else "no collection in the window"
    out.append((f"ms longest GC pause, {_k(g['phones'])} phones under load (wall; in brackets "
                "the CPU time of that collection, and the longest collection by CPU time)",
                f"{g['longest_ms']:.1f} ({worst}; CPU {g.get('longest_cpu_ms', 0.0):.1f}, "
                f"{g.get('longest_by_cpu_ms', 0.0):.1f})", "—", "", "≤ 50",
                _holds(g["longest_ms"] <= 50)))
    runs = [("end to end", r["lifecycle"].get("gc"))]
    runs += [(f"{round(row['fraction'] * 100)} %", row.get("gc")) for row in r["latency"]]
    runs += [("accept path, held", r["throughput"].get("gc")),
             ("accept path, answering", r["throughput"].get("answering", {}).get("gc"))]
    per_run = [f"{name} {g['longest_ms']:.0f}" for name, g in runs if g]
    if per_run:
        out.append(("ms longest GC pause in each load run (wall)", " / ".join(per_run),
                    "—", "", "", ""))
    out.append(("ms longest GC pause in the broker's whole first run (phones connecting)",
                f"{g['longest_ms_whole_run']:.1f} (gen {g['generation_whole_run']})",
                "—", "", "", ""))
    return out


def _legs(p: dict[str, Any]) -> str:
    return f"{p['p50_ms']:.2f} / {p['p90_ms']:.2f} / {p['p99_ms']:.2f} / {p['max_ms']:.2f}"


def sse_rows(s: dict[str, Any] | None) -> list[tuple[str, str, str, str, str, str]]:
    """bench/sse.py: both legs of a send to an SMS Gateway phone (SSE), the
    WebSocket phone's frame at the same rate as their baseline, SSE ÷ WS."""
    if s is None:
        return []
    ws, sse = s["ws"], s["sse"]
    where = (f"at {_n(s['rate'])}/s for {s['seconds']:.0f} s, {s['phones']} phones a side, "
             f"each side its own account")
    base = f"{_legs(ws)} (WebSocket phone: request → `send` frame)"
    failed = sum(n for k, n in sse["counts"].items()
                 if k.startswith(("list_", "patch_")) and k not in ("list_200", "patch_200"))
    out = []
    for leg, what, note in (
            ("event", "`event: MessageEnqueued` read",
             f" ({sse['without_own_event']} of {sse['listed']['samples']} listed by an "
             "earlier event's look)"),
            ("listed", "the phone's `GET /message` answered with the job",
             f" ({failed} listings or reports not 2xx)" if failed else "")):
        q = s["ratio"][leg]
        out.append((f"ms request → {what}, SMS Gateway phone (SSE), p50 / p90 / p99 / max "
                    f"{where}", _legs(sse[leg]) + note, base,
                    f"{q['p50_ms']:.2f} (p50) / {q['p99_ms']:.2f} (p99)", "", ""))
    return out


def table(results: dict[str, Any]) -> str:
    m = results["machine"]
    head = (f"smsdora bench, {results['date']}{' (quick)' if results['quick'] else ''}: "
            f"{m['cpus']} × {m['cpu_model']}, {m['ram']} RAM, Python {m['python']}, "
            f"uvicorn {m['packages']['uvicorn']}, asyncpg {m['packages']['asyncpg']}, "
            f"websockets {m['packages']['websockets']}, PostgreSQL {m['postgresql']}; "
            f"commit {m['commit']}; {results['elapsed_s']:.0f} s; load average before "
            f"{results['load_before'][0]:.2f}")
    lines = [head, "", "| figure | ours | baseline in the same run | ratio | target | holds |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Latency against offered load (matplotlib: `pip install -e .[bench]`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    r = results["rows"]
    points = r["latency"]
    x = [p["offered_per_s"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for key, name in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
        ax.plot(x, [max(p[key], 1e-3) for p in points], marker="o", label=name)
    ax.axvline(r["lifecycle"]["e2e_per_s"], color="grey", linestyle="--",
               label="end-to-end maximum")
    ax.axhline(10, color="red", linestyle=":", label="10 ms target (p99 at 50 %)")
    ax.set_yscale("log")
    values = [max(p[k], 1e-3) for p in points for k in ("p50_ms", "p99_ms", "p999_ms")] + [10]
    ticks = [t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
             if min(values) / 2 <= t <= max(values) * 2]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("offered load, sends/s (open loop)")
    ax.set_ylabel("request → send frame at the phone, ms")
    ax.set_title(f"smsdora, {r['load_phones']:,} phones connected, {results['date'][:10]}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def webhook_rows(w: dict[str, Any] | None) -> list[tuple[str, str, str, str, str, str]]:
    """bench/webhooks.py: the sender's delivery rate and latency, and the
    accept path with an endpoint against the runs without one around it."""
    if w is None:
        return []
    one, four = w["prefilled_1"], w[f"prefilled_{four_of(w)}"]
    sent, acc = w["from_sends"], w["accept"]
    lost = sum(x["events"] - x["arrived"] for x in (one, four, sent))
    out = [(f"webhook events/s delivered from a full outbox ({one['events']:,} message events, "
            f"receiver answering 204 in its own process): to one endpoint / shared by "
            f"{four_of(w)}", f"{_n(one['per_s'])} / {_n(four['per_s'])}"
            + (f" ({lost} not delivered)" if lost else ""), "—",
            f"{_ratio(four['per_s'], one['per_s']):.2f}", "", ""),
           (f"ms webhook event written → received p50 / p99 at {_n(sent['offered_per_s'])} "
            f"sends/s, phones answering ({_n(sent['per_s'])} events/s)",
            f"{sent['latency']['p50_ms']:.2f} / {sent['latency']['p99_ms']:.2f}", "—", "", "", "")]
    hooked = acc["hooked"]
    out.append(("sends/s accept path with one webhook endpoint for \"*\" (as the accept-path row, "
                f"its own broker and {w['sizes']['phones']} phones; {hooked['events_delivered']:,} "
                f"of {hooked['events_written']:,} events delivered meanwhile)",
                _n(hooked["accept_per_s"]),
                f"{_n(acc['without_mean_per_s'])} (no endpoint: {_n(acc['plain-1']['accept_per_s'])}"
                f" before, {_n(acc['plain-2']['accept_per_s'])} after)", f"{acc['ratio']:.2f}",
                "", ""))
    return out


def four_of(w: dict[str, Any]) -> int:
    """How many endpoints shared the full outbox's second run."""
    return max(int(k.split("_")[1]) for k in w if k.startswith("prefilled_"))


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def dashboard_rows(d: dict[str, Any] | None) -> list[tuple[str, str, str, str, str, str]]:
    """bench/dashboard.py: p50 / p99 / max of each page, one request after another."""
    if d is None:
        return []
    sz = d["sizes"]
    where = f"{sz['messages']:,}-message account, {sz['requests']} requests one after another"
    out = []
    for key, what in (("list", "`/dashboard/messages` (first page)"),
                      ("list_failed", "`/dashboard/messages?status=failed`"),
                      ("list_oldest", "`/dashboard/messages?cursor=…` (the oldest page)"),
                      ("detail", "`/dashboard/messages/{id}` (history timeline), random ids")):
        p = d[key]
        out.append((f"ms dashboard page {what} p50 / p99 / max, {where}",
                    f"{p['p50_ms']:.2f} / {p['p99_ms']:.2f} / {p['max_ms']:.2f}"
                    f" ({p['bytes'] // 1024} KiB)", "—", "", "", ""))
    return out
