"""The shared token buckets: burst, refill, "try" versus "reserve", and the in-process fallback.

The waits are read on a fake clock (``clock``): exact, whatever else the machine is doing."""

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


def test_burst_then_try_take_waits_without_taking(buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"  # a bucket of this test's own
    assert [ratelimit.try_take("123456789012", region, "TestAction") for _ in range(3)] == [0, 0, 0]
    first = ratelimit.try_take("123456789012", region, "TestAction")
    second = ratelimit.try_take("123456789012", region, "TestAction")
    assert 0.4 < first <= 0.5 and 0.4 < second <= 0.5  # nothing was taken on credit


def test_reserve_takes_on_credit_so_waiters_queue_up(buckets, clock):
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


def test_time_scale_speeds_up_refill(buckets, settings, clock):
    settings.IMDSWEB_RATE_TIME_SCALE = 10.0
    region = drained_bucket()
    assert ratelimit.try_take("123456789012", region, "TestAction") == pytest.approx(0.05, abs=0.01)


def test_headroom_keeps_pacing_under_aws_rate(buckets, settings, clock):
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


def test_take_some_takes_what_is_there_up_to_most(buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    assert ratelimit.take_some("123456789012", region, "TestAction", most=2) == (2, 0.0)
    assert ratelimit.take_some("123456789012", region, "TestAction", most=5) == (1, 0.0)  # the burst of 3 is spent
    taken, wait = ratelimit.take_some("123456789012", region, "TestAction", most=5)
    assert taken == 0 and wait == pytest.approx(0.5)  # one token at 2 per second, nothing taken


def test_take_some_waits_until_at_least_least_are_there_taking_nothing_before(buckets, clock):
    region = drained_bucket()
    taken, wait = ratelimit.take_some("123456789012", region, "TestAction", most=3, least=2)
    assert taken == 0 and wait == pytest.approx(1.0)  # two tokens at 2 per second
    clock.now += 0.6  # one token and a bit: still fewer than two, and none was taken on credit
    taken, wait = ratelimit.take_some("123456789012", region, "TestAction", most=3, least=2)
    assert taken == 0 and wait == pytest.approx(0.4)
    clock.now += 0.4
    assert ratelimit.take_some("123456789012", region, "TestAction", most=3, least=2) == (2, 0.0)


def test_take_some_never_waits_for_more_than_the_bucket_holds(buckets, clock):
    region = drained_bucket()
    # least above the bucket's size would never be there: it is cut to the size (3)
    taken, wait = ratelimit.take_some("123456789012", region, "TestAction", most=10, least=10)
    assert taken == 0 and wait == pytest.approx(1.5)
    clock.now += 1.5
    assert ratelimit.take_some("123456789012", region, "TestAction", most=10, least=10) == (3, 0.0)


def test_give_back_returns_tokens_up_to_the_bucket_size(buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    assert ratelimit.take_some("123456789012", region, "TestAction", most=3) == (3, 0.0)
    ratelimit.give_back("123456789012", region, "TestAction", 2)
    assert ratelimit.take_some("123456789012", region, "TestAction", most=3) == (2, 0.0)
    ratelimit.give_back("123456789012", region, "TestAction", 10)  # never above the bucket's 3
    assert ratelimit.take_some("123456789012", region, "TestAction", most=10) == (3, 0.0)


def test_tokens_given_back_are_not_counted_as_accepted_calls(modify_buckets, clock):
    """The estimator counts the calls AWS accepted between two throttles: tokens a chunk took but
    gave back unsent must not inflate that count (the rate it learns would be too high)."""
    region = f"test-{uuid.uuid4().hex[:8]}"
    action = "ModifyInstanceMetadataOptions"
    ratelimit.take_some("123456789012", region, action, most=100)
    ratelimit.throttled("123456789012", region, action)  # the reference: an empty moment
    for _ in range(31):  # every 0.4 s a chunk takes 2 tokens and sends 1: 31 calls in 12.4 s
        clock.now += 0.4
        assert ratelimit.take_some("123456789012", region, action, most=2)[0] == 2
        ratelimit.give_back("123456789012", region, action, 1)
    ratelimit.take_some("123456789012", region, action, most=1)  # the call AWS refused
    ratelimit.throttled("123456789012", region, action)
    # AWS accepted 31 calls of ours between two empty moments 12.4 s apart: 2.5/s are left for us,
    # not the 5/s the 62 tokens taken would say.
    assert ratelimit.learned_rate("123456789012", region, action) == pytest.approx(2.5 * 0.97, rel=0.01)


def test_take_some_within_gathers_only_what_refills_in_that_time(buckets, clock):
    """The runner's gather: wait for all it asks, or for what refills in ``within`` seconds at the
    rate paced now if that is fewer, so a lower learned rate means fewer tokens, not a longer wait."""
    region = drained_bucket()
    clock.now += 0.5  # one token at 2 per second
    taken, wait = ratelimit.take_some("123456789012", region, "TestAction", most=3, least=3)
    assert taken == 0 and wait == pytest.approx(1.0)
    assert ratelimit.take_some("123456789012", region, "TestAction", most=3, least=3, within=0.5) == (1, 0.0)


def test_take_some_and_try_take_share_one_bucket(buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    assert ratelimit.take_some("123456789012", region, "TestAction", most=2) == (2, 0.0)
    assert ratelimit.try_take("123456789012", region, "TestAction") == 0
    assert ratelimit.try_take("123456789012", region, "TestAction") == pytest.approx(0.5)


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


def throttle_at(clock, region, at):
    """A call at ``at`` (its token taken, on credit if need be) that AWS refused."""
    clock.now = at
    ratelimit.reserve("123456789012", region, MODIFY)
    return ratelimit.throttled("123456789012", region, MODIFY)


def take_evenly(clock, region, calls, seconds):
    """``calls`` tokens taken at even intervals over the next ``seconds``."""
    start = clock.now
    for n in range(1, calls + 1):
        clock.now = start + seconds * n / calls
        assert ratelimit.try_take("123456789012", region, MODIFY) == 0


def test_the_estimate_is_what_aws_accepted_between_two_empty_moments(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    start = clock.now
    throttle_at(clock, region, start)  # the first empty moment: the reference
    take_evenly(clock, region, 69, 19.9)  # 69 calls accepted in 20 s ...
    throttle_at(clock, region, start + 20)  # ... then AWS's bucket is empty again
    learned = 69 / 20 * (1 - ratelimit.MARGIN)
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(learned)
    ratelimit._redis = None  # another worker (a new connection): the same learned state
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(learned)
    assert ratelimit.try_take("123456789012", region, MODIFY) == pytest.approx(1 / learned)
    clock.now = start + 20 + ratelimit.COOL_TOKENS / 5.0  # the cool-down holds the rate
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(learned)
    clock.now += 10  # then it probes up, additively and slowly
    probed = learned + 5.0 * ratelimit.PROBE * (10 + 10 * 10 / (2 * ratelimit.ACCELERATE_SECONDS))
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(probed)
    assert probed < learned + 0.2
    clock.now += 70  # 80 s after the cool-down, the probe has found AWS's full rate again
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(5.0)


def test_over_a_short_span_only_the_upper_bound_is_known(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    start = clock.now
    throttle_at(clock, region, start)
    clock.now = start + 0.5
    assert ratelimit.try_take("123456789012", region, MODIFY) == 0  # one call accepted, the next refused:
    throttle_at(clock, region, start + 0.8)  # AWS gave fewer than (1 + 1) / 0.8 = 2.5 per second
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(2.5 * (1 - ratelimit.MARGIN))
    throttle_at(clock, region, start + 0.85)  # a call that was in flight: no second cut
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(2.5 * (1 - ratelimit.MARGIN))


def test_a_throttle_right_after_the_reference_cuts_by_the_short_decrease(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    start = clock.now
    throttle_at(clock, region, start)
    throttle_at(clock, region, start + 0.2)  # nothing accepted, but 1 token in 0.2 s says little
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(5.0 * ratelimit.SHORT_DECREASE)


def test_a_throttle_after_a_long_quiet_only_resynchronises(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    throttle_at(clock, region, clock.now)
    for _ in range(30):  # busy, never throttled, for 300 s and more
        clock.now += 11
        ratelimit.try_take("123456789012", region, MODIFY)
    throttle_at(clock, region, clock.now)  # AWS's bucket may have refilled meanwhile: no estimate
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(5.0)


def simulate(clock, region, seconds, other_share=0.0, settle=0.0, latency=0.0, aws_start=100.0, until=None):
    """The engine (one caller at a time) against the simulator's own bucket
    (imdssim.throttle.TokenBucket, starting with ``aws_start`` tokens), with another client
    spending ``other_share`` of its refill (for the first ``until`` seconds, if given). A call
    reaches AWS ``latency`` after its token was taken, and its answer as long after that.
    Returns, for the time after ``settle`` seconds: (engine calls accepted, engine calls throttled,
    the other client's calls throttled)."""
    from imdssim.throttle import TokenBucket

    aws = TokenBucket(100, 5.0, now=clock.now)
    aws.tokens = aws_start
    begin = clock.now + settle
    end = clock.now + seconds
    stop_other = clock.now + until if until is not None else end
    engine_at = other_at = clock.now
    ok = throttled = other_throttled = 0

    def other_calls_until(moment):
        nonlocal other_at, other_throttled
        while other_share and other_at <= moment and other_at < stop_other:
            other_throttled += (not aws.take(other_at, 1.0)) and other_at >= begin
            other_at += 1 / (5.0 * other_share)

    while clock.now < end:
        clock.now = engine_at
        wait = ratelimit.try_take("123456789012", region, MODIFY)
        if wait:
            engine_at += max(wait, 1e-6)  # a worker sleeps at least that long
            continue
        arrives = clock.now + latency
        other_calls_until(arrives)
        accepted = aws.take(arrives, 1.0)
        engine_at = arrives + latency + 0.001
        if accepted:
            ok += clock.now >= begin
        else:
            throttled += clock.now >= begin
            clock.now = engine_at  # the answer is back: tell the controller
            engine_at += ratelimit.throttled("123456789012", region, MODIFY)
    return ok, throttled, other_throttled


def test_alone_the_engine_uses_all_of_aws_bucket(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    ok, throttled, _ = simulate(clock, region, 120)
    assert throttled == 0
    assert ok >= 0.98 * (100 + 5.0 * 120)


def test_alone_a_bucket_ahead_of_aws_costs_one_throttle_and_no_rate(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    # AWS's bucket holds 10 tokens fewer than ours (spent before our first call): one throttle
    # brings the two in step, and nobody else spends the bucket, so the rate stays AWS's.
    ok, throttled, _ = simulate(clock, region, 120, latency=0.02, aws_start=90)
    assert throttled == 1
    assert ok >= 0.98 * (90 + 5.0 * 120)
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(5.0)


@pytest.mark.parametrize("latency", [0.0, 0.03])
def test_with_another_client_spending_30_percent_it_settles_at_what_is_left(modify_buckets, clock, latency):
    region = f"test-{uuid.uuid4().hex[:8]}"
    # The first 60 s spend the burst and learn the rate; then 300 s are measured.
    ok, throttled, other_throttled = simulate(clock, region, 360, other_share=0.3, settle=60, latency=latency)
    rate = ok / 300
    assert 0.95 * 3.5 <= rate <= 1.01 * 3.5  # what the other client leaves: 70 % of 5 per second
    assert throttled <= 0.01 * (ok + throttled)
    assert other_throttled <= 0.03 * 1.5 * 300  # its own, not targeted: it meets the same empty moments


def test_the_whole_run_beside_another_client_is_throttled_at_most_2_percent(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    # As P5c measures it: from the start, burst and learning included.
    ok, throttled, _ = simulate(clock, region, 90, other_share=0.3, latency=0.02)
    assert ok >= 0.95 * (100 + 3.5 * 90)
    assert throttled <= 0.02 * (ok + throttled)


def test_when_the_other_client_stops_the_full_rate_comes_back_within_two_minutes(modify_buckets, clock):
    region = f"test-{uuid.uuid4().hex[:8]}"
    simulate(clock, region, 240, other_share=0.3, until=120, latency=0.02)
    assert ratelimit.learned_rate("123456789012", region, MODIFY) == pytest.approx(5.0)


def test_a_call_with_an_earlier_clock_is_not_credited_the_refill_twice(buckets, clock):
    region = drained_bucket()  # 3 spent at the clock's time
    clock.now += 0.5  # one token refilled (2 per second)
    assert ratelimit.try_take("123456789012", region, "TestAction") == 0
    clock.now -= 0.4  # another worker whose call left earlier arrives now
    assert ratelimit.try_take("123456789012", region, "TestAction") > 0
    clock.now += 0.5  # 0.1 s after the last token: 0.2 of a token, not the 1.0 a backwards clock credited
    assert ratelimit.try_take("123456789012", region, "TestAction") > 0
