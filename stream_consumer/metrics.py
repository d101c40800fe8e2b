"""Consumer metrics: every name declared once with its meaning; Prometheus text on a port.

Only the standard library serves them (``http.server``): no new dependency. Tests read the
counters directly (``Metrics.value``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from livemigrate.counters import ConsumerMetric

PREFIX: Final = "livemigrate_consumer_"

# name -> (type, meaning). Labels: consumer (always), shard (per-shard gauges).
METRICS: Final[Mapping[ConsumerMetric, tuple[str, str]]] = {
    "records_read_total": ("counter", "stream records returned by GetRecords"),
    "records_applied_total": ("counter", "records applied to the sink and checkpointed"),
    "records_dead_lettered_total": ("counter", "records sent to the dead-letter store"),
    "apply_retries_total": ("counter", "apply attempts that failed and were retried"),
    "writes_applied_total": ("counter", "destination writes that landed"),
    "writes_stale_total": ("counter", "destination writes skipped: held version newer or equal"),
    "tombstones_written_total": ("counter", "deletes recorded as tombstones"),
    "deletes_total": ("counter", "real deletes"),
    "orphans_removed_total": ("counter", "destination keys removed because a change moved them"),
    "echoes_skipped_total": ("counter", "records the other direction's consumer wrote (skipped)"),
    "retired_writes_total": ("counter", "changes to the retired table after the flip: not applied"),
    "removals_kept_total": ("counter", "removals skipped: the item now lives under another key"),
    "removals_not_owner_total": ("counter", "removals skipped: another source item owns the key"),
    "handoffs_total": ("counter", "destination keys handed over from a source item to another"),
    "claims_skipped_total": (
        "counter",
        "puts skipped: the key's owner still maps to it and this record's item moved on",
    ),
    "collisions_total": ("counter", "records dead-lettered: two source items map to one key"),
    "throttled_total": ("counter", "stream reads throttled (backed off)"),
    "read_errors_total": ("counter", "stream reads that failed otherwise (backed off, retried)"),
    "iterators_expired_total": ("counter", "shard iterators that expired and were reopened"),
    "trimmed_total": ("counter", "reads past retention: possible data loss"),
    "leases_taken_total": ("counter", "shard leases claimed (including takeovers)"),
    "leases_lost_total": ("counter", "shard leases another worker took over"),
    "shards_finished_total": ("counter", "closed shards read to their end"),
    "leases_expired_total": ("counter", "batches stopped at the lease's local deadline"),
    "tombstone_retries_total": ("counter", "batches applied again: tombstone decision too old"),
    "outage_retries_total": ("counter", "rounds retried after a transient endpoint failure"),
    "degraded": ("gauge", "1 while an endpoint is failing (riding out an outage), else 0"),
    "lag_seconds": ("gauge", "age of the last applied record (0 when caught up)"),
    "shards_held": ("gauge", "shard leases this worker holds"),
    "records_behind": ("gauge", "lower bound of unread records (last page size when full)"),
}


class Metrics:
    """Thread-safe counters and gauges for one consumer process."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self._lock = threading.Lock()
        self._values: dict[tuple[ConsumerMetric, str], float] = {}

    def inc(self, name: ConsumerMetric, by: float = 1, shard: str = "") -> None:
        self._check(name)
        with self._lock:
            self._values[(name, shard)] = self._values.get((name, shard), 0) + by

    def set(self, name: ConsumerMetric, value: float, shard: str = "") -> None:
        self._check(name)
        with self._lock:
            self._values[(name, shard)] = value

    def value(self, name: ConsumerMetric, shard: str | None = None) -> float:
        """A counter summed over shards, or one shard's value."""
        with self._lock:
            return sum(v for (n, s), v in self._values.items() if n == name and shard in (None, s))

    def forget(self, shard: str) -> None:
        """Drop a shard's gauges (lease released)."""
        with self._lock:
            for key in [k for k in self._values if k[1] == shard and METRICS[k[0]][0] == "gauge"]:
                del self._values[key]

    def render(self) -> str:
        """The Prometheus text exposition format."""
        lines: list[str] = []
        with self._lock:
            values = dict(self._values)
        for name, (kind, meaning) in METRICS.items():
            full = PREFIX + name
            lines += [f"# HELP {full} {meaning}", f"# TYPE {full} {kind}"]
            rows = sorted((s, v) for (n, s), v in values.items() if n == name)
            if not rows:
                rows = [("", 0.0)]
            for shard, value in rows:
                labels = f'consumer="{self.consumer}"'
                if shard:
                    labels += f',shard="{shard}"'
                lines.append(f"{full}{{{labels}}} {value:g}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _check(name: ConsumerMetric) -> None:
        if name not in METRICS:
            raise KeyError(f"undeclared metric {name!r}: declare it in METRICS")


def serve(metrics: Metrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve ``/metrics`` on ``port`` from a daemon thread; call ``shutdown()`` to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes every few seconds would flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
