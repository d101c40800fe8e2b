"""The TypeScript client's package files: what the issue promises about them stays true.

The committed lockfile names no registry host (``npm ci`` fetches by package name from whatever
registry the machine is configured with), and the SDK is the only runtime dependency.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def test_the_lockfile_names_no_registry() -> None:
    lock = json.loads((PACKAGE / "package-lock.json").read_text())
    assert "resolved" not in _keys(lock)
    assert "omit-lockfile-registry-resolved=true" in (PACKAGE / ".npmrc").read_text()


def test_the_sdk_is_the_only_runtime_dependency() -> None:
    package = json.loads((PACKAGE / "package.json").read_text())
    assert set(package["dependencies"]) == {"@aws-sdk/client-dynamodb"}
    assert package["type"] == "module" and package["types"].endswith(".d.ts")
