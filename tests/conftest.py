"""Shared fixtures: real services (moto server, Elasticsearch), fresh names per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch
from hypothesis import HealthCheck, settings

from livemigrate.aws import AwsClients
from livemigrate.search.backend import ClientBackend, Engine
from livemigrate.search.clients import backend_for
from tests.services import ENGINE_URLS, ES_URL, MOTO_URL, TEST_ENV, aws_clients, require, unique
from tests.support.search import es_client

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


@pytest.fixture(scope="session", params=sorted(ENGINE_URLS))
def search_engine(request: pytest.FixtureRequest) -> Engine:
    """Each search engine in turn: a test taking it runs over Elasticsearch and OpenSearch.

    ``make test`` starts both nodes. Outside CI a missing OpenSearch node skips (other
    developers may run only Elasticsearch); with CI=true it fails, like every service.
    """
    engine: Engine = request.param
    require_engine(engine)
    return engine


def require_engine(engine: Engine) -> None:
    url = ENGINE_URLS[engine]
    try:
        require(engine, f"{url}/_cluster/health")
    except RuntimeError as exc:
        if engine == "opensearch" and os.environ.get("CI") != "true":
            pytest.skip(f"{exc} (make services SEARCH=both)")
        raise


@pytest.fixture(scope="session")
def search_url(search_engine: Engine) -> str:
    return ENGINE_URLS[search_engine]


@pytest.fixture
def search_backend(search_engine: Engine, search_url: str) -> ClientBackend:
    return backend_for(search_engine, search_url, timeout=30)


@pytest.fixture
def index_name(search_backend: ClientBackend) -> Iterator[Callable[[], str]]:
    """Makes unique lowercase index names; every index starting with one is deleted after."""
    made: list[str] = []

    def make() -> str:
        made.append(f"lmtest-{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield make
    for name in made:
        search_backend.delete_index(name + "*")


@pytest.fixture
def es(es_url: str) -> Iterator[Elasticsearch]:
    """An elasticsearch-py client (tests of other subjects that read the node directly)."""
    yield from es_client(es_url)


@pytest.fixture
def es_backend(es_url: str) -> ClientBackend:
    """Elasticsearch only: for the slow tests whose subject is the sink, not the engine (the
    contract suite and the tests taking ``search_backend`` cover OpenSearch)."""
    return backend_for("elasticsearch", es_url, timeout=30)


@pytest.fixture
def es_index(es_backend: ClientBackend) -> Iterator[str]:
    name = unique("lmtest").lower()
    yield name
    es_backend.delete_index(name + "*")


@pytest.fixture(scope="session")
def clients(moto_url: str) -> Iterator[AwsClients]:
    yield aws_clients()


# The long adversarial tests (many processes each, SIGKILLs, outages) run one after another on
# one worker: side by side on two cores they starve each other past their deadlines (seen: the
# SIGKILL backfill test and the end-to-end cutover timed out together). Every other module is a
# group of its own, so its tests share a worker as with --dist loadfile (Makefile: pytest-xdist,
# --dist loadgroup).
HEAVY_MODULES = frozenset(
    {
        "test_backfill_kill.py",
        "test_e2e_fenced_cutover.py",
        "test_outage_proxy.py",
    }
)


# Every test under tests/integration is an integration test: the marker is added here, so no
# module can forget it (`-m "not integration"` runs what needs no service; checked by
# tests/unit/test_suite_layout.py). tryfirst: before pytest's own hook deselects by marker.
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("heavy" if name in HEAVY_MODULES else name))
