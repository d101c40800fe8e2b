"""A control table where every cutover gate is met, a stand-in consumer heartbeat, tables."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from livemigrate.aws import AwsClients
from livemigrate.control import ControlStore
from tests.services import unique


def ready_store(clients: AwsClients) -> ControlStore:
    """A control table where every gate is met (as the engines would have left it)."""
    store = ControlStore(clients.dynamodb, unique("control"), unique("mig"))
    store.ensure_table()
    now = time.time()
    store.put("META", {"source_table": "orders", "destination_table": "orders_v2"})
    store.put("PLAN", {"state": "complete", "completed_at": now - 60})
    store.put("CONSUMER#source", {"heartbeat_at": now, "lag_seconds": 0, "records_behind": 0})
    store.put("TOMBSTONES", {"state": "purged", "purged_at": now - 30})
    verified = {"passed": True, "at": now - 10, "missing": 0, "extra": 0, "different": 0}
    store.put("VERIFY", {**verified, "tombstones": 0})
    return store


class Heartbeat:
    """Stands in for a caught-up consumer: a fresh CONSUMER#source heartbeat every 50 ms."""

    def __init__(self, store: ControlStore) -> None:
        self.store = store
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            self.store.update(
                "CONSUMER#source", {"heartbeat_at": now, "lag_seconds": 0, "records_behind": 0}
            )
            self.stop.wait(0.05)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class Tables:
    store: ControlStore
    source: str
    destination: str
