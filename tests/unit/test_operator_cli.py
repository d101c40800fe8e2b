"""The command line as an operator meets it: exit-code table, validation, warnings, JSON form."""

from __future__ import annotations

import logging
import re
from decimal import Decimal
from pathlib import Path

import pytest

from backfill.cli import options_from
from livemigrate import cli, tables
from livemigrate.config import load_settings, unknown_variables
from livemigrate.exitcodes import ExitCode, table_markdown
from livemigrate.gates import Policy, Snapshot, search_gate
from livemigrate.status import to_json

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_shows_exactly_the_exit_code_table_the_code_uses() -> None:
    assert table_markdown() in (ROOT / "README.md").read_text()


def test_every_documented_outcome_has_its_own_code() -> None:
    codes = [int(code) for code in ExitCode]
    assert len(codes) == len(set(codes))
    names = {code.name for code in ExitCode}
    assert {"GATES_UNMET", "DIFFERENCES", "INTERNAL", "INCOMPLETE", "INTERRUPTED"} <= names
    assert {"NOT_MIGRATED", "UNREACHABLE", "BAD_INPUT", "OK"} <= names


@pytest.mark.parametrize(
    "argv",
    [
        ["backfill", "--workers", "0"],
        ["backfill", "--workers", "-2"],
        ["backfill", "--budget-seconds", "0"],
        ["backfill", "--budget-seconds", "-5"],
        ["backfill", "--budget-seconds", "nan"],
        ["backfill", "--page-size", "0"],
        ["backfill", "--processes", "0"],
        ["consume", "--batch-size", "0"],
        ["consume", "--lease-seconds", "0"],
        ["verify", "--segments", "0"],
        ["verify", "--buckets", "0"],
        ["verify", "--examples", "-1"],
        ["cutover", "--fence-seconds", "-1"],
        ["cutover", "--drain-timeout", "0"],
        ["cutover", "--when-gates-pass", "--check-every", "-1"],
        ["rollback", "--window-seconds", "-5"],
        ["throttle", "--write-rate", "-1"],
        ["search", "sync", "--bulk-docs", "0"],
        ["status", "--watch", "0"],
    ],
    ids=" ".join,
)
def test_zero_or_negative_numbers_are_refused_instead_of_defaulted(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "must be" in err or "not a finite number" in err, err


def test_backfill_flags_given_win_over_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEMIGRATE_MIGRATION_ID", "m")
    monkeypatch.setenv("LIVEMIGRATE_SOURCE_TABLE", "src")
    monkeypatch.setenv("LIVEMIGRATE_DESTINATION_TABLE", "dst")
    args = cli.build_parser("backfill").parse_args(
        ["backfill", "--workers", "3", "--budget-seconds", "12"]
    )
    options = options_from(args, load_settings())
    assert (options.workers, options.budget_seconds) == (3, 12.0)


def test_global_options_are_accepted_after_the_command() -> None:
    args = cli.build_parser("cutover").parse_args(
        ["cutover", "--dry-run", "--migration-id", "X", "--log-level", "debug"]
    )
    assert (args.migration_id, args.log_level) == ("X", "DEBUG")
    before = cli.build_parser().parse_args(["--migration-id", "Y", "status"])
    assert (before.migration_id, before.log_level) == ("Y", "INFO")


def test_a_misspelt_variable_is_warned_about_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LIVEMIGRATE_MIGRATION_ID", "m")
    monkeypatch.setenv("LIVEMIGRATE_SOURCE_TABLE", "src")
    monkeypatch.setenv("LIVEMIGRATE_DESTINATION_TABLE", "dst")
    monkeypatch.setenv("LIVEMIGRATE_WRITE_RAT", "50")
    with caplog.at_level(logging.WARNING, "livemigrate.config"):
        load_settings()
    assert "LIVEMIGRATE_WRITE_RAT is not a livemigrate setting" in caplog.text
    assert "did you mean LIVEMIGRATE_WRITE_RATE?" in caplog.text
    assert unknown_variables({"LIVEMIGRATE_WORKERS": "2", "LIVEMIGRATE_CONFIG": "x"}) == []


def test_a_config_variable_naming_a_missing_file_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("LIVEMIGRATE_CONFIG", str(missing))
    monkeypatch.setenv("LIVEMIGRATE_MIGRATION_ID", "m")
    monkeypatch.setenv("LIVEMIGRATE_SOURCE_TABLE", "src")
    monkeypatch.setenv("LIVEMIGRATE_DESTINATION_TABLE", "dst")
    with caplog.at_level(logging.WARNING, "livemigrate.config"):
        load_settings()
    assert f"LIVEMIGRATE_CONFIG names {missing}, which does not exist" in caplog.text


def test_json_form_has_numbers_as_numbers_and_times_as_iso_8601() -> None:
    summary = {
        "backfill": {"total_segments": Decimal("8"), "percent": Decimal("12.5")},
        "flag": {"epoch": Decimal("3"), "flipped_at": Decimal("1764620000.25"), "fenced_at": 0},
        "lag_seconds": float("inf"),
    }
    assert to_json(summary) == {
        "backfill": {"total_segments": 8, "percent": 12.5},
        "flag": {"epoch": 3, "flipped_at": "2025-12-01T20:13:20.250+00:00", "fenced_at": None},
        "lag_seconds": None,
    }


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("livemigrate ")


def test_a_bug_is_one_line_plus_a_file_with_the_traceback_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object) -> int:
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "run_status", broken)
    assert cli.main(["status"]) == ExitCode.INTERNAL
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "Traceback" not in err
    crash = Path(err.split("the traceback is in ", 1)[1].split()[0])
    assert "Traceback" in crash.read_text() and "surprise" in crash.read_text()
    crash.unlink()


def test_hints_name_commands_that_exist() -> None:
    """No `livemigrate init` (there is none) and no bare `livemigrate search` (it needs a
    subcommand) in what the operator is told to run."""
    fix = tables._missing_fix("destination")
    assert "livemigrate init" not in fix and "livemigrate backfill --create-destination" in fix
    gate = search_gate(Snapshot(now=0.0, search_index_ready=False, search_index="i"), Policy())
    assert "`livemigrate search sync`" in gate.fix
    commands = set(cli.ENGINE_COMMANDS) | {"status"}
    for hint in (fix, gate.fix):
        for named in re.findall(r"`livemigrate (\w[\w-]*)", hint):
            assert named in commands, (named, hint)
