"""The KCL engine's decisions, without the daemon: apply then checkpoint, retries and dead
letters, lost leases, shard ends, the daemon's properties, prerequisites and signals."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from livemigrate.clock import FakeClock
from livemigrate.errors import ConfigError, LivemigrateError, PreflightError
from livemigrate.exitcodes import ExitCode
from livemigrate.records import ApplyFailure, StreamRecord
from stream_consumer.kcl import daemon
from stream_consumer.kcl.processor import LeaseLostError, Retry, ShardWork


@dataclass
class Rec:
    """An amazon_kclpy Record as the processor reads it."""

    binary_data: bytes
    sequence_number: str


def parse(data: bytes, *, sequence_number: str, shard_id: str) -> StreamRecord:
    if data == b"garbage":
        raise ValueError("not JSON")
    if data == b"millis":
        raise LivemigrateError("MILLISECOND precision", "switch to MICROSECOND")
    pk = data.decode()
    keys = {"pk": {"S": pk}}
    return StreamRecord("INSERT", keys, keys, None, sequence_number.zfill(40), 0.0, shard_id)


class Sink:
    """Applies by script: ``fail[pk]`` is the ApplyFailure its record raises, ``times`` times."""

    def __init__(self, log: list[str], fail: dict[str, tuple[ApplyFailure, int]] | None = None):
        self.log = log
        self.fail = fail or {}

    def apply(self, records: Sequence[StreamRecord]) -> None:
        for index, record in enumerate(records):
            pk = record.keys["pk"]["S"]
            failure, times = self.fail.get(pk, (None, 0))
            if failure is not None and times > 0:
                self.fail[pk] = (failure, times - 1)
                raise ApplyFailure(
                    index, failure.reason, retryable=failure.retryable, transient=failure.transient
                )
            self.log.append(f"apply {pk}")


class Letters:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def add(self, origin: Any, reason: str, raw: Any, key: Any) -> str:
        self.log.append(f"dead {origin} {reason.split(':', maxsplit=1)[0]}")
        return "id"


def work(log: list[str], fail: dict[str, tuple[ApplyFailure, int]] | None = None) -> ShardWork:
    return ShardWork(Sink(log, fail), parse, Letters(log), "shard-1", Retry(3), FakeClock())


def records(*pks: str) -> list[Rec]:
    return [Rec(pk.encode(), str(n + 1)) for n, pk in enumerate(pks)]


def test_a_batch_is_applied_in_order_then_its_last_record_checkpointed() -> None:
    log: list[str] = []
    work(log).process(records("a", "b", "c"), lambda seq: log.append(f"checkpoint {seq}"))
    assert log == ["apply a", "apply b", "apply c", "checkpoint 3"]


def test_a_failing_record_is_retried_then_dead_lettered_and_the_checkpoint_passes_it() -> None:
    log: list[str] = []
    poison = (ApplyFailure(0, "bad item"), 99)
    work(log, {"b": poison}).process(records("a", "b", "c"), lambda s: log.append(f"cp {s}"))
    assert log == [
        "apply a",
        "dead stream bad item (after 3 attempt(s), shard shard-1)",
        "apply c",
        "cp 3",
    ]


def test_a_record_that_cannot_succeed_is_dead_lettered_at_once() -> None:
    log: list[str] = []
    invalid = (ApplyFailure(0, "transform failed", retryable=False), 1)
    w = work(log, {"a": invalid})
    w.process(records("a", "b"), lambda s: log.append(f"cp {s}"))
    assert log[0].startswith("dead stream transform failed (after 1 attempt(s)")
    assert log[1:] == ["apply b", "cp 2"]


def test_an_outage_is_ridden_out_without_a_dead_letter() -> None:
    log: list[str] = []
    outage = (ApplyFailure(0, "endpoint down", transient=True), 10)
    work(log, {"a": outage}).process(records("a"), lambda s: log.append(f"cp {s}"))
    assert log == ["apply a", "cp 1"]


def test_data_that_is_not_a_change_record_is_dead_lettered_and_the_rest_applied() -> None:
    log: list[str] = []
    batch = [Rec(b"a", "1"), Rec(b"garbage", "2"), Rec(b"c", "3")]
    work(log).process(batch, lambda s: log.append(f"cp {s}"))
    assert log == ["dead stream not a DynamoDB change record", "apply a", "apply c", "cp 3"]


def test_a_refused_stream_stops_before_anything_is_applied_or_checkpointed() -> None:
    log: list[str] = []
    with pytest.raises(LivemigrateError, match="MILLISECOND"):
        work(log).process([Rec(b"a", "1"), Rec(b"millis", "2")], log.append)
    assert log == []


def test_after_a_lost_lease_nothing_is_written_or_checkpointed() -> None:
    log: list[str] = []
    w = work(log)
    w.lease_lost()
    with pytest.raises(LeaseLostError):
        w.process(records("a"), log.append)
    assert log == []


def test_a_shard_end_is_checkpointed_so_children_start_and_a_lost_lease_stops_writes() -> None:
    from stream_consumer.kcl.adapter import Processor

    calls: list[tuple[Any, ...]] = []

    class Checkpointer:
        def checkpoint(self, *args: Any) -> None:
            calls.append(args)

    class Ended:
        checkpointer = Checkpointer()

    log: list[str] = []
    processor = Processor(work(log))
    processor.shard_ended(Ended())
    assert calls == [()]  # the end itself: no sequence number
    processor.lease_lost(object())
    assert processor.work.lost


def options(**extra: str) -> daemon.KclOptions:
    return daemon.KclOptions(
        application="livemigrate-kcl-m1",
        stream="orders",
        region="us-east-1",
        executable="/w/processor.sh",
        endpoint="http://127.0.0.1:4600",
        worker="w1",
        failover_seconds=5,
        extra=extra,
    )


def test_the_properties_name_the_stream_endpoints_and_fast_failover() -> None:
    values = daemon.properties(options())
    assert values["streamName"] == "orders"
    assert values["kinesisEndpoint"] == values["dynamoDBEndpoint"] == "http://127.0.0.1:4600"
    assert (values["metricsLevel"], values["retrievalMode"]) == ("NONE", "POLLING")
    assert values["failoverTimeMillis"] == "5000"
    assert values["initialPositionInStream"] == "TRIM_HORIZON"
    assert values["executableName"] == "/w/processor.sh"
    assert "streamArn = arn:aws:kinesis:us-east-1:1:stream/o\n" in daemon.render(
        daemon.properties(
            daemon.KclOptions("a", "arn:aws:kinesis:us-east-1:1:stream/o", "us-east-1", "x")
        )
    )
    assert daemon.properties(options(metricsLevel="SUMMARY"))["metricsLevel"] == "SUMMARY"


def test_kcl_properties_flags_are_key_value() -> None:
    assert daemon.parse_extra(["a=1", " b = x=y "]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        daemon.parse_extra(["novalue"])


@pytest.mark.parametrize(
    ("text", "major"),
    [('openjdk version "17.0.15" 2025-04-15', 17), ('java version "1.8.0_392"', 8), ("x", None)],
)
def test_the_java_version_is_read_from_java_version(text: str, major: int | None) -> None:
    assert daemon.java_major(text) == major


def test_without_the_extra_the_command_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "amazon_kclpy", None)  # import fails as if not installed
    with pytest.raises(PreflightError) as caught:
        daemon.kclpy_jars()
    assert "pip install 'livemigrate[kcl]'" in caught.value.fix
    assert "Java 17" in caught.value.fix


def test_the_installed_extra_brings_the_kcl_jars() -> None:
    jars = daemon.kclpy_jars()
    assert any("amazon-kinesis-client-multilang-3.1.3" in jar for jar in jars)


def test_the_kcl_engine_is_for_a_kinesis_change_source_only() -> None:
    class Streams:
        change_source = "dynamodb-streams"

    with pytest.raises(ConfigError, match="Kinesis change source"):
        daemon.require_kinesis(Streams())

    class Unnamed:
        change_source = "kinesis"
        kinesis_stream = None

    with pytest.raises(ConfigError, match="LIVEMIGRATE_KINESIS_STREAM"):
        daemon.require_kinesis(Unnamed())


TRAP = """
import signal, sys, time
def bye(*_):
    open(sys.argv[1], "w").write("got SIGTERM")
    sys.exit(143)
signal.signal(signal.SIGTERM, bye)
open(sys.argv[1] + ".ready", "w").write("")
time.sleep(60)
"""


def test_sigterm_is_passed_to_the_daemon_and_a_stop_by_signal_exits_0(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    running = daemon.Daemon([sys.executable, "-c", TRAP, str(seen)], {}, tmp_path / "fatal")
    ready, deadline = Path(f"{seen}.ready"), time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:  # waits for start-up only
        time.sleep(0.05)
    running.stop()  # what our SIGTERM / SIGINT handler does
    running.stop()  # a second signal sends nothing more
    assert running.wait() == ExitCode.OK
    assert seen.read_text() == "got SIGTERM"


def test_a_daemon_that_ends_by_itself_or_on_a_fatal_error_is_reported(tmp_path: Path) -> None:
    fatal = tmp_path / "fatal"
    ended = daemon.Daemon([sys.executable, "-c", "raise SystemExit(1)"], {}, fatal)
    assert ended.wait() == ExitCode.INCOMPLETE
    fatal.write_text("a Kinesis record carries MILLISECOND precision")
    refused = daemon.Daemon([sys.executable, "-c", "raise SystemExit(1)"], {}, fatal)
    assert refused.wait() == ExitCode.BAD_INPUT


def _kinesis_env(monkeypatch: pytest.MonkeyPatch, source: str = "kinesis") -> None:
    for name, value in {
        "LIVEMIGRATE_MIGRATION_ID": "m1",
        "LIVEMIGRATE_SOURCE_TABLE": "src",
        "LIVEMIGRATE_DESTINATION_TABLE": "dst",
        "LIVEMIGRATE_CHANGE_SOURCE": source,
        "LIVEMIGRATE_KINESIS_STREAM": "orders-changes",
    }.items():
        monkeypatch.setenv(name, value)


def test_consume_engine_kcl_without_the_extra_says_how_to_install_it_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from livemigrate.cli import main

    _kinesis_env(monkeypatch)
    monkeypatch.setitem(sys.modules, "amazon_kclpy", None)
    assert main(["consume", "--engine", "kcl"]) == ExitCode.BAD_INPUT
    assert int(ExitCode.BAD_INPUT) == 2
    err = capsys.readouterr().err
    assert "needs the Kinesis Client Library, which is not installed" in err
    assert "pip install 'livemigrate[kcl]'" in err
    assert "Traceback" not in err


def test_consume_engine_kcl_on_a_dynamodb_stream_is_refused_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from livemigrate.cli import main

    _kinesis_env(monkeypatch, source="dynamodb-streams")
    assert main(["consume", "--engine", "kcl"]) == ExitCode.BAD_INPUT
    assert "reads a Kinesis change source" in capsys.readouterr().err


def test_a_checkpoint_refused_because_the_lease_moved_stops_writes_and_throttling_is_retried() -> (
    None
):
    from amazon_kclpy.checkpoint_error import CheckpointError

    from stream_consumer.kcl.adapter import checkpoint

    class Refusing:
        def __init__(self, *errors: str) -> None:
            self.errors = list(errors)
            self.done: list[Any] = []

        def checkpoint(self, *args: Any) -> None:
            if self.errors:
                raise CheckpointError(self.errors.pop(0))
            self.done.append(args)

    log: list[str] = []
    w = work(log)
    throttled = Refusing("ThrottlingException")
    checkpoint(w, throttled, "7")
    assert throttled.done == [("7",)] and not w.lost
    checkpoint(w, Refusing("ShutdownException"), "8")
    assert w.lost  # another worker holds the shard: nothing more is written
    with pytest.raises(CheckpointError):
        checkpoint(w, Refusing("InvalidStateException"), "9")


def test_consume_engine_kcl_has_no_until_caught_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from livemigrate.cli import main

    _kinesis_env(monkeypatch)
    assert main(["consume", "--engine", "kcl", "--until-caught-up"]) == ExitCode.BAD_INPUT
    assert "--until-caught-up is not available with --engine kcl" in capsys.readouterr().err
