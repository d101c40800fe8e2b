"""A loss-injecting TCP forwarder for outage tests: put it between a process and a service.

``FaultProxy(upstream_port)`` listens on 127.0.0.1 and forwards every connection to the
upstream port on 127.0.0.1. On command it

- ``blackhole(reset_after)``: forwards nothing any more; every open connection and every new
  one is held without an answer (what is sent is discarded) and reset ``reset_after`` seconds
  after it was cut off, as a middlebox that lost its state would. A connection cut off once
  never forwards again, so no half-delivered request ever reaches the service;
- ``drop()``: closes every open connection at once (new ones are forwarded);
- ``restore()``: forwards new connections again (connections cut off are closed now).

Threads, blocking sockets and ``select`` with a short timeout: small enough to read whole.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

POLL = 0.05


class FaultProxy:
    """A TCP forwarder on 127.0.0.1 that can black-hole or drop connections on command.

    Parameters
    ----------
    upstream_port:
        The service's port on 127.0.0.1.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(POLL)
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self._cut_since: float | None = None
        self._reset_after = 1.0
        self._generation = 0  # bumped by drop(): connections of older generations close
        self._stop = threading.Event()
        self.connections = 0
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def blackhole(self, reset_after: float = 1.0) -> None:
        with self._lock:
            self._reset_after = reset_after
            self._cut_since = time.monotonic()

    def restore(self) -> None:
        with self._lock:
            self._cut_since = None

    def drop(self) -> None:
        with self._lock:
            self._generation += 1

    def close(self) -> None:
        self._stop.set()
        self._server.close()

    def _state(self) -> tuple[float | None, float, int]:
        with self._lock:
            return self._cut_since, self._reset_after, self._generation

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        conn = _Conn(client, time.monotonic(), self._state()[2])
        try:
            while not self._stop.is_set() and self._step(conn):
                pass
        except OSError:
            return
        finally:
            conn.close()

    def _step(self, conn: _Conn) -> bool:
        """Forward (or swallow) what is ready; False when the connection is to be closed."""
        since, reset_after, generation = self._state()
        if generation != conn.generation:
            return False
        if since is not None and conn.cut_at is None:
            conn.cut_at = max(since, conn.opened)
        if conn.cut_at is not None:  # cut off once: never forwards again
            if since is None or time.monotonic() - conn.cut_at >= reset_after:
                return False
            return _discard(conn.client)
        if conn.upstream is None:
            conn.upstream = socket.create_connection(self.upstream, timeout=5)
        return _pump(conn.client, conn.upstream)


class _Conn:
    def __init__(self, client: socket.socket, opened: float, generation: int) -> None:
        self.client = client
        self.opened = opened
        self.generation = generation
        self.upstream: socket.socket | None = None
        self.cut_at: float | None = None  # when the black-hole caught this connection

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _discard(client: socket.socket) -> bool:
    """Swallow what the client sends; False once it closed."""
    ready, _, _ = select.select([client], [], [], POLL)
    return not ready or bool(client.recv(65536))


def _pump(client: socket.socket, upstream: socket.socket) -> bool:
    """Forward what is ready in either direction; False once either side closed."""
    ready, _, _ = select.select([client, upstream], [], [], POLL)
    for sock in ready:
        data = sock.recv(65536)
        if not data:
            return False
        (upstream if sock is client else client).sendall(data)
    return True
