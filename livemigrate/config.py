"""Configuration: one pydantic-settings model read from ``livemigrate.toml`` and ``LIVEMIGRATE_*``.

Precedence (highest first): explicit overrides, environment variables, the TOML file
(``LIVEMIGRATE_CONFIG`` or ``./livemigrate.toml``), defaults. The AWS endpoint, region and
credentials follow boto3's own standard variables (``AWS_ENDPOINT_URL``, ``AWS_REGION`` ...);
``endpoint_url`` and ``region`` here only override them.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from livemigrate.errors import ConfigError

log = logging.getLogger("livemigrate.config")

# LIVEMIGRATE_* variables that are not settings but are read elsewhere (tests, make, services).
_OTHER_VARIABLES = frozenset(
    {
        "LIVEMIGRATE_CONFIG",
        "LIVEMIGRATE_MOTO_PORT",
        "LIVEMIGRATE_ES_PORT",
        "LIVEMIGRATE_ES_VERSION",
        "LIVEMIGRATE_ES_HEAP",
        "LIVEMIGRATE_OS_PORT",
        "LIVEMIGRATE_OS_VERSION",
        "LIVEMIGRATE_OS_HEAP",
        "LIVEMIGRATE_CACHE_DIR",
        "LIVEMIGRATE_SERVICES_DIR",
        "LIVEMIGRATE_TEST_OPENSEARCH_URL",
        "LIVEMIGRATE_TEST_LOG_LEVEL",
        "LIVEMIGRATE_PARALLELIZATION_FACTOR",  # the Lambda consumer's mapping (issue 15)
    }
)

_NAME = r"^[A-Za-z0-9_.-]{3,255}$"

# The metrics endpoint answers on this host only unless the operator opens it (issue 19).
DEFAULT_METRICS_ADDRESS = "127.0.0.1"

# What to tell the user per field when it is wrong; the field's env variable is added.
_FIXES: dict[str, str] = {
    "migration_id": "use 1-64 letters, digits, '-', '_' or '.', e.g. 'orders-v2'",
    "source_table": "name the existing DynamoDB table to migrate from",
    "destination_table": "name the DynamoDB table to migrate into",
    "transform": "give 'package.module:function', e.g. 'livemigrate.examples.hot_outbox:transform'",
    "control_table": "a DynamoDB table name (3-255 of letters, digits, '-', '_', '.')",
    "inverse_transform": (
        "give 'package.module:function' mapping a destination item back to source items, "
        "e.g. 'livemigrate.examples.hot_outbox:inverse'"
    ),
    "failure_queue_url": "the OnFailure queue's URL (infra/aws stack output FailureQueueUrl)",
    "search_url": "an http(s) URL of the search node, e.g. http://127.0.0.1:9299",
    "search_engine": "elasticsearch or opensearch (the kind of node search_url names)",
    "search_auth": "none, or sigv4 (Amazon OpenSearch Service; needs search_engine opensearch)",
    "search_service": "es (Amazon OpenSearch Service) or aoss (OpenSearch Serverless)",
    "search_alias": "an index alias name in lowercase, e.g. 'orders'",
    "search_document_hook": "give 'package.module:function' mapping an item to its document",
    "metrics_address": (
        "an IP address of this host to serve metrics on: 127.0.0.1 (this host only, the "
        "default), 0.0.0.0 (every IPv4 interface) or :: (every interface)"
    ),
    "retry_mode": (
        "standard (botocore's retries with back-off) or adaptive (the same, and a client-side "
        "rate limit that slows down on throttling)"
    ),
    "change_source": "'dynamodb-streams' (the table's stream, the default) or 'kinesis'",
    "kinesis_stream": (
        "name the Kinesis data stream of the source table's Kinesis streaming destination "
        "(its name or ARN); needed when change_source is 'kinesis'"
    ),
    "hooks": (
        "a table of event = command, events backfill_complete, gates_pass, cutover_done, "
        "cutover_aborted, rollback_done (README: Hooks)"
    ),
}


def config_path() -> Path:
    """The TOML file read for settings (it need not exist)."""
    return Path(os.environ.get("LIVEMIGRATE_CONFIG", "livemigrate.toml"))


class Settings(BaseSettings):
    """Everything a migration needs to run; see README "Configuration reference"."""

    model_config = SettingsConfigDict(
        env_prefix="LIVEMIGRATE_", extra="forbid", validate_default=True
    )

    migration_id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    source_table: str = Field(pattern=_NAME)
    destination_table: str = Field(pattern=_NAME)
    transform: str = Field(
        default="livemigrate.examples.hot_outbox:transform",
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
    )
    control_table: str = Field(default="livemigrate-control", pattern=_NAME)
    inverse_transform: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="destination item -> source items, for the reverse consumer (rollback)",
    )
    search_url: str | None = Field(default=None, pattern=r"^https?://")
    failure_queue_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="the Lambda consumer's OnFailure queue: its depth is a cutover gate",
    )
    search_engine: Literal["elasticsearch", "opensearch"] = "elasticsearch"
    search_auth: Literal["none", "sigv4"] = "none"
    search_region: str | None = Field(
        default=None, description="SigV4 region (default: region, then boto3's region)"
    )
    search_service: Literal["es", "aoss"] = "es"
    search_alias: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    search_document_hook: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="item -> document"
    )
    search_index_config: str | None = Field(
        default=None, description='JSON file {"settings": {...}, "mappings": {...}}'
    )
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://")
    region: str | None = None
    use_localstack: bool = False
    read_rate: float = Field(default=0.0, ge=0, description="source items/s, 0 = no cap")
    write_rate: float = Field(default=0.0, ge=0, description="destination items/s, 0 = no cap")
    workers: int = Field(default=4, ge=1, le=256)
    budget_seconds: float = Field(default=840.0, gt=0)
    # Time the backfill leaves before the stream's retention (rule 9); None: a sixth of it.
    retention_margin_seconds: float | None = Field(default=None, ge=0)
    total_segments: int | None = Field(default=None, ge=1, le=1_000_000)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_address: str = Field(
        default=DEFAULT_METRICS_ADDRESS, description="where the metrics port listens"
    )
    retry_mode: Literal["standard", "adaptive"] = Field(
        default="standard",
        description="botocore's retry mode for every AWS client (livemigrate.aws)",
    )
    hooks: dict[str, str] = Field(
        default_factory=dict, description="event -> shell command (livemigrate.hooks)"
    )
    hook_timeout_seconds: float = Field(default=60.0, gt=0)
    change_source: Literal["dynamodb-streams", "kinesis"] = Field(
        default="dynamodb-streams",
        description="where the source's changes are read: its DynamoDB stream or a Kinesis "
        "data stream (the table's Kinesis streaming destination); fixed at the first start",
    )
    kinesis_stream: str | None = Field(
        default=None,
        pattern=r"^(arn:[\w-]+:kinesis:[\w-]*:\d*:stream/)?[A-Za-z0-9_.-]{1,128}$",
        description="the Kinesis data stream (name or ARN) when change_source is 'kinesis'",
    )

    kinesis_delivery_margin: float = Field(
        default=60.0,
        ge=0,
        description="seconds within which a change is surely in the Kinesis stream (delivery "
        "delay and clock skew): tombstones and the cutover's drain wait for the watermark",
    )

    @field_validator("kinesis_stream")
    @classmethod
    def _kinesis_named(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("change_source") == "kinesis" and not value:
            raise ValueError("it is needed when change_source is 'kinesis'")
        return value

    @field_validator("metrics_address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        return str(ipaddress.ip_address(value.strip()))  # ValueError names the bad input

    @field_validator("hooks")
    @classmethod
    def _known_events(cls, value: dict[str, str]) -> dict[str, str]:
        known = (
            "backfill_complete",
            "gates_pass",
            "cutover_done",
            "cutover_aborted",
            "rollback_done",
        )
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown hook event(s) {unknown}; known: {', '.join(known)}")
        return value

    @field_validator("source_table", "destination_table")
    @classmethod
    def _tables_named(cls, value: str) -> str:
        return value.strip()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_path())
        return (init_settings, env_settings, toml)


def load_settings(**overrides: Any) -> Settings:
    """Read settings, turning validation errors into one message naming each field and its fix.

    Before reading: a ``LIVEMIGRATE_CONFIG`` naming a missing file, or a misspelt
    ``LIVEMIGRATE_*`` variable, is warned about (naming the closest setting); a TOML syntax
    error is a ``ConfigError`` naming the file and the line.
    """
    warn_about_environment(os.environ)
    _check_toml(config_path())
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(*_describe(exc)) from exc


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``LIVEMIGRATE_*`` variables that name no setting, each with the closest known one."""
    known = {f"LIVEMIGRATE_{name.upper()}" for name in Settings.model_fields}
    found = []
    for name in sorted(environ):
        if not name.startswith("LIVEMIGRATE_") or name in known or name in _OTHER_VARIABLES:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        found.append((name, close[0] if close else None))
    return found


def warn_about_environment(environ: Mapping[str, str]) -> None:
    """Log a warning per unknown ``LIVEMIGRATE_*`` variable and for a missing config file."""
    for name, close in unknown_variables(environ):
        hint = f"; did you mean {close}?" if close else ""
        log.warning("%s is not a livemigrate setting and is ignored%s", name, hint)
    named = environ.get("LIVEMIGRATE_CONFIG")
    if named and not Path(named).is_file():
        log.warning(
            "LIVEMIGRATE_CONFIG names %s, which does not exist: no settings file is read", named
        )


def _check_toml(path: Path) -> None:
    if not path.is_file():
        return
    try:
        with path.open("rb") as handle:
            tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid TOML: {exc}",
            f'fix the syntax of {path} (strings need quotes: name = "value")',
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}", f"check the file {path}") from exc


def _describe(exc: ValidationError) -> tuple[str, str]:
    problems: list[str] = []
    fixes: list[str] = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        env = f"LIVEMIGRATE_{field.upper()}"
        what = "is missing" if err["type"] == "missing" else f"is invalid ({err['msg']})"
        if err["type"] == "extra_forbidden":
            what = "is not a known setting"
        problems.append(f"{field} ({env}) {what}")
        hint = _FIXES.get(field, "see the configuration reference in README.md")
        fixes.append(f"{env} / '{field}' in {config_path()}: {hint}")
    return "invalid configuration: " + "; ".join(problems), "; ".join(fixes)
