"""One httpx client per calling thread (watcher.cloud.pools): no thread waits on another's pool lock."""

from __future__ import annotations

import threading

import httpx
import pytest

from watcher.cloud.pools import ThreadClients


def _in_thread(clients: ThreadClients) -> httpx.Client:
    got: list[httpx.Client] = []
    t = threading.Thread(target=lambda: got.append(clients.get()))
    t.start()
    t.join(10)
    assert not t.is_alive()
    return got[0]


def test_each_thread_has_its_own_client_and_keeps_it() -> None:
    clients = ThreadClients(httpx.Client)
    mine = clients.get()
    assert clients.get() is mine
    other = _in_thread(clients)
    assert other is not mine
    assert clients.count() == 2
    clients.close()


def test_clients_of_ended_threads_are_closed_when_a_new_one_is_made() -> None:
    clients = ThreadClients(httpx.Client)
    ended = _in_thread(clients)
    assert not ended.is_closed          # not yet: nobody made a client since its thread ended
    mine = clients.get()
    assert ended.is_closed
    assert not mine.is_closed
    assert clients.count() == 1
    clients.close()


def test_close_closes_every_client_and_refuses_new_threads() -> None:
    clients = ThreadClients(httpx.Client)
    mine = clients.get()
    clients.close()
    assert mine.is_closed
    with pytest.raises(RuntimeError):
        _in_thread_raising(clients)


def _in_thread_raising(clients: ThreadClients) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            clients.get()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    if errors:
        raise errors[0]
