"""The import contract's rules (infra/import_tiers.py) over small graphs built here."""

from __future__ import annotations

import grimp
import pytest

from infra.import_tiers import TiersContract, _matches

OPTIONS = {
    "wiring": ["**.cli", "app.demo"],
    "engines": ["app.search", "app.verify", "copy"],
    "uses": ["app.verify -> app.search"],
}


def contract() -> TiersContract:
    return TiersContract("tiers", {}, OPTIONS)


def broken(*imports: tuple[str, str]) -> list[str]:
    graph = grimp.ImportGraph()
    for importer, imported in imports:
        graph.add_import(importer=importer, imported=imported, line_number=3, line_contents="")
    check = contract().check(graph, verbose=False)
    assert check.kept == (not check.metadata["broken"])
    return [f"{b['importer']} -> {b['imported']}: {b['rule']}" for b in check.metadata["broken"]]


@pytest.mark.parametrize(
    ("module", "pattern", "matched"),
    [
        ("copy.cli", "**.cli", True),
        ("copy.export.cli", "**.cli", True),
        ("cli", "**.cli", True),
        ("app.client", "**.cli", False),
        ("app.demo", "app.demo", True),
        ("app.demo_data", "app.demo", False),
        ("copy.kcl.daemon", "copy.*.daemon", True),
        ("copy.daemon", "copy.*.daemon", False),
        ("app.cutover_cli", "**.*_cli", True),
        ("app.cutover", "**.*_cli", False),
        ("app.cli.x", "**.cli", False),
    ],
)
def test_patterns_match_whole_dotted_parts(module: str, pattern: str, matched: bool) -> None:
    assert _matches(module, pattern) is matched


def test_downward_and_listed_sideways_imports_keep_the_contract() -> None:
    assert (
        broken(
            ("copy.cli", "app.search.sink"),  # wiring imports anything
            ("app.demo", "copy.worker"),
            ("copy.worker", "app.items"),  # an engine imports the core
            ("copy.worker", "copy.plan"),  # and itself
            ("app.verify.search", "app.search.backend"),  # a listed use
            ("app.items", "app.values"),  # the core imports the core
        )
        == []
    )


def test_upward_and_unlisted_sideways_imports_break_it_and_are_named() -> None:
    assert broken(
        ("app.items", "copy.cli"),
        ("app.failures", "app.search.backend"),
        ("copy.worker", "app.verify.digest"),
        ("app.search.sink", "app.verify"),
        ("copy.worker", "copy.cli"),
    ) == [
        "app.failures -> app.search.backend: core may not import app.search",
        "app.items -> copy.cli: core may not import wiring",
        "app.search.sink -> app.verify: app.search may not import app.verify",
        "copy.worker -> app.verify.digest: copy may not import app.verify",
        "copy.worker -> copy.cli: copy may not import wiring",
    ]
