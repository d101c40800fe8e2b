"""The hot-outbox fix: the migration that motivated livemigrate.

Source items live under partition keys such as ``section-outbox|docket``; one such key held far
more items than any other and made a scan segment time out again and again. The new schema
shards each outbox by month: ``section-outbox|<section>|YYYY-MM`` (from the item's creation
date). Every other item passes through with a schema change: ``createdAt`` (epoch seconds) is
renamed to ``created_at`` (ISO 8601) and ``schema_version`` is set to 2.

``inverse`` maps a destination item back to its source item, for the reverse consumer that keeps
the source current after the cutover (``livemigrate reverse``, so a rollback loses nothing):
``inverse(transform(item))`` gives ``item`` back.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

OUTBOX_PREFIX = "section-outbox|"


class SourceItem(BaseModel):
    """What the application stored before the migration."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    pk: str = Field(min_length=1)
    sk: str = Field(min_length=1)
    createdAt: Decimal  # noqa: N815 - the source schema's own attribute name


class DestinationItem(BaseModel):
    """What the application stores after the migration."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    pk: str
    sk: str
    created_at: str
    schema_version: int = 2


def destination_pk(pk: str, created: datetime) -> str:
    """Month-sharded partition key for outbox items; other keys are unchanged."""
    if pk.startswith(OUTBOX_PREFIX) and pk.count("|") == 1:
        return f"{pk}|{created:%Y-%m}"
    return pk


def transform(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One source item → one destination item (see the module docstring)."""
    source = SourceItem.model_validate(item)
    created = datetime.fromtimestamp(float(source.createdAt), tz=UTC)
    extra = {k: v for k, v in item.items() if k not in ("pk", "sk", "createdAt")}
    out = DestinationItem(
        pk=destination_pk(source.pk, created),
        sk=source.sk,
        created_at=created.isoformat(),
        **extra,
    )
    yield out.model_dump()


def source_pk(pk: str, created: datetime) -> str:
    """The source partition key of a destination key: the month shard is dropped."""
    base, _, month = pk.rpartition("|")
    if base.startswith(OUTBOX_PREFIX) and base.count("|") == 1 and month == f"{created:%Y-%m}":
        return base
    return pk


def inverse(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One destination item → the source item it came from (``transform`` undone)."""
    dest = DestinationItem.model_validate(item)
    created = datetime.fromisoformat(dest.created_at).astimezone(UTC)
    seconds = Decimal(str(created.timestamp()))
    extra = {k: v for k, v in item.items() if k not in ("pk", "sk", "created_at", "schema_version")}
    yield {
        "pk": source_pk(dest.pk, created),
        "sk": dest.sk,
        "createdAt": Decimal(int(seconds)) if seconds == int(seconds) else seconds,
        **extra,
    }
