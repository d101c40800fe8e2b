"""The layout of the suite itself: shared helpers live in support modules, and every test under
tests/integration carries the ``integration`` marker.

A test module that imports another one runs that module's fixtures and module-level code in
every importer, and ties the importer to an unrelated test file; shared helpers belong in
``tests/support/`` (or the helper modules beside it in ``tests/``) and fixtures in
``tests/conftest.py``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
# A transform named by its module path (``tests.integration.test_x:name``) is an import too.
TEST_MODULE_PATH = re.compile(r"\btests\.(?:[a-z_]+\.)*test_[a-z0-9_]+(?=:)")


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def is_test_module(name: str) -> bool:
    return name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_")


def imported_modules(path: Path, me: str) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``path``, at any depth; relative ones resolved."""
    package = me.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, module
            yield from ((node.lineno, f"{module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield from ((node.lineno, m) for m in TEST_MODULE_PATH.findall(node.value))


def imports_of_test_modules(tests: Path) -> list[str]:
    """Every place where a file under ``tests`` imports a test module other than itself."""
    root = tests.parent
    found = []
    for path in sorted(tests.rglob("*.py")):
        me = module_name(path, root)
        for line, module in imported_modules(path, me):
            if is_test_module(module) and module != me:
                found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return found


def test_no_test_module_imports_another_test_module() -> None:
    assert imports_of_test_modules(TESTS) == []


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "tests" / "unit" / "test_sample.py"
    sample.parent.mkdir(parents=True)
    forms = [
        "from tests.integration.test_search_sink import Writes",
        "import tests.unit.test_values",
        "from tests.integration import test_search_sink",
        "from . import test_values",
        "from .test_values import helper",
        # (split in two, or this very line would be such a reference)
        'TRANSFORM = "tests.integration.' + 'test_dead_letters:always_raises"',
        "def f():\n    from tests.unit.test_values import x",
    ]
    for form in forms:
        sample.write_text(form + "\n")
        assert len(imports_of_test_modules(tmp_path / "tests")) == 1, form
    allowed = [
        "from tests.support.backfill import fill",
        "from tests.services import unique",
        'TRANSFORM = "tests.unit.' + 'test_sample:mine"',  # itself: allowed
    ]
    for fine in allowed:
        sample.write_text(fine + "\n")
        assert imports_of_test_modules(tmp_path / "tests") == [], fine


def helper_only_test_modules(tests: Path) -> list[str]:
    """Test modules that define no test: helpers named like tests (move them to support/)."""
    found = []
    for path in sorted(tests.rglob("test_*.py")):
        names = [
            node.name
            for node in ast.parse(path.read_text(), str(path)).body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
        if not any(name.startswith(("test_", "Test")) for name in names):
            found.append(str(path.relative_to(tests.parent)))
    return found


def test_every_test_module_holds_tests(tmp_path: Path) -> None:
    assert helper_only_test_modules(TESTS) == []
    helpers = tmp_path / "tests" / "integration" / "test_helpers.py"
    helpers.parent.mkdir(parents=True)
    helpers.write_text("def fill() -> None: ...\n")
    assert helper_only_test_modules(tmp_path / "tests") == ["tests/integration/test_helpers.py"]


def collected(*args: str) -> list[str]:
    """The test ids ``pytest --collect-only`` selects with ``args``."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 5), done.stdout[-3000:] + done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_every_integration_test_carries_the_integration_marker() -> None:
    """One unmarked integration module and one unit module: ``-m integration`` selects exactly
    the former (the marker is added before pytest deselects by marker)."""
    unmarked = "tests/integration/test_smoke_services.py"
    assert "pytestmark" not in (ROOT / unmarked).read_text()
    selected = collected("-m", "integration", unmarked, "tests/unit/test_status_phase.py")
    assert selected and all(test.startswith(unmarked + "::") for test in selected)
