"""Consumer metrics: every name declared once with its meaning; Prometheus text on a port.

prometheus-client keeps the values and writes the exposition; each ``Metrics`` has a registry of
its own (never the library's global one), so two consumers in one process, or two tests, never
share a series. Tests read the values directly (``Metrics.value``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

from livemigrate.counters import ConsumerMetric

PREFIX: Final = "livemigrate_consumer_"

# name -> (type, meaning). Labels: consumer, and shard (empty for a process-wide value).
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

# A process-wide value (no shard) has the shard label empty: Prometheus reads an empty label as
# an absent one, so the series is the one the hand-written exposition had.
_LABELS: Final = ("consumer", "shard")


class Metrics:
    """Thread-safe counters and gauges for one consumer process, in a registry of its own.

    Parameters
    ----------
    consumer:
        The ``consumer`` label of every series (``source``, ``reverse``, ...).
    """

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.registry = CollectorRegistry()
        self._metrics: dict[str, Counter | Gauge] = {}
        # (name, shard) -> the labelled series: looking a series up by its labels costs
        # several times its increment (measured, issue 19), and the applier counts per record.
        self._series: dict[tuple[str, str], Counter | Gauge] = {}
        for name, (kind, meaning) in METRICS.items():
            family = Counter if kind == "counter" else Gauge
            metric = family(PREFIX + name, meaning, _LABELS, registry=self.registry)
            metric.labels(consumer, "")  # every series is scraped from the start, at 0
            self._metrics[name] = metric

    def inc(self, name: ConsumerMetric, by: float = 1, shard: str = "") -> None:
        self._labelled(name, shard).inc(by)

    def set(self, name: ConsumerMetric, value: float, shard: str = "") -> None:
        series = self._labelled(name, shard)
        if not isinstance(series, Gauge):
            raise TypeError(f"{name!r} is a counter: it only goes up (inc)")
        series.set(value)

    def value(self, name: ConsumerMetric, shard: str | None = None) -> float:
        """A counter summed over shards, or one shard's value."""
        wanted = PREFIX + name
        return sum(
            sample.value
            for family in self._metric(name).collect()
            for sample in family.samples
            if sample.name == wanted and shard in (None, sample.labels["shard"])
        )

    def forget(self, shard: str) -> None:
        """Drop a shard's gauges (lease released)."""
        for name, metric in self._metrics.items():
            if isinstance(metric, Gauge) and self._series.pop((name, shard), None) is not None:
                metric.remove(self.consumer, shard)

    def render(self) -> str:
        """The Prometheus text exposition format."""
        return generate_latest(self.registry).decode()

    def _labelled(self, name: str, shard: str) -> Counter | Gauge:
        series = self._series.get((name, shard))
        if series is None:  # two threads may both get here: labels() gives both the same one
            series = self._series[(name, shard)] = self._metric(name).labels(self.consumer, shard)
        return series

    def _metric(self, name: str) -> Counter | Gauge:
        try:
            return self._metrics[name]
        except KeyError:
            raise KeyError(f"undeclared metric {name!r}: declare it in METRICS") from None


def serve(metrics: Metrics, port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Serve the metrics on ``host:port`` from a daemon thread; ``shutdown()`` stops it.

    Raises
    ------
    OSError
        The address cannot be bound (the port is in use, the address is not this host's).
    """
    server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    return server
