"""The emulator's pure rules: the token bucket (stepped clock), name/description limits, the
behaviour's validation, and the one-draw precedence of the PUT fault rates."""

from __future__ import annotations

import pytest

from watcher.fakecloud.behaviour import Behaviours, checked_behaviour
from watcher.fakecloud.faults import Decision, FaultInjector, Faults
from watcher.fakecloud.ratelimit import RateLimiter
from watcher.fakecloud.validation import ApiError, apply_limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_starts_full_refills_at_the_rate_and_says_when_a_token_is_due() -> None:
    clock = Clock()
    bucket = RateLimiter(clock)
    assert [bucket.take(2.0, 3) for _ in range(3)] == [None, None, None]
    assert bucket.take(2.0, 3) == 1  # half a second away, rounded up to a whole second
    clock.now += 0.5
    assert bucket.take(2.0, 3) is None
    clock.now += 100
    assert [bucket.take(2.0, 3) for _ in range(4)] == [None, None, None, 1]  # never more than the burst
    assert bucket.take(0.1, 3) is None  # new limits: a full bucket
    assert [bucket.take(0.1, 3) for _ in range(3)] == [None, None, 10]


def test_limits_refuse_naming_the_field_or_cut_in_characters() -> None:
    body = {"name": "é" * 5, "description": "d" * 9, "upload_id": "u"}
    limits = {"name": 4, "description": 10}
    with pytest.raises(ApiError) as refused:
        apply_limits(body, limits, truncate=False)
    assert (refused.value.status, refused.value.message) == (400, "name must be at most 4 characters long, got 5")
    cut, fields = apply_limits(body, limits, truncate=True)
    assert (cut, fields) == ({"name": "éééé", "description": "d" * 9, "upload_id": "u"}, ("name",))
    assert body["name"] == "é" * 5  # the caller's body is not changed
    assert apply_limits(body, {"name": None, "description": None}, truncate=False) == (body, ())


def test_behaviour_changes_are_validated_and_normalized() -> None:
    assert checked_behaviour({"instances": ["a", "a"], "rate_limit_per_second": 2}) == {
        "instances": frozenset({"a"}), "rate_limit_per_second": 2.0}
    with pytest.raises(ValueError, match="list_order"):
        checked_behaviour({"list_order": "newest first"})
    with pytest.raises(TypeError, match="max_description_length"):
        checked_behaviour({"max_description_length": "256"})
    with pytest.raises(ValueError, match="non-empty"):
        Behaviours(changes={"batch_experiments": [""]})


@pytest.mark.parametrize(("faults", "expected"), [
    (Faults(put_request_timeout_rate=1.0), {(400, "RequestTimeout")}),
    (Faults(put_slow_down_rate=1.0), {(503, "SlowDown")}),
    (Faults(put_signature_mismatch_rate=1.0), {(403, "SignatureDoesNotMatch")}),
    (Faults(put_request_timeout_rate=1.0, put_slow_down_rate=1.0), {(400, "RequestTimeout")}),
    (Faults(reset_rate=1.0, put_slow_down_rate=1.0), {(None, None)}),
    (Faults(throttle_rate=1.0, put_request_timeout_rate=1.0), {(503, "SlowDown")}),
    # The put_* rates name their endpoint: the `endpoints` filter of the generic faults does not apply.
    (Faults(put_slow_down_rate=1.0, error_rate=1.0, endpoints=frozenset({"create_run"})), {(503, "SlowDown")}),
])
def test_put_rates_follow_the_generic_ones_in_one_draw(faults: Faults, expected: set[tuple[int | None, str | None]]
                                                       ) -> None:
    injector = FaultInjector(faults)
    outcomes = set()
    for _ in range(50):
        before = injector.decide("put").before
        assert before is not None
        outcomes.add((before.status, before.code))
    assert outcomes == expected


def test_put_rates_leave_the_api_endpoints_alone() -> None:
    injector = FaultInjector(Faults(put_request_timeout_rate=0.5, put_slow_down_rate=0.3,
                                    put_signature_mismatch_rate=0.2))
    assert {injector.decide(endpoint) for endpoint in ("uploadurl", "create_run", "list_runs")} == {Decision()}
