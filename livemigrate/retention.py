"""The retention guard (ARCHITECTURE.md rule 9), in one place.

A change source keeps each record for a limited time: DynamoDB Streams for 24 hours, a Kinesis
data stream for its retention period (24 to 8,760 hours, read from the stream with
DescribeStreamSummary). A record older than that is trimmed, and a change nobody applied
before then is lost: the migration must start over. Every threshold that guards against it
lives here and is derived from the retention:

- a consumer's lag warns from half the retention and is an error from five sixths (12 h and
  20 h of 24 h): the forward consumer, the reverse consumer and the search sink;
- the backfill must end within the retention minus a margin (by default a sixth of it: 20 h
  of 24 h), leaving that margin for verification and the cutover while the stream still holds
  every change since the start. ``BackfillGuard`` measures the ETA after the first pages and
  refuses to go on past that limit unless forced, then warns whenever the ETA crosses it.

The retention in force and the backfill's last ETA are kept in the control item ``RETENTION``
so ``livemigrate status`` and the cutover gates show them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from livemigrate.clock import Clock, SystemClock
from livemigrate.errors import ConfigError
from livemigrate.keys import RETENTION

if TYPE_CHECKING:
    from livemigrate.control import ControlStore

log = logging.getLogger("livemigrate.retention")

HOUR = 3600.0
SourceKind = Literal["dynamodb-streams", "kinesis"]
Level = Literal["ok", "warn", "error"]
DYNAMODB_STREAMS: SourceKind = "dynamodb-streams"
KINESIS: SourceKind = "kinesis"
# DynamoDB Streams keep every record for 24 hours; the period cannot be changed.
DYNAMODB_STREAMS_HOURS = 24.0
WARN_FRACTION = 1 / 2
ERROR_FRACTION = 5 / 6
MARGIN_FRACTION = 1 / 6
RECORD_SECONDS = 60.0  # how often a running backfill's ETA is written for status


@dataclass(frozen=True)
class Retention:
    """How long a change source keeps a record, and the thresholds derived from it.

    Parameters
    ----------
    kind:
        ``dynamodb-streams`` or ``kinesis``.
    seconds:
        The retention period.
    margin_seconds:
        What the backfill leaves free before the retention (None: a sixth of it).
    """

    kind: SourceKind
    seconds: float
    margin_seconds: float | None = None

    @property
    def warn_seconds(self) -> float:
        """Lag from which consumers warn."""
        return self.seconds * WARN_FRACTION

    @property
    def error_seconds(self) -> float:
        """Lag from which consumers log an error: records are about to be trimmed."""
        return self.seconds * ERROR_FRACTION

    @property
    def margin(self) -> float:
        if self.margin_seconds is None:
            return self.seconds * MARGIN_FRACTION
        return min(self.margin_seconds, self.seconds)

    @property
    def backfill_limit(self) -> float:
        """The longest backfill ETA that leaves the margin before the retention."""
        return self.seconds - self.margin

    def level(self, lag_seconds: float) -> Level:
        """``ok``, ``warn`` or ``error`` for a consumer lag against this retention."""
        if lag_seconds >= self.error_seconds:
            return "error"
        if lag_seconds >= self.warn_seconds:
            return "warn"
        return "ok"

    def text(self) -> str:
        """E.g. ``24 h (DynamoDB Streams)``."""
        name = "DynamoDB Streams" if self.kind == DYNAMODB_STREAMS else "the Kinesis stream"
        return f"{duration(self.seconds)} ({name})"

    def with_margin(self, margin_seconds: float | None) -> Retention:
        return Retention(self.kind, self.seconds, margin_seconds)


DYNAMODB_STREAMS_RETENTION = Retention(DYNAMODB_STREAMS, DYNAMODB_STREAMS_HOURS * HOUR)


def duration(seconds: float) -> str:
    """``24 h``, ``7 d``, ``1 h 30 min``, ``45 s``: durations as operators read them."""
    if seconds >= 3 * 24 * HOUR and seconds % (24 * HOUR) == 0:
        return f"{seconds / (24 * HOUR):.0f} d"
    if seconds >= HOUR:
        hours, rest = divmod(round(seconds), int(HOUR))
        return f"{hours} h" + (f" {rest // 60} min" if rest >= 60 else "")
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def kinesis_retention(client: Any, stream: str) -> Retention:
    """The retention of a Kinesis data stream (a name or an ARN), read from the stream."""
    key = "StreamARN" if stream.startswith("arn:") else "StreamName"
    try:
        summary = client.describe_stream_summary(**{key: stream})["StreamDescriptionSummary"]
    except client.exceptions.ResourceNotFoundException as exc:
        raise ConfigError(
            f"Kinesis stream {stream!r} does not exist",
            "set LIVEMIGRATE_KINESIS_STREAM to the stream the table streams its changes to",
        ) from exc
    return Retention(KINESIS, float(summary["RetentionPeriodHours"]) * HOUR)


def retention_of(kind: str, kinesis: Any = None, stream: str | None = None) -> Retention:
    """The retention of a change source kind (Kinesis: read from ``stream``)."""
    if kind == KINESIS:
        if kinesis is None or not stream:
            raise ConfigError(
                "the change source is kinesis but no Kinesis stream is named",
                "set LIVEMIGRATE_KINESIS_STREAM to the stream's name or ARN",
            )
        return kinesis_retention(kinesis, stream)
    return DYNAMODB_STREAMS_RETENTION


def for_settings(settings: Any, kinesis: Any = None) -> Retention:
    """The retention of the migration's change source, with the configured backfill margin.

    ``settings.change_source`` / ``kinesis_stream`` may be absent (DynamoDB Streams then).
    """
    kind = getattr(settings, "change_source", DYNAMODB_STREAMS)
    stream = getattr(settings, "kinesis_stream", None)
    margin = getattr(settings, "retention_margin_seconds", None)
    return retention_of(kind, kinesis, stream).with_margin(margin)


def source_retention(settings: Any, clients: Any) -> Retention:
    """``for_settings`` with a Kinesis client from ``clients`` (or one built for the settings)."""
    kinesis = getattr(clients, "kinesis", None)
    if kinesis is None and getattr(settings, "change_source", DYNAMODB_STREAMS) == KINESIS:
        kinesis = kinesis_client(settings)
    return for_settings(settings, kinesis)


def kinesis_client(settings: Any) -> Any:
    """A Kinesis client for the configured endpoint and region."""
    import boto3

    from livemigrate.aws import RetryMode, client_config

    mode: RetryMode = getattr(settings, "retry_mode", "standard")
    kwargs: dict[str, Any] = {"config": client_config(4, mode)}
    if getattr(settings, "endpoint_url", None):
        kwargs["endpoint_url"] = settings.endpoint_url
    if getattr(settings, "region", None):
        kwargs["region_name"] = settings.region
    return boto3.session.Session().client("kinesis", **kwargs)


def lag_message(who: str, lag_seconds: float, retention: Retention) -> str | None:
    """What a consumer logs about its lag (None: nothing to say)."""
    level = retention.level(lag_seconds)
    if level == "error":
        return (
            f"{who} lags {duration(lag_seconds)} behind the stream, which keeps records for "
            f"{retention.text()}: records older than that are trimmed and LOST; add consumers "
            "or capacity now"
        )
    if level == "warn":
        return f"{who} lags {duration(lag_seconds)} (retention is {retention.text()})"
    return None


# -- the backfill's ETA ---------------------------------------------------------------------


@dataclass(frozen=True)
class Eta:
    """The backfill's time to finish, measured from this run's rate."""

    seconds: float
    read: int
    remaining: int
    rate: float


def seconds_left(remaining: float, rate: float) -> float | None:
    """The ETA: seconds to read ``remaining`` items at ``rate`` items/s; 0 when none remain,
    None while the rate is unknown (nothing read yet). The one ETA of the backfill's progress
    line, ``status`` and this guard."""
    if remaining <= 0:
        return 0.0
    return remaining / rate if rate > 0 else None


def estimate(total: int, already: int, read: int, elapsed: float) -> Eta | None:
    """ETA from the items read by this run in ``elapsed`` seconds (None: nothing read yet).

    ``total`` is the source's ItemCount (an estimate), ``already`` what earlier runs read.
    """
    if read <= 0 or elapsed <= 0:
        return None
    rate = read / elapsed
    remaining = max(0, total - already - read)
    return Eta(seconds_left(remaining, rate) or 0.0, read, remaining, rate)


Verdict = Literal["ok", "refuse", "warn"]


def judge(eta: Eta, retention: Retention, *, first: bool, forced: bool) -> Verdict:
    """Refuse a run whose first measured ETA exceeds the limit (unless forced); warn later."""
    if eta.seconds <= retention.backfill_limit:
        return "ok"
    return "refuse" if first and not forced else "warn"


def eta_message(eta: Eta, retention: Retention, verdict: Verdict) -> str:
    """Names the ETA, the retention and what is at risk."""
    head = (
        f"the backfill's ETA is {duration(eta.seconds)} ({eta.remaining} items left at "
        f"{eta.rate:,.1f} items/s), more than the change source's retention of "
        f"{retention.text()} minus a margin of {duration(retention.margin)}"
    )
    risk = (
        "changes made since the migration started are kept by the stream only that long: "
        "if the consumer stops or falls behind meanwhile, or verification and the cutover "
        "do not fit in what is left, they are trimmed unapplied and the migration must start "
        "over"
    )
    if verdict == "refuse":
        return (
            f"backfill refused: {head}. At risk: {risk}. Fix: raise the read/write rates, "
            "add workers or processes (--workers, --processes), use a Kinesis change source "
            "with a longer retention, or pass --force to go on anyway."
        )
    return f"RETENTION RISK: {head}. At risk: {risk}."


class BackfillGuard:
    """Watches a backfill's rate; refuses (stops it) or warns by ``judge``.

    Parameters
    ----------
    retention:
        The change source's retention.
    progress:
        Items read by this run so far.
    total, already:
        The source's ItemCount and the items earlier runs read.
    min_items:
        The first measurement is taken once this many items are read (the first pages).
    stop:
        Called once on a refusal (ends the run with its position saved).
    forced:
        ``--force``: warn instead of refusing.
    """

    def __init__(
        self,
        retention: Retention,
        progress: Callable[[], int],
        *,
        total: int,
        already: int,
        min_items: int,
        stop: Callable[[], None],
        forced: bool = False,
        clock: Clock | None = None,
        store: ControlStore | None = None,
    ) -> None:
        self.retention = retention
        self.progress = progress
        self.total = total
        self.already = already
        self.min_items = max(1, min_items)
        self.stop = stop
        self.forced = forced
        self.clock = clock or SystemClock()
        self.store = store
        self.started = self.clock.monotonic()
        self.refusal: str | None = None
        self.measured = False
        self._warned = False
        self._recorded: tuple[Verdict | None, float] = (None, 0.0)

    def check(self) -> Verdict | None:
        """One look at the rate (None: not measured yet, too few items read)."""
        read = self.progress()
        if read < self.min_items and self.already + read < self.total:
            return None
        eta = estimate(self.total, self.already, read, self.clock.monotonic() - self.started)
        if eta is None:
            return None
        verdict = judge(eta, self.retention, first=not self.measured, forced=self.forced)
        self.measured = True
        self._record(eta, verdict)
        if verdict == "refuse":
            self.refusal = eta_message(eta, self.retention, verdict)
            log.error("%s", self.refusal)
            self.stop()
        elif verdict == "warn" and not self._warned:  # once per crossing
            log.warning("%s", eta_message(eta, self.retention, verdict))
        self._warned = verdict == "warn"
        return verdict

    def _record(self, eta: Eta, verdict: Verdict) -> None:
        """Keep the ETA for status: at a new verdict, else at most every RECORD_SECONDS."""
        now = self.clock.monotonic()
        due = verdict != self._recorded[0] or now - self._recorded[1] >= RECORD_SECONDS
        if self.store is not None and due:
            record(self.store, self.retention, eta=eta, verdict=verdict)
            self._recorded = (verdict, now)

    def watch(self, done: threading.Event, interval: float = 5.0) -> threading.Thread:
        """Check every ``interval`` seconds until ``done`` is set or the run is refused."""

        def loop() -> None:
            while not done.wait(interval):
                if self.check() == "refuse":
                    return

        thread = threading.Thread(target=loop, name="retention-guard", daemon=True)
        thread.start()
        return thread


# -- what status and the gates show ---------------------------------------------------------


def record(
    store: ControlStore,
    retention: Retention,
    *,
    eta: Eta | None = None,
    verdict: Verdict | None = None,
) -> None:
    """Keep the retention in force (and the backfill's last ETA) in the control table."""
    fields: dict[str, Any] = {
        "kind": retention.kind,
        "retention_seconds": retention.seconds,
        "backfill_limit_seconds": retention.backfill_limit,
    }
    if eta is not None:
        fields.update({"backfill_eta_seconds": round(eta.seconds), "backfill_eta_verdict": verdict})
    store.update(RETENTION, fields)


def recorded(item: dict[str, Any] | None) -> Retention:
    """The retention kept in the control item (DynamoDB Streams when none is recorded)."""
    if not item or item.get("retention_seconds") is None:
        return DYNAMODB_STREAMS_RETENTION
    kind: SourceKind = KINESIS if item.get("kind") == KINESIS else DYNAMODB_STREAMS
    seconds = float(item["retention_seconds"])
    limit = float(item.get("backfill_limit_seconds", seconds * (1 - MARGIN_FRACTION)))
    return Retention(kind, seconds, seconds - limit)


def summary(item: dict[str, Any] | None, consumer_lag: float | None) -> dict[str, Any]:
    """The retention block of ``status --json`` (and the gate's text)."""
    retention = recorded(item)
    eta = (item or {}).get("backfill_eta_seconds")
    return {
        "kind": retention.kind,
        "retention_seconds": retention.seconds,
        "backfill_limit_seconds": retention.backfill_limit,
        "backfill_eta_seconds": None if eta is None else float(eta),
        "consumer_lag_level": None
        if consumer_lag is None
        else retention.level(float(consumer_lag)),
        "warn_seconds": retention.warn_seconds,
        "error_seconds": retention.error_seconds,
    }


def headroom(
    item: dict[str, Any] | None, consumer_lag: float | None, backfilling: bool
) -> tuple[bool, str, str]:
    """The cutover gate's verdict: (met, why, fix). Unmet when the consumer's lag is at the
    error level: records are about to be trimmed before they are applied."""
    retention = recorded(item)
    parts = [f"retention {retention.text()}"]
    eta = (item or {}).get("backfill_eta_seconds")
    if backfilling and eta is not None:
        limit = duration(retention.backfill_limit)
        parts.append(f"backfill ETA {duration(float(eta))} (limit {limit})")
    if consumer_lag is not None:
        parts.append(
            f"consumer lag {duration(consumer_lag)} (warn at {duration(retention.warn_seconds)}"
            f", error at {duration(retention.error_seconds)})"
        )
    why = "; ".join(parts)
    if consumer_lag is not None and retention.level(consumer_lag) == "error":
        fix = (
            "add consumers or capacity now; if records were trimmed, run `livemigrate verify "
            "--repair` once the consumer has caught up"
        )
        return False, why + ": records are about to be trimmed unapplied", fix
    return True, why, ""


def status_line(block: dict[str, Any]) -> str:
    """The ``status`` text line of ``summary``'s block."""
    retention = Retention(block["kind"], float(block["retention_seconds"]))
    limit = duration(float(block["backfill_limit_seconds"]))
    line = f"  retention: {retention.text()}; the backfill must end within {limit}"
    eta = block.get("backfill_eta_seconds")
    if eta is not None:
        line += f" (last measured ETA {duration(float(eta))})"
    if block.get("consumer_lag_level") not in (None, "ok"):
        line += f"; CONSUMER LAG AT {str(block['consumer_lag_level']).upper()} LEVEL"
    return line
