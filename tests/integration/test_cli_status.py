"""`livemigrate status` and the command wiring, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from livemigrate.aws import AwsClients
from livemigrate.migration import open_migration
from tests.services import TEST_ENV, create_table, settings_for, unique


def livemigrate(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **TEST_ENV, **env}
    return subprocess.run(
        [sys.executable, "-m", "livemigrate.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def test_status_of_an_unknown_migration_says_nothing_is_recorded(moto_url: str) -> None:
    control = unique("control")
    result = livemigrate(
        "status",
        "--json",
        LIVEMIGRATE_MIGRATION_ID="never-ran",
        LIVEMIGRATE_SOURCE_TABLE="src",
        LIVEMIGRATE_DESTINATION_TABLE="dst",
        LIVEMIGRATE_CONTROL_TABLE=control,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["known"] is False
    assert "does not exist yet" in summary["note"]


def test_status_shows_a_recorded_migration(clients: AwsClients) -> None:
    src, dst = unique("src"), unique("dst")
    create_table(clients.dynamodb, src)
    create_table(clients.dynamodb, dst)
    settings = settings_for(src, dst)
    migration = open_migration(settings, clients)
    migration.dead_letters.add("backfill", "boom", {"pk": "x"}, {"pk": "x"})

    result = livemigrate(
        "status",
        LIVEMIGRATE_MIGRATION_ID=settings.migration_id,
        LIVEMIGRATE_SOURCE_TABLE=src,
        LIVEMIGRATE_DESTINATION_TABLE=dst,
        LIVEMIGRATE_CONTROL_TABLE=settings.control_table,
    )
    assert result.returncode == 0, result.stderr
    assert f"{src} -> {dst}" in result.stdout
    assert "dead letters: 1" in result.stdout


def test_invalid_configuration_is_one_clear_error_and_exit_2(moto_url: str) -> None:
    result = livemigrate("status", LIVEMIGRATE_CONFIG="/nonexistent/livemigrate.toml")
    assert result.returncode == 2
    assert "LIVEMIGRATE_SOURCE_TABLE" in result.stderr
    assert "Traceback" not in result.stderr
