"""The shared token buckets: burst, refill, "try" versus "reserve", and the in-process fallback."""

import uuid

import pytest

from fleet import ratelimit


@pytest.fixture(params=["redis", "local"])
def buckets(request, settings):
    settings.IMDSWEB_RATE_LIMITS = {"TestAction": (3, 2.0)}
    settings.IMDSWEB_RATE_TIME_SCALE = 1.0
    settings.IMDSWEB_RATE_HEADROOM = 1.0
    settings.IMDSWEB_REDIS_URL = "redis://127.0.0.1:6379/1" if request.param == "redis" else ""
    ratelimit._redis = None
    yield request.param
    ratelimit._redis = None


def drained_bucket(account_id="123456789012"):
    """A bucket of the test's own with its burst of 3 spent; returns its region."""
    region = f"test-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        ratelimit.try_take(account_id, region, "TestAction")
    return region


def test_burst_then_try_take_waits_without_taking(buckets):
    region = f"test-{uuid.uuid4().hex[:8]}"  # a bucket of this test's own
    assert [ratelimit.try_take("123456789012", region, "TestAction") for _ in range(3)] == [0, 0, 0]
    first = ratelimit.try_take("123456789012", region, "TestAction")
    second = ratelimit.try_take("123456789012", region, "TestAction")
    assert 0.4 < first <= 0.5 and 0.4 < second <= 0.5  # nothing was taken on credit


def test_reserve_takes_on_credit_so_waiters_queue_up(buckets):
    region = f"test-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        assert ratelimit.reserve("123456789012", region, "TestAction") == 0
    waits = [ratelimit.reserve("123456789012", region, "TestAction") for _ in range(3)]
    assert waits[0] == pytest.approx(0.5, abs=0.05)
    assert waits[1] == pytest.approx(1.0, abs=0.05) and waits[2] == pytest.approx(1.5, abs=0.05)


def test_buckets_are_per_account_region_and_action(buckets):
    region = drained_bucket()
    assert ratelimit.try_take("123456789012", region, "TestAction") > 0
    assert ratelimit.try_take("210987654321", region, "TestAction") == 0
    assert ratelimit.try_take("123456789012", region + "x", "TestAction") == 0


def test_time_scale_speeds_up_refill(buckets, settings):
    settings.IMDSWEB_RATE_TIME_SCALE = 10.0
    region = drained_bucket()
    assert ratelimit.try_take("123456789012", region, "TestAction") == pytest.approx(0.05, abs=0.01)


def test_headroom_keeps_pacing_under_aws_rate(buckets, settings):
    settings.IMDSWEB_RATE_HEADROOM = 0.5
    region = drained_bucket()
    assert ratelimit.try_take("123456789012", region, "TestAction") == pytest.approx(1.0, abs=0.05)
