"""The one place a search client is built from the settings (engine, URL, auth, timeout).

``search_engine`` picks the client library: elasticsearch-py 8.x refuses any node that is not
Elasticsearch (it checks the product header), so OpenSearch and Amazon OpenSearch Service go
through opensearch-py. ``search_auth = "sigv4"`` signs every request with the AWS credentials
boto3's chain finds (environment, profile, instance or task role), for ``search_service``
``es`` (Amazon OpenSearch Service) or ``aoss`` (Serverless), in ``search_region`` (default: the
``region`` setting, then boto3's own region).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from livemigrate.config import Settings
from livemigrate.errors import ConfigError
from livemigrate.search.backend import (
    ClientBackend,
    ElasticsearchBackend,
    Engine,
    OpenSearchBackend,
)

if TYPE_CHECKING:
    from opensearchpy.helpers.signer import Urllib3AWSV4SignerAuth

# One timeout for every search request: a bulk of 5 MiB or a scroll page on a busy node can
# take tens of seconds, and a too-short timeout turns a slow node into a retry storm.
REQUEST_TIMEOUT = 60.0


def open_backend(
    settings: Settings, *, timeout: float = REQUEST_TIMEOUT, check: bool = True
) -> ClientBackend:
    """The search backend the settings describe; with ``check``, after one request that
    proves the node is the configured engine (opensearch-py talks to an Elasticsearch node
    without complaint, so the mismatch would otherwise go unnoticed).

    Raises
    ------
    ConfigError
        ``search_url`` is missing, or ``search_auth`` cannot be used as configured.
    WrongEngine
        The node is not the engine ``search_engine`` names (a ``ConfigError``).
    SearchUnavailable
        The node did not answer the check.
    """
    if not settings.search_url:
        raise ConfigError(
            "no search node configured",
            "set LIVEMIGRATE_SEARCH_URL (e.g. http://127.0.0.1:9299) or search_url in "
            "livemigrate.toml",
        )
    if settings.search_engine == "elasticsearch" and settings.search_auth != "none":
        raise ConfigError(
            "search_auth 'sigv4' signs requests for Amazon OpenSearch Service, but "
            "search_engine is 'elasticsearch'",
            "set LIVEMIGRATE_SEARCH_ENGINE=opensearch, or LIVEMIGRATE_SEARCH_AUTH=none",
        )
    auth = sigv4_auth(settings) if settings.search_auth == "sigv4" else None
    serverless = settings.search_auth == "sigv4" and settings.search_service == "aoss"
    backend = backend_for(
        settings.search_engine,
        settings.search_url,
        auth=auth,
        timeout=timeout,
        serverless=serverless,
    )
    if check:
        backend.check_engine()
    return backend


def backend_for(
    engine: Engine,
    url: str,
    *,
    auth: Any = None,
    timeout: float = REQUEST_TIMEOUT,
    serverless: bool = False,
) -> ClientBackend:
    """The backend of one engine at ``url`` (``auth``: an opensearch-py ``http_auth``)."""
    if engine == "elasticsearch":
        from elasticsearch import Elasticsearch

        return ElasticsearchBackend(Elasticsearch(url, request_timeout=timeout))
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[url], http_auth=auth, timeout=timeout)
    return OpenSearchBackend(client, serverless=serverless)


def sigv4_auth(settings: Settings, session: Any = None) -> Urllib3AWSV4SignerAuth:
    """opensearch-py's SigV4 signer (urllib3 flavour of ``AWSV4SignerAuth``) with boto3's
    credentials; ``session`` is a boto3 ``Session`` (a new default one if None)."""
    import boto3
    from opensearchpy.helpers.signer import Urllib3AWSV4SignerAuth

    session = session or boto3.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise ConfigError(
            "search_auth is 'sigv4' but boto3 found no AWS credentials",
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with a role",
        )
    region = settings.search_region or settings.region or session.region_name
    if not region:
        raise ConfigError(
            "search_auth is 'sigv4' but no region is known to sign for",
            "set LIVEMIGRATE_SEARCH_REGION (or LIVEMIGRATE_REGION / AWS_REGION)",
        )
    return Urllib3AWSV4SignerAuth(credentials, region, settings.search_service)
