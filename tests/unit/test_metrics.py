"""The consumer's metrics on prometheus-client: names kept, one registry per process, the
endpoint on 127.0.0.1 unless the ``metrics_address`` setting opens it (issue 19, item 6)."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from livemigrate.config import Settings
from livemigrate.errors import ConfigError
from stream_consumer.cli import ConsumerRun, _serve
from stream_consumer.metrics import METRICS, PREFIX, Metrics, serve

REQUIRED = {"migration_id": "m1", "source_table": "src", "destination_table": "dst"}


def scrape(metrics: Metrics, host: str = "127.0.0.1") -> tuple[str, str]:
    """(the address the endpoint is bound to, the text it serves)."""
    server = serve(metrics, 0, host=host)
    try:
        bound, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(bound), resp.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_every_declared_metric_is_exposed_under_its_name_from_the_start() -> None:
    """GIVEN a fresh Metrics WHEN scraped THEN each declared name has its TYPE and a 0 sample
    labelled with the consumer (a dashboard sees every series before anything happened)."""
    _, text = scrape(Metrics("source"))
    for name, (kind, _) in METRICS.items():
        assert f"# TYPE {PREFIX}{name} {kind}\n" in text
        assert f'{PREFIX}{name}{{consumer="source",shard=""}} 0.0\n' in text


def test_values_are_summed_over_shards_and_a_released_shard_drops_only_its_gauges() -> None:
    metrics = Metrics("source")
    metrics.inc("records_applied_total", 7, shard="s1")
    metrics.inc("records_applied_total", 2, shard="s2")
    metrics.set("lag_seconds", 1.5, shard="s1")
    assert metrics.value("records_applied_total") == 9
    assert metrics.value("records_applied_total", shard="s2") == 2
    _, text = scrape(metrics)
    assert f'{PREFIX}records_applied_total{{consumer="source",shard="s1"}} 7.0' in text
    assert f'{PREFIX}lag_seconds{{consumer="source",shard="s1"}} 1.5' in text

    metrics.forget("s1")

    assert metrics.value("lag_seconds", shard="s1") == 0
    assert metrics.value("records_applied_total", shard="s1") == 7  # counters stay
    assert 'shard="s1"} 1.5' not in metrics.render()
    metrics.set("lag_seconds", 2.5, shard="s1")  # the shard's lease is taken again
    assert f'{PREFIX}lag_seconds{{consumer="source",shard="s1"}} 2.5' in metrics.render()


def test_two_metrics_objects_in_one_process_share_nothing() -> None:
    """A registry per object, not the library's global one: a second consumer (or test) in
    the same process neither collides on the names nor sees the first one's values."""
    first, second = Metrics("source"), Metrics("source")
    first.inc("records_read_total", 5)
    assert second.value("records_read_total") == 0
    assert "} 5.0" not in second.render()


def test_an_undeclared_name_is_refused() -> None:
    with pytest.raises(KeyError, match="declare it in METRICS"):
        Metrics("source").inc("records_raed_total")  # type: ignore[arg-type]


def test_the_endpoint_listens_on_this_host_only_by_default() -> None:
    """GIVEN no metrics_address setting THEN the consumer binds 127.0.0.1, not every
    interface (the hand-written server listened on 0.0.0.0)."""
    settings = Settings(migration_id="m1", source_table="src", destination_table="dst")
    assert settings.metrics_address == "127.0.0.1"
    run_default = ConsumerRun.__dataclass_fields__["metrics_address"].default
    assert run_default == "127.0.0.1"
    server = _serve(Metrics("source"), settings.metrics_address, free_port())
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_the_metrics_address_setting_is_checked_and_named_with_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from livemigrate.config import load_settings

    for name, value in REQUIRED.items():
        monkeypatch.setenv(f"LIVEMIGRATE_{name.upper()}", value)
    monkeypatch.setenv("LIVEMIGRATE_METRICS_ADDRESS", "0.0.0.0")
    assert load_settings().metrics_address == "0.0.0.0"
    monkeypatch.setenv("LIVEMIGRATE_METRICS_ADDRESS", "every-interface")
    with pytest.raises(ConfigError, match="LIVEMIGRATE_METRICS_ADDRESS") as info:
        load_settings()
    assert "127.0.0.1" in str(info.value)


def test_a_port_in_use_is_a_config_error_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"metrics port {port} is already in use"):
            _serve(Metrics("source"), "127.0.0.1", port)


def test_an_address_of_another_host_is_a_config_error_naming_the_setting() -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never this host's, so the bind fails locally.
    with pytest.raises(ConfigError, match="LIVEMIGRATE_METRICS_ADDRESS") as info:
        _serve(Metrics("source"), "192.0.2.1", free_port())
    assert "cannot serve metrics on 192.0.2.1" in str(info.value)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
