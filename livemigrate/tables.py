"""Facts about DynamoDB tables, read before any write (preflight, rule: errors before writes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, EndpointConnectionError

from livemigrate.errors import PreflightError, ServiceUnreachable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


@dataclass(frozen=True)
class TableInfo:
    name: str
    key_names: tuple[str, ...]  # hash key first, then range key if any
    key_types: dict[str, str]  # "S" | "N" | "B"
    item_count: int
    size_bytes: int
    stream_arn: str | None
    stream_view_type: str | None

    @property
    def hash_key(self) -> str:
        return self.key_names[0]

    @property
    def range_key(self) -> str | None:
        return self.key_names[1] if len(self.key_names) > 1 else None


def describe(client: DynamoDBClient, name: str, role: str) -> TableInfo:
    """Describe a table; a PreflightError naming its role ("source", ...) if it is missing."""
    try:
        table = client.describe_table(TableName=name)["Table"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise PreflightError(
                f"{role} table {name!r} does not exist at {client.meta.endpoint_url}",
                _missing_fix(role),
            ) from exc
        raise
    except EndpointConnectionError as exc:
        raise ServiceUnreachable(
            f"DynamoDB endpoint {client.meta.endpoint_url} is unreachable: {exc}",
            "check that the endpoint is up and reachable (AWS_ENDPOINT_URL / "
            "LIVEMIGRATE_ENDPOINT_URL, region, network), then run the command again",
        ) from exc
    return _info(table)


def _missing_fix(role: str) -> str:
    if role == "destination":
        return (
            "create it (`livemigrate backfill --create-destination` creates it with the "
            "source's key schema and a stream) or set LIVEMIGRATE_DESTINATION_TABLE"
        )
    return f"check LIVEMIGRATE_{role.upper()}_TABLE, the region and the endpoint"


def _info(table: Any) -> TableInfo:
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    schema = sorted(table["KeySchema"], key=lambda k: 0 if k["KeyType"] == "HASH" else 1)
    names = tuple(k["AttributeName"] for k in schema)
    spec = table.get("StreamSpecification") or {}
    enabled = bool(spec.get("StreamEnabled"))
    return TableInfo(
        name=table["TableName"],
        key_names=names,
        key_types={n: types[n] for n in names},
        item_count=int(table.get("ItemCount", 0)),
        size_bytes=int(table.get("TableSizeBytes", 0)),
        stream_arn=table.get("LatestStreamArn") if enabled else None,
        stream_view_type=spec.get("StreamViewType") if enabled else None,
    )


def require_stream(info: TableInfo) -> str:
    """The stream ARN of a table with a NEW_AND_OLD_IMAGES stream, else a PreflightError."""
    if info.stream_arn is None:
        raise PreflightError(
            f"table {info.name!r} has no DynamoDB stream enabled",
            f"aws dynamodb update-table --table-name {info.name} --stream-specification "
            "StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES",
        )
    if info.stream_view_type != "NEW_AND_OLD_IMAGES":
        raise PreflightError(
            f"table {info.name!r} streams {info.stream_view_type}, but livemigrate needs "
            "NEW_AND_OLD_IMAGES (old images find destination keys a change removed; new "
            "images carry the data)",
            "disable the stream and enable it again with StreamViewType=NEW_AND_OLD_IMAGES",
        )
    return info.stream_arn


KeySpec = tuple[tuple[str, str], ...]
PK_SK: KeySpec = (("pk", "S"), ("sk", "S"))


def create_table(
    client: DynamoDBClient,
    name: str,
    keys: KeySpec = PK_SK,
    *,
    stream: str | None = "NEW_AND_OLD_IMAGES",
    wait: bool = True,
) -> None:
    """Create an on-demand table with ``keys`` ((name, "S"|"N"|"B"), hash first) and a stream.

    ``stream`` is a StreamViewType, or None for no stream.
    """
    spec: dict[str, Any] = {"StreamEnabled": False}
    if stream:
        spec = {"StreamEnabled": True, "StreamViewType": stream}
    client.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": n, "KeyType": "HASH" if i == 0 else "RANGE"}
            for i, (n, _) in enumerate(keys)
        ],
        AttributeDefinitions=[
            {"AttributeName": n, "AttributeType": t}  # type: ignore[typeddict-item]
            for n, t in keys
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification=spec,  # type: ignore[arg-type]
    )
    if wait:
        client.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )


def create_like(
    client: DynamoDBClient, source: TableInfo, name: str, *, with_stream: bool = True
) -> TableInfo:
    """Create ``name`` with the source's key schema (on-demand), optionally with a stream."""
    keys = tuple((n, source.key_types[n]) for n in source.key_names)
    create_table(client, name, keys, stream="NEW_AND_OLD_IMAGES" if with_stream else None)
    return describe(client, name, "destination")
