"""SigV4 for Amazon OpenSearch Service, checked on the requests that leave the process.

The managed service is not reachable here, so a tiny local HTTP server (for this test only)
records what the OpenSearch backend sends with ``search_auth = "sigv4"``; the test then checks
the headers and recomputes the signature with botocore from the recorded request: a signature
over another URL, body, region or service than what was sent would not match.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from livemigrate.config import Settings
from livemigrate.errors import ConfigError
from livemigrate.search.backend import BulkAction
from livemigrate.search.clients import open_backend

Recorded = dict[str, Any]


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[Recorded]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        Recorder.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
        )
        answer: dict[str, Any] = {"docs": [], "items": []}
        if self.path == "/":  # the engine check (skipped for Serverless)
            answer = {"version": {"distribution": "opensearch", "number": "2.19.6"}}
        if self.path.startswith("/_bulk"):
            answer = {"items": [{"create": {"status": 201}}]}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def settings(url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "migration_id": "m1",
        "source_table": "src",
        "destination_table": "dst",
        "search_url": url,
        "search_engine": "opensearch",
        **extra,
    }
    return Settings(**values)


def expected_signature(req: Recorded, url: str, region: str, service: str) -> str:
    """The signature botocore computes for exactly the recorded request."""
    auth_header = req["headers"]["authorization"]
    signed = re.search(r"SignedHeaders=([^,]+)", auth_header)
    assert signed, auth_header
    headers = {name: req["headers"][name] for name in signed.group(1).split(";")}
    aws = AWSRequest(method=req["method"], url=url + req["path"], data=req["body"], headers=headers)
    aws.context["timestamp"] = req["headers"]["x-amz-date"]
    signer = SigV4Auth(Credentials("testing", "testing"), service, region)
    canonical = signer.canonical_request(aws)
    return signer.signature(signer.string_to_sign(aws, canonical), aws)


@pytest.mark.parametrize("service", ["es", "aoss"])
def test_sigv4_signs_every_request_for_the_region_and_service(
    endpoint: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIVEN search_auth sigv4, region eu-west-1 and a service WHEN the backend sends a bulk
    (body), an _mget (query string) and a refresh THEN each carries an AWS4-HMAC-SHA256
    Authorization scoped to that region and service, X-Amz-Date, the body's SHA-256 and a
    signature that botocore recomputes from the request as received."""
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    backend = open_backend(
        settings(endpoint, search_auth="sigv4", search_region="eu-west-1", search_service=service)
    )
    backend.bulk([BulkAction("create", "orders-m1", "a", {"title": "x"})])
    backend.get_sources("orders-m1", ["a"])
    backend.refresh("orders-m1")
    check = [] if service == "aoss" else ["GET /"]  # Serverless has no GET /
    sent = [f"{r['method']} {r['path'].split('?')[0]}" for r in Recorder.seen]
    assert sent == [*check, "POST /_bulk", "POST /orders-m1/_mget", "POST /orders-m1/_refresh"]
    for req in Recorder.seen:
        headers = req["headers"]
        date = headers["x-amz-date"]
        assert re.fullmatch(r"\d{8}T\d{6}Z", date)
        scope = f"Credential=testing/{date[:8]}/eu-west-1/{service}/aws4_request"
        assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 {scope}, SignedHeaders=")
        assert "x-amz-date" in headers["authorization"]
        assert headers["x-amz-content-sha256"] == hashlib.sha256(req["body"]).hexdigest()
        signature = headers["authorization"].rsplit("Signature=", 1)[1]
        assert signature == expected_signature(req, endpoint, "eu-west-1", service)
    assert b'"title":"x"' in Recorder.seen[-3]["body"]
    assert "realtime=true" in Recorder.seen[-2]["path"]


def test_without_sigv4_nothing_is_signed(endpoint: str) -> None:
    open_backend(settings(endpoint)).refresh("orders-m1")
    assert len(Recorder.seen) == 2
    for req in Recorder.seen:
        assert "authorization" not in req["headers"] and "x-amz-date" not in req["headers"]


def test_sigv4_needs_opensearch_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="LIVEMIGRATE_SEARCH_ENGINE=opensearch"):
        open_backend(
            settings("http://127.0.0.1:1", search_engine="elasticsearch", search_auth="sigv4")
        )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="no AWS credentials"):
        open_backend(settings("http://127.0.0.1:1", search_auth="sigv4", search_region="x-1"))
