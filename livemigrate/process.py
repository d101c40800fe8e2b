"""What every long-running livemigrate process needs: a lease owner name and a clean stop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from types import FrameType

log = logging.getLogger("livemigrate.process")


def worker_id() -> str:
    """A lease owner name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM / SIGINT set ``stop``: the loop then checkpoints and releases its leases."""

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: checkpointing and releasing leases", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
