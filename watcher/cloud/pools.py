"""One httpx client per calling thread, so that threads never wait on each other's connection pool.

One shared httpx pool serialises every request's start and end on the pool's lock: with 32 workers
and their upload threads that lock is the daemon's busiest line (bench: 40% of the profile's self
time at 20 ms) and every contended acquisition is a futex sleep and wake-up. A thread that owns its
client takes an uncontended lock and keeps its own keep-alive connections (one or two per host:
a worker's requests are sequential). The clients share one TLS context, made once.

A client is made on a thread's first request; when it is made, clients of threads that have ended
are closed (a reload replaces the upload threads), and `close` closes them all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx


class ThreadClients:
    """`get()` is the calling thread's client, made by `make` on first use."""

    def __init__(self, make: Callable[[], httpx.Client]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._by_thread: dict[threading.Thread, httpx.Client] = {}
        self._local = threading.local()
        self._closed = False

    def get(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is not None:
            return client
        client = self._make()
        with self._lock:
            if self._closed:
                raise RuntimeError("the HTTP clients are closed")
            ended = [t for t in self._by_thread if not t.is_alive()]
            stale = [self._by_thread.pop(t) for t in ended]
            self._by_thread[threading.current_thread()] = client
        self._local.client = client
        for old in stale:
            old.close()
        return client

    def count(self) -> int:
        """Clients open (one per thread that made a request and has not been pruned)."""
        with self._lock:
            return len(self._by_thread)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._by_thread = list(self._by_thread.values()), {}
        for client in clients:
            client.close()
