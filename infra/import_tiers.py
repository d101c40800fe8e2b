"""The import contract of livemigrate's layers, as an import-linter contract type (``tiers``).

import-linter's own ``layers`` contract wants each layer to be a package of its own; here the
wiring (CLI modules, Lambda handlers, the demo) lives inside the engine packages it wires
(``backfill.cli``), so the tiers are given by names instead:

- **wiring**: modules matching a ``wiring`` pattern (``*`` matches within one dotted part,
  ``**`` any number of parts); they may import anything;
- **engines**: the packages named in ``engines``; an engine imports the core, itself, and only
  the engines that ``uses`` names for it (``"livemigrate.verify -> livemigrate.search"``);
- **core**: every other module of the root packages; it imports only the core.

Only direct imports are checked: a chain that breaks a rule has a direct import that does.
``lint-imports`` runs it (``make check``); the configuration is in ``pyproject.toml``.
"""

from __future__ import annotations

import re
from typing import Any

from importlinter import Contract, ContractCheck, fields, output

WIRING = "wiring"
CORE = "core"


class TiersContract(Contract):
    """Wiring above engines above the core; sideways engine imports only as listed."""

    wiring = fields.ListField(subfield=fields.StringField())
    engines = fields.ListField(subfield=fields.StringField())
    uses = fields.ListField(subfield=fields.StringField(), required=False, default=[])

    def check(self, graph: Any, verbose: bool) -> ContractCheck:
        allowed = self._allowed()
        broken: list[dict[str, Any]] = []
        for importer in sorted(graph.modules):
            source = self._tier(importer)
            if source == WIRING:
                continue
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                target = self._tier(imported)
                if target in (CORE, source) or (source, target) in allowed:
                    continue
                lines = graph.get_import_details(importer=importer, imported=imported)
                line = lines[0]["line_number"] if lines else 0
                broken.append(
                    {
                        "importer": importer,
                        "imported": imported,
                        "line": line,
                        "rule": f"{source} may not import {target}",
                    }
                )
        return ContractCheck(kept=not broken, metadata={"broken": broken})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for found in check.metadata["broken"]:
            output.print_error(
                f"{found['importer']}:{found['line']} imports {found['imported']} ({found['rule']})"
            )
        output.new_line()

    def _tier(self, module: str) -> str:
        """``wiring``, the engine package the module belongs to, or ``core``."""
        if any(_matches(module, pattern) for pattern in self.wiring):  # type: ignore[attr-defined]
            return WIRING
        for engine in self.engines:  # type: ignore[attr-defined]
            if module == engine or module.startswith(f"{engine}."):
                return str(engine)
        return CORE

    def _allowed(self) -> set[tuple[str, str]]:
        pairs = set()
        for rule in self.uses:  # type: ignore[attr-defined]
            user, _, used = (part.strip() for part in str(rule).partition("->"))
            pairs.add((user, used))
        return pairs


def _matches(module: str, pattern: str) -> bool:
    """``*`` matches within one dotted part (``*_cli``), ``**`` any number of whole parts."""
    regex = ""
    for part in pattern.split("."):
        if part == "**":
            regex += r"(?:[^.]+\.)*"
        else:
            regex += re.escape(part).replace(r"\*", "[^.]*") + r"\."
    return re.fullmatch(regex, f"{module}.") is not None
