"""Settings change_source / kinesis_stream (issue 14 item 1)."""

from __future__ import annotations

import pytest

from livemigrate.config import load_settings
from livemigrate.errors import ConfigError

BASE = {"migration_id": "m", "source_table": "app", "destination_table": "app-v2"}


def test_the_default_source_is_the_tables_dynamodb_stream() -> None:
    assert load_settings(**BASE).change_source == "dynamodb-streams"


def test_kinesis_is_read_from_the_environment_by_name_or_arn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIVEMIGRATE_CHANGE_SOURCE", "kinesis")
    arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/app-changes"
    for stream in ("app-changes", arn):
        monkeypatch.setenv("LIVEMIGRATE_KINESIS_STREAM", stream)
        settings = load_settings(**BASE)
        assert (settings.change_source, settings.kinesis_stream) == ("kinesis", stream)


def test_kinesis_without_a_stream_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**BASE, change_source="kinesis")
    assert "LIVEMIGRATE_KINESIS_STREAM" in caught.value.problem
    assert "Kinesis streaming destination" in caught.value.fix


def test_an_unknown_source_kind_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**BASE, change_source="kafka")
    assert "LIVEMIGRATE_CHANGE_SOURCE" in caught.value.problem
