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


# ---------------------------------------------------------------- the pacing controller


class Clock:
    def __init__(self, start=1_000_000.0):
        self.now = start

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(ratelimit, "_now", fake)
    return fake


@pytest.fixture(params=["redis", "local"])
def modify_buckets(request, settings):
    """AWS's ModifyInstanceMetadataOptions bucket (100, 5 per second), at AWS's rate."""
    settings.IMDSWEB_RATE_LIMITS = {"ModifyInstanceMetadataOptions": (100, 5.0)}
    settings.IMDSWEB_RATE_TIME_SCALE = 1.0
    settings.IMDSWEB_RATE_HEADROOM = 1.0
    settings.IMDSWEB_REDIS_URL = "redis://127.0.0.1:6379/1" if request.param == "redis" else ""
    ratelimit._redis = None
    yield request.param
    ratelimit._redis = None


MODIFY = "ModifyInstanceMetadataOptions"


def test_a_lone_throttle_only_empties_the_bucket(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    assert ratelimit.try_take("123456789012", region, MODIFY) == 0
    wait = ratelimit.throttled("123456789012", region, MODIFY)
    assert wait == pytest.approx(0.2)  # AWS's bucket is empty: the next token in 1/5 s
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(5.0)
    assert ratelimit.try_take("123456789012", region, MODIFY) == pytest.approx(0.2)


def test_a_second_throttle_cuts_the_rate_once_for_every_worker_then_it_grows_back(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    ratelimit.throttled("123456789012", region, MODIFY)
    clock.now += 2
    ratelimit.throttled("123456789012", region, MODIFY)  # within 20 s: someone else spends the bucket
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(4.0, rel=0.01)
    ratelimit._redis = None  # another worker (a new connection): the same learned state
    clock.now += 0.1
    ratelimit.throttled("123456789012", region, MODIFY)  # a call that was in flight: no second cut
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(4.0, rel=0.01)
    assert ratelimit.try_take("123456789012", region, MODIFY) == pytest.approx(1 / 4.0, rel=0.01)
    clock.now += 10
    ratelimit.try_take("123456789012", region, MODIFY)
    after_10s = ratelimit.learned_rate("123456789012", region, MODIFY)
    assert 4.0 < after_10s < 4.3  # slowly just after the cut
    clock.now += 60
    ratelimit.try_take("123456789012", region, MODIFY)
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(5.0)  # back to AWS's


def simulate(clock, region, seconds, other_share=0.0, settle=0.0):
    """The engine (one caller at a time, no latency) against the simulator's own bucket
    (imdssim.throttle.TokenBucket), with another client spending ``other_share`` of its refill.
    Returns, for the time after ``settle`` seconds: (engine calls accepted, engine calls throttled,
    the other client's calls throttled)."""
    from imdssim.throttle import TokenBucket

    aws = TokenBucket(100, 5.0, now=clock.now)
    begin = clock.now + settle
    end = clock.now + seconds
    engine_at, other_at = clock.now, clock.now
    ok = throttled = other_throttled = 0
    while clock.now < end:
        if other_share and other_at <= engine_at:
            clock.now = other_at
            refused = not aws.take(clock.now, 1.0)
            other_throttled += refused and clock.now >= begin
            other_at += 1 / (5.0 * other_share)
            continue
        clock.now = engine_at
        wait = ratelimit.try_take("123456789012", region, MODIFY)
        if wait:
            engine_at += max(wait, 1e-6)  # a worker sleeps at least that long
        elif aws.take(clock.now, 1.0):
            ok += clock.now >= begin
            engine_at += 0.001
        else:
            throttled += clock.now >= begin
            engine_at += ratelimit.throttled("123456789012", region, MODIFY)
    return ok, throttled, other_throttled


def test_alone_the_engine_uses_all_of_aws_bucket(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    ok, throttled, _ = simulate(clock, region, 120)
    assert throttled == 0
    assert ok >= 0.98 * (100 + 5.0 * 120)


def test_with_another_client_spending_30_percent_it_settles_at_what_is_left(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    # The first 60 s spend the burst and learn the rate; then 300 s are measured.
    ok, throttled, other_throttled = simulate(clock, region, 360, other_share=0.3, settle=60)
    rate = ok / 300
    assert 0.85 * 3.5 <= rate <= 1.03 * 3.5  # what the other client leaves: 70 % of 5 per second
    assert throttled <= 0.02 * (ok + throttled)
    assert other_throttled <= 0.02 * 1.5 * 300


def test_a_call_with_an_earlier_clock_is_not_credited_the_refill_twice(buckets, clock):
    region = drained_bucket()  # 3 spent at the clock's time
    clock.now += 0.5  # one token refilled (2 per second)
    assert ratelimit.try_take("123456789012", region, "TestAction") == 0
    clock.now -= 0.4  # another worker whose call left earlier arrives now
    assert ratelimit.try_take("123456789012", region, "TestAction") > 0
    clock.now += 0.5  # 0.1 s after the last token: 0.2 of a token, not the 1.0 a backwards clock credited
    assert ratelimit.try_take("123456789012", region, "TestAction") > 0
