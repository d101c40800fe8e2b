"""The wiring layer (issue 19 item 2): argument parsing in CLI modules only, shared flags declared
once, one exit-code enum, help written for users."""

from __future__ import annotations

import argparse
import ast
import threading
from pathlib import Path
from typing import Any

import pytest

from livemigrate import cli
from livemigrate.clock import FakeClock
from livemigrate.cutover_cli import fence_options
from livemigrate.exitcodes import ExitCode
from stream_consumer.cli import ConsumerRun, add_stream_arguments

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("livemigrate", "backfill", "stream_consumer")
FENCE_FIELDS = (
    "fenced",
    "client_ttl",
    "consumer_margin",
    "checked_writes",
    "fence_seconds",
    "drain_timeout",
)


def _options(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Every option string of a parser -> its default."""
    return {
        flag: action.default
        for action in parser._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    }


def _command(name: str, *sub: str) -> argparse.ArgumentParser:
    """The parser of one command (or of one of its subcommands)."""
    parser = cli.build_parser(name)
    for word in (name, *sub):
        (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = group.choices[word]
    return parser


FENCE_ARGV = [
    "--fenced",
    "--client-ttl",
    "3",
    "--consumer-margin",
    "4",
    "--checked-writes",
    "--fence-seconds",
    "50",
    "--drain-timeout",
    "9",
    "--max-heartbeat-age",
    "7",
    "--flag-store",
    "ssm",
    "--json",
]


def test_cutover_and_rollback_take_the_same_fence_flags_into_the_same_options() -> None:
    """GIVEN the same fence flags to both commands THEN they parse into equal fence options
    (declared once: a flag added to one is the other's too)."""
    cut = _command("cutover").parse_args(FENCE_ARGV)
    back = _command("rollback").parse_args(FENCE_ARGV)
    cut_options, back_options = fence_options(cut), fence_options(back)
    given = (True, 3.0, 4.0, True, 50.0, 9.0)
    assert tuple(getattr(cut_options, f) for f in FENCE_FIELDS) == given
    assert tuple(getattr(back_options, f) for f in FENCE_FIELDS) == given
    assert (cut.max_heartbeat_age, cut.flag_store) == (back.max_heartbeat_age, back.flag_store)
    cutover, rollback = _options(_command("cutover")), _options(_command("rollback"))
    shared = [f for f in FENCE_ARGV if f.startswith("--")]
    assert {f: cutover[f] for f in shared} == {f: rollback[f] for f in shared}


def test_search_sync_takes_every_stream_option_of_the_consumer_commands() -> None:
    """The search sink runs the consumer engine: its `sync` has the engine's options with the
    consumer commands' defaults, declared in one place (stream_consumer.cli)."""
    engine = argparse.ArgumentParser()
    add_stream_arguments(engine)
    wanted = _options(engine)
    for parser in (_command("search", "sync"), _command("consume"), _command("reverse")):
        held = _options(parser)
        assert {f: held.get(f, "missing") for f in wanted} == wanted


@pytest.mark.parametrize(
    ("until_caught_up", "caught_up", "signalled", "code"),
    [
        (False, False, True, ExitCode.OK),  # a continuous consumer ends by a signal
        (True, True, False, ExitCode.OK),
        (True, False, True, ExitCode.INTERRUPTED),
        (True, False, False, ExitCode.INCOMPLETE),
    ],
)
def test_not_caught_up_and_interrupted_have_their_own_codes(
    until_caught_up: bool, caught_up: bool, signalled: bool, code: ExitCode
) -> None:
    """`consume`, `reverse` and `search sync` share this mapping: 4 for "stopped before it
    caught up", 130 only for a signal."""
    stop = threading.Event()
    if signalled:
        stop.set()
    run = ConsumerRun(None, "search", None, "search", FakeClock(), stop)  # type: ignore[arg-type]
    args = argparse.Namespace(until_caught_up=until_caught_up)
    assert run.exit_code(args, caught_up) == code


def _module_assignments(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def test_exit_codes_have_one_home() -> None:
    """No module keeps its own EXIT_* constant beside the ExitCode enum."""
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in _module_assignments(path)
        if name.startswith("EXIT_")
    ]
    assert found == []


def _imports_argparse(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "argparse":
            return True
    return False


def test_engine_modules_named_in_the_issue_no_longer_parse_arguments() -> None:
    """Argument parsing moved to CLI modules: the engines of cutover, rollback, verify and the
    reverse consumer do not import argparse."""
    engines = [
        "livemigrate/cutover.py",
        "livemigrate/cutover_rollback.py",
        "livemigrate/verify/__init__.py",
        "stream_consumer/reverse.py",
    ]
    assert [e for e in engines if _imports_argparse(ROOT / e)] == []


def test_every_command_is_wired_to_a_cli_module_with_a_description() -> None:
    """Each command's module parses its arguments and says what the command does (--help)."""
    for name, (module, _) in cli.ENGINE_COMMANDS.items():
        engine = cli._engine(module)
        assert callable(engine.add_arguments) and callable(engine.run), name
        parser = _command(name)
        assert parser.description and len(parser.description) > 20, name


def test_top_level_help_says_what_the_tool_does_and_lists_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "No-downtime DynamoDB data migrations" in out
    assert "parses arguments" not in out
    for name in ("status", *cli.ENGINE_COMMANDS):
        assert f"\n    {name} " in out, name
