"""The backfill rides out an endpoint outage against moto's server (issue 10, item 11).

The outage is scripted inside botocore's send path of the backfill's own client: from the
tenth destination put on, every request fails as if the endpoint were black-holed
(connection refused, connection closed) until the scripted length has passed on the run's
FakeClock. botocore's own retries are off for this client, so every failure reaches the
backfill at once and the back-off is the engine's (on the FakeClock: no real waiting).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

from backfill import plan
from backfill.worker import Engine, Options
from livemigrate.aws import AwsClients
from livemigrate.clock import FakeClock
from livemigrate.errors import ServiceUnreachable
from livemigrate.keys import PLAN
from livemigrate.migration import open_migration
from tests.services import MOTO_URL, TEST_ENV, aws_clients
from tests.support.backfill import destination, expected, outbox_items, tables

pytestmark = pytest.mark.integration


def clients_without_retries() -> AwsClients:
    session = boto3.session.Session(
        aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name=TEST_ENV["AWS_REGION"],
    )
    config = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    return AwsClients(
        dynamodb=session.client("dynamodb", endpoint_url=MOTO_URL, config=config),
        streams=session.client("dynamodbstreams", endpoint_url=MOTO_URL, config=config),
        ssm=session.client("ssm", endpoint_url=MOTO_URL, config=config),
    )


class Blackhole:
    """Fails every request from the ``after``-th PutItem on, for ``seconds`` of the clock."""

    def __init__(self, clock: FakeClock, after: int, seconds: float) -> None:
        self.clock = clock
        self.after = after
        self.seconds = seconds
        self.puts = 0
        self.failed = 0
        self.began: float | None = None
        self._lock = threading.Lock()

    def __call__(self, event_name: str, **_: Any) -> None:
        with self._lock:
            if event_name.endswith(".PutItem"):
                self.puts += 1
                if self.puts == self.after and self.began is None:
                    self.began = self.clock.monotonic()
            down = self.began is not None and self.clock.monotonic() < self.began + self.seconds
            if down:
                self.failed += 1
        if down and self.failed % 2:
            raise EndpointConnectionError(endpoint_url=MOTO_URL)
        if down:
            raise ConnectionClosedError(endpoint_url=MOTO_URL)


def test_twenty_second_outage_mid_run_is_ridden_out(caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a backfill whose endpoint goes dark for 20 s after its tenth put
    items = outbox_items(60)
    settings = tables(aws_clients(), items)
    clients = clients_without_retries()
    migration = open_migration(settings, clients)
    clock = FakeClock()
    hole = Blackhole(clock, after=10, seconds=20.0)
    clients.dynamodb.meta.events.register_first("before-send.dynamodb", hole)
    options = Options(workers=1, write_threads=2, total_segments=2, page_size=10)
    # WHEN it runs
    with caplog.at_level(logging.WARNING):
        complete = Engine(migration, options, clock=clock).run()
    # THEN it backed off through the outage, carried on and copied everything exactly
    assert hole.failed > 3
    assert complete is True
    check = aws_clients()
    assert destination(check.dynamodb, settings.destination_table) == expected(
        check.dynamodb, settings.source_table
    )
    # ... said so in the log, and left the outage's times on PLAN for status
    text = caplog.text
    assert "degraded" in text and "answers again" in text
    held = migration.store.get(PLAN) or {}
    assert held["recovered_at"] - held["degraded_at"] >= 20.0


def test_outage_longer_than_the_setting_ends_the_run_with_position_saved() -> None:
    # GIVEN an endpoint that stays dark for longer than outage_seconds
    items = outbox_items(60)
    settings = tables(aws_clients(), items)
    clients = clients_without_retries()
    migration = open_migration(settings, clients)
    clock = FakeClock()
    hole = Blackhole(clock, after=25, seconds=1000.0)
    clients.dynamodb.meta.events.register_first("before-send.dynamodb", hole)
    options = Options(
        workers=1, write_threads=1, total_segments=1, page_size=10, outage_seconds=60.0
    )
    # WHEN it runs, THEN it ends with ServiceUnreachable after about a minute of outage
    with pytest.raises(ServiceUnreachable):
        Engine(migration, options, clock=clock).run()
    assert hole.began is not None
    assert 60.0 <= clock.monotonic() - hole.began <= 60.0 + 10.0
    # ... with the pages written before the outage checkpointed
    clock.advance(1000.0)  # the endpoint answers again
    seg = migration.store.get(plan.seg_sk(0)) or {}
    assert int(seg["items_written"]) == 20
    # ... and a run after the outage continues from there
    assert Engine(migration, options, clock=clock).run() is True
    check = aws_clients()
    assert destination(check.dynamodb, settings.destination_table) == expected(
        check.dynamodb, settings.source_table
    )
