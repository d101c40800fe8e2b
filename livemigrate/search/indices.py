"""Index names and the index configuration (settings + mappings) of a migration.

Names: the live index is ``<alias>-<migration id>``, a resync builds ``<alias>-<migration
id>-r<epoch>``; both lowercase (Elasticsearch index names must be). The application reads the
alias; cutover points it at the migration's index with one atomic ``_aliases`` request.

Configuration: a JSON file ``{"settings": {...}, "mappings": {...}}`` given with
``livemigrate search --index-config FILE``; both keys are optional. The sink adds the mapping
of its own fields (``_lm_seq`` keyword, ``_lm_tomb`` boolean).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livemigrate.errors import ConfigError


def live_index(alias: str, migration_id: str) -> str:
    return f"{alias}-{migration_id}".lower()


def resync_index(alias: str, migration_id: str, epoch: int) -> str:
    return f"{live_index(alias, migration_id)}-r{epoch}"


def owned_by(name: str, alias: str, migration_id: str) -> bool:
    """Whether ``name`` is this migration's live index or one of its resync indices."""
    base = live_index(alias, migration_id)
    return name == base or (name.startswith(base + "-r") and name[len(base) + 2 :].isdigit())


@dataclass(frozen=True)
class IndexConfig:
    settings: dict[str, Any] = field(default_factory=dict)
    mappings: dict[str, Any] = field(default_factory=dict)


def load_index_config(path: str | None) -> IndexConfig:
    """Read ``--index-config FILE``; an empty config when no file is given."""
    if not path:
        return IndexConfig()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"search index config {path!r} cannot be read: {exc}",
            'give a JSON file like {"settings": {"number_of_shards": 1}, "mappings": '
            '{"properties": {"title": {"type": "text"}}}}',
        ) from exc
    unknown = set(data) - {"settings", "mappings"} if isinstance(data, dict) else {"<not object>"}
    if unknown:
        raise ConfigError(
            f"search index config {path!r} has unknown keys {sorted(unknown)}",
            'use only "settings" and "mappings"',
        )
    return IndexConfig(dict(data.get("settings", {})), dict(data.get("mappings", {})))
