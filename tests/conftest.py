"""Shared fixtures: real services (moto server, Elasticsearch), fresh names per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from livemigrate.aws import AwsClients
from tests.services import ES_URL, MOTO_URL, TEST_ENV, aws_clients, require

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


@pytest.fixture(autouse=True)
def _isolated_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No test reads the developer's livemigrate.toml or LIVEMIGRATE_* variables by accident."""
    for name in list(os.environ):
        if name.startswith("LIVEMIGRATE_") and name not in TEST_ENV:
            monkeypatch.delenv(name)
    monkeypatch.setenv(
        "LIVEMIGRATE_CONFIG", str(tmp_path_factory.mktemp("cfg") / "livemigrate.toml")
    )
    for name, value in TEST_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="session")
def moto_url() -> str:
    require("moto server (DynamoDB)", f"{MOTO_URL}/moto-api/")
    return MOTO_URL


@pytest.fixture(scope="session")
def es_url() -> str:
    require("Elasticsearch", f"{ES_URL}/_cluster/health")
    return ES_URL


@pytest.fixture(scope="session")
def clients(moto_url: str) -> Iterator[AwsClients]:
    yield aws_clients()
