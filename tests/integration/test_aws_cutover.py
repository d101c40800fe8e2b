"""The fenced cutover with the consumer as a Lambda function behind an event source mapping
(issue 15): the watermark drain passes when the function applies everything up to the watermark,
and refuses clearly when it cannot be proven; the OnFailure queue gate."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest

from livemigrate import lambda_mode
from livemigrate.aws import AwsClients
from livemigrate.cutover import Cutover, CutoverOptions, DrainTimeout
from livemigrate.errors import PreflightError
from livemigrate.exitcodes import ExitCode
from livemigrate.flag import ControlFlagStore
from livemigrate.lambda_mode import FailureQueue, Watermarks, watermark_item
from livemigrate.migration import Migration
from livemigrate.tables import TableInfo
from stream_consumer import lambda_handler
from tests.lambda_esm import StreamMapping
from tests.services import scan_all, unique
from tests.support.lambdas import FailsOnceAt, dest_items, new_migration, put


@pytest.fixture
def migration(clients: AwsClients, monkeypatch: pytest.MonkeyPatch) -> Migration:
    return new_migration(clients, monkeypatch)


OPTIONS = CutoverOptions(
    fenced=True,
    client_ttl=0.05,
    margin=0.0,
    consumer_margin=0.0,
    fence_seconds=30.0,
    drain_timeout=8.0,
    poll=0.02,
)


class PumpingClock:
    """Real time; while the cutover waits, the event source mapping delivers (as on AWS)."""

    def __init__(self, mapping: StreamMapping) -> None:
        self.mapping = mapping

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        self.mapping.pump()
        time.sleep(min(max(seconds, 0.0), 0.02))


def ready(migration: Migration) -> None:
    """Every other gate met, as the engines would have left them."""
    now = time.time()
    store = migration.store
    store.put("PLAN", {"state": "complete", "completed_at": now - 60})
    store.put("TOMBSTONES", {"state": "purged", "purged_at": now - 30})
    verified = {"passed": True, "at": now - 10, "missing": 0, "extra": 0, "different": 0}
    store.put("VERIFY", {**verified, "tombstones": 0})


def deployed(clients: AwsClients, migration: Migration) -> StreamMapping:
    """The consumer function behind its mapping, caught up with the source."""
    lambda_handler._STATE["forward"] = lambda_handler.forward_state()
    mapping = StreamMapping(clients, migration.settings.source_table, lambda_handler.handler)
    put(clients, migration.settings.source_table, "early", 1)
    mapping.drain()
    ready(migration)
    return mapping


def cutover(
    clients: AwsClients, migration: Migration, mapping: StreamMapping, out: list[str]
) -> Cutover:
    store = migration.store
    watermarks = Watermarks(clients.dynamodb, clients.streams, migration.source, store)
    flags = ControlFlagStore(store, migration.source.name, migration.destination.name)
    return Cutover(
        store, flags, OPTIONS, clock=PumpingClock(mapping), out=out.append, watermarks=watermarks
    )


def source_watermarks(clients: AwsClients, migration: Migration) -> list[dict[str, Any]]:
    items = scan_all(clients.dynamodb, migration.settings.source_table)
    return [i for i in items if lambda_mode.WATERMARK_ATTR in i]


def test_fenced_cutover_with_the_lambda_consumer_drains_through_a_watermark(
    clients: AwsClients, migration: Migration, monkeypatch: pytest.MonkeyPatch
) -> None:
    mapping = deployed(clients, migration)
    # GIVEN a write the mapping has not delivered yet, whose apply fails once (throttled)
    put(clients, migration.settings.source_table, "late", 2)
    state = lambda_handler._STATE["forward"]
    state["sink"] = FailsOnceAt(state["sink"], "late")
    # (and a check, at each watermark report, that the late write is already applied)
    applied_when_seen: list[bool] = []
    report = lambda_mode.report_seen

    def checked(store: Any, token: str, now: float) -> None:
        applied_when_seen.append("late" in dest_items(clients, migration))
        report(store, token, now)

    monkeypatch.setattr(lambda_mode, "report_seen", checked)
    out: list[str] = []
    # WHEN the fenced cutover runs while the mapping delivers
    result = cutover(clients, migration, mapping, out).run()
    # THEN it drained through the watermark and flipped
    assert result.code == ExitCode.OK, out
    assert result.flag is not None and result.flag.active == "destination"
    assert any("watermark" in line for line in out)
    # the watermark was reported only after the write before it was applied (the retried batch)
    assert applied_when_seen == [True]
    assert dest_items(clients, migration)["late"]["n"] == 2
    # and no watermark is left in either table
    assert not source_watermarks(clients, migration)
    assert all(lambda_mode.WATERMARK_ATTR not in i for i in dest_items(clients, migration).values())


def test_fenced_cutover_whose_mapping_does_not_deliver_refuses_and_lifts_the_fence(
    clients: AwsClients, migration: Migration
) -> None:
    mapping = deployed(clients, migration)
    # GIVEN a mapping that delivers nothing (disabled, or its function failing)
    mapping.enabled = False
    out: list[str] = []
    run = cutover(clients, migration, mapping, out)
    run.options = CutoverOptions(**{**OPTIONS.__dict__, "drain_timeout": 1.0})
    # WHEN the fenced cutover runs, THEN it refuses: the fence is lifted, nothing flipped
    with pytest.raises(DrainTimeout, match="did not drain"):
        run.run()
    flag = ControlFlagStore(migration.store).read()
    assert (flag.active, flag.fenced) == ("source", False)
    assert not source_watermarks(clients, migration)


def test_lambda_consumer_with_parallel_batches_per_shard_is_refused_with_what_to_do(
    clients: AwsClients, migration: Migration, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN the mapping runs 2 batches per shard (the function reports it)
    monkeypatch.setenv(lambda_handler.PARALLELIZATION_VARIABLE, "2")
    mapping = deployed(clients, migration)
    out: list[str] = []
    # WHEN the cutover runs, THEN the lag gate refuses and says to set the factor to 1
    result = cutover(clients, migration, mapping, out).run()
    assert result.code == ExitCode.GATES_UNMET
    text = "\n".join(out)
    assert "2 batches per shard" in text and "ParallelizationFactor=1" in text


def test_lambda_consumer_without_a_watermark_writer_is_refused(
    clients: AwsClients, migration: Migration
) -> None:
    mapping = deployed(clients, migration)
    run = cutover(clients, migration, mapping, [])
    run.watermarks = None
    with pytest.raises(PreflightError, match="Lambda function"):
        run.run()
    assert ControlFlagStore(migration.store).read().active == "source"


def test_a_numeric_partition_key_gets_no_watermark_and_a_clear_refusal() -> None:
    source = TableInfo("t", ("id",), {"id": "N"}, 0, 0, None, None)
    with pytest.raises(PreflightError, match="is a number"):
        watermark_item(source, "tok")


def test_a_failed_batch_in_the_failure_queue_blocks_the_cutover(
    clients: AwsClients, migration: Migration
) -> None:
    mapping = deployed(clients, migration)
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=unique("lm-failures"))["QueueUrl"]
    run = cutover(clients, migration, mapping, [])
    run.failure_queue = FailureQueue(sqs, url)
    try:
        gate = {g.name: g for g in run.gates()}["no failed Lambda batches"]
        assert gate.met
        # GIVEN the mapping gave up on a batch (what Lambda sends to the OnFailure queue)
        sqs.send_message(QueueUrl=url, MessageBody='{"DDBStreamBatchInfo": {"batchSize": 3}}')
        gate = {g.name: g for g in run.gates()}["no failed Lambda batches"]
        assert not gate.met and "1 message(s)" in gate.why and "verify --repair" in gate.fix
    finally:
        sqs.delete_queue(QueueUrl=url)


def test_a_watermark_record_is_never_applied(clients: AwsClients, migration: Migration) -> None:
    # GIVEN a watermark written and deleted in the source (as the cutover does)
    mapping = deployed(clients, migration)
    item = watermark_item(migration.source, "t1")
    table = migration.settings.source_table
    clients.dynamodb.put_item(TableName=table, Item=item)
    clients.dynamodb.delete_item(TableName=table, Key={k: item[k] for k in ("pk", "sk")})
    put(clients, table, "after", 3)
    # WHEN the mapping delivers them, THEN only the real write reaches the destination
    mapping.drain()
    assert sorted(dest_items(clients, migration)) == ["after", "early"]
    assert migration.store.get("WATERMARK#t1") is not None
