"""Configuration: env + TOML precedence, and one clear message per bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

from livemigrate.config import load_settings
from livemigrate.errors import ConfigError


def test_settings_come_from_toml_and_env_overrides_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "livemigrate.toml"
    cfg.write_text(
        'migration_id = "orders-v2"\nsource_table = "orders"\n'
        'destination_table = "orders-v2"\nwrite_rate = 50\n'
    )
    monkeypatch.setenv("LIVEMIGRATE_CONFIG", str(cfg))
    monkeypatch.setenv("LIVEMIGRATE_WRITE_RATE", "75")

    settings = load_settings()

    assert settings.migration_id == "orders-v2"
    assert settings.source_table == "orders"
    assert settings.write_rate == 75
    assert settings.control_table == "livemigrate-control"
    assert settings.transform == "livemigrate.examples.hot_outbox:transform"


def test_missing_fields_are_named_with_their_variables_and_a_fix() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert "LIVEMIGRATE_SOURCE_TABLE" in text
    assert "LIVEMIGRATE_DESTINATION_TABLE" in text
    assert "LIVEMIGRATE_MIGRATION_ID" in text
    assert "fix:" in text


def test_malformed_transform_spec_is_rejected_with_the_expected_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIVEMIGRATE_MIGRATION_ID", "m1")
    monkeypatch.setenv("LIVEMIGRATE_SOURCE_TABLE", "src")
    monkeypatch.setenv("LIVEMIGRATE_DESTINATION_TABLE", "dst")
    monkeypatch.setenv("LIVEMIGRATE_TRANSFORM", "not a function")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "LIVEMIGRATE_TRANSFORM" in str(info.value)
    assert "package.module:function" in str(info.value)


def test_unknown_setting_in_toml_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "livemigrate.toml"
    cfg.write_text(
        'migration_id = "m"\nsource_table = "src"\ndestination_table = "dst"\nsurce = 1\n'
    )
    monkeypatch.setenv("LIVEMIGRATE_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=r"surce .* is not a known setting"):
        load_settings()
