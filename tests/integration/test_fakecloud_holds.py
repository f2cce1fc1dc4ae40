"""The emulator's holds: requests of one endpoint wait at a known point until the test releases them.

Kept apart from test_fakecloud.py, which is long enough already; the fixtures are the same.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from watcher.fakecloud import FakeCloud

KEY = "test-key"
APP = "app"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud(api_keys=[KEY], applications=[APP]) as running:
        yield running
        assert running.stats()["internal_errors"] == []


class Call:
    """One request on its own thread, so that the test goes on while the emulator holds it."""

    def __init__(self, send: Callable[[httpx.Client], httpx.Response]) -> None:
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self._send = send
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            try:
                self.response = self._send(client)
            except httpx.HTTPError as exc:
                self.error = exc

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the request did not finish"

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()


def _upload_url(cloud: FakeCloud) -> Call:
    return Call(lambda c: c.post(f"{cloud.url}/v1/applications/{APP}/runs/uploadurl", headers=AUTH))


def _slot(cloud: FakeCloud) -> dict[str, str]:
    response = httpx.post(f"{cloud.url}/v1/applications/{APP}/runs/uploadurl", headers=AUTH, timeout=5)
    assert response.status_code == 200
    slot: dict[str, str] = response.json()
    return slot


def test_a_held_request_waits_until_released_and_later_ones_pass(cloud: FakeCloud) -> None:
    hold = cloud.hold("uploadurl")
    call = _upload_url(cloud)
    hold.wait_held(5)
    assert hold.waiting == 1
    assert not call.done
    assert [r for r in cloud.requests() if r.endpoint == "uploadurl"] == []   # recorded only once answered
    hold.release()
    call.join()
    assert call.response is not None and call.response.status_code == 200
    assert hold.waiting == 0 and hold.total == 1 and hold.released
    # Released: later requests are not held.
    later = _upload_url(cloud)
    later.join()
    assert later.response is not None and later.response.status_code == 200
    assert hold.total == 1


def test_a_held_create_run_has_created_nothing_until_released(cloud: FakeCloud) -> None:
    slot = _slot(cloud)
    assert httpx.put(slot["upload_url"], content=b"{}", timeout=5).status_code == 200
    hold = cloud.hold("create_run")
    body = {"upload_id": slot["upload_id"], "result": {"status": "succeeded"}}
    call = Call(lambda c: c.post(f"{cloud.url}/v1/applications/{APP}/runs", headers=AUTH, json=body))
    hold.wait_held(5)
    assert cloud.runs() == []
    hold.release()
    call.join()
    assert call.response is not None and call.response.status_code == 200
    assert [r.run_id for r in cloud.runs()] == [call.response.json()["run_id"]]


def test_a_hold_with_a_content_length_holds_only_matching_uploads(cloud: FakeCloud) -> None:
    first, second = _slot(cloud), _slot(cloud)
    hold = cloud.hold("put", content_length=5)
    other = Call(lambda c: c.put(first["upload_url"], content=b"abc"))
    other.join()
    assert other.response is not None and other.response.status_code == 200
    matching = Call(lambda c: c.put(second["upload_url"], content=b"abcde"))
    hold.wait_held(5)
    assert cloud.upload(second["upload_id"]) is None
    hold.release()
    matching.join()
    upload = cloud.upload(second["upload_id"])
    assert upload is not None and upload.data == b"abcde"
    assert sorted(u.data or b"" for u in cloud.uploads()) == [b"abc", b"abcde"]


def test_wait_held_times_out_naming_the_endpoint(cloud: FakeCloud) -> None:
    hold = cloud.hold("get_run")
    with pytest.raises(TimeoutError, match="0 of 1 get_run"):
        hold.wait_held(0.05)


def test_stop_releases_held_requests_and_refuses_new_holds() -> None:
    cloud = FakeCloud(api_keys=[KEY]).start()
    hold = cloud.hold("uploadurl")
    call = _upload_url(cloud)
    hold.wait_held(5)
    cloud.stop()
    call.join()   # answered or cut off by the stop, but never left waiting
    assert hold.released
    with pytest.raises(RuntimeError, match="stopped"):
        cloud.hold("uploadurl")


def test_hold_refuses_an_unknown_endpoint(cloud: FakeCloud) -> None:
    with pytest.raises(ValueError, match="unknown endpoint 'runs'"):
        cloud.hold("runs")
