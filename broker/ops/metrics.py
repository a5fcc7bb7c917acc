"""Prometheus metrics (contract section 3, Operations). Defined once at import."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

SENDS = Counter("smsdora_sends_total", "POST /messages/send outcomes", ["result"])
TRANSITIONS = Counter("smsdora_status_transitions_total", "Message status transitions", ["status"])
DEVICES_CONNECTED = Gauge("smsdora_devices_connected", "Phones connected to this node")
HTTP_LATENCY = Histogram(
    "smsdora_http_request_seconds", "HTTP request latency", ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SEND_BATCH_ROWS = Histogram(
    "smsdora_send_batch_rows", "Sends written together in one statement and commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
DISPATCH_LATENCY = Histogram(
    "smsdora_dispatch_seconds", "From accepting a send to the job frame written to the phone",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
REPORT_BATCH = Histogram(
    "smsdora_report_batch_size", "Phone reports (ack, status) written per group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
GC_FREEZES = Counter("smsdora_gc_freezes_total",
                     "Freezes of the garbage collector's survivors (broker/ops/collector.py)",
                     ["cause"])
FRAMES = Counter("smsdora_device_frames_total", "Frames received from phones", ["type"])
CONNECTIONS_OPEN = Gauge("smsdora_connections_open",
                         "Connections the listeners hold (HTTP and WebSocket)")
CONNECTIONS_CLOSED = Counter(
    "smsdora_connections_closed_total",
    "Connections refused or closed at the edge (broker/ops/connections.py, server.py)",
    ["reason"])
WEBHOOK_ATTEMPTS = Counter(
    "smsdora_webhook_attempts_total",
    "Webhook delivery attempts by outcome: delivered (a 2xx), failed (retried later or"
    " finally failed)", ["outcome"])
WEBHOOK_LATENCY = Histogram(
    "smsdora_webhook_attempt_seconds", "One webhook delivery attempt, until the answer's head",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15))
WEBHOOKS_DISABLED = Counter("smsdora_webhooks_disabled_total",
                            "Endpoints the sender disabled (410, or days without a 2xx)")


def render() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
