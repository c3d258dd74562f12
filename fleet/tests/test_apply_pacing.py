"""The runner never calls AWS faster than its bucket allows (no call without a token)."""

import time

import pytest
from django.core.cache import cache

from fleet import aws, changes, ratelimit
from fleet.choices import ItemState
from fleet.engine import runner
from fleet.models import Instance
from fleet.tests.factories import AccountFactory, InstanceFactory

pytestmark = pytest.mark.django_db


def test_runner_paces_modify_calls_to_the_bucket(settings, monkeypatch):
    settings.IMDSWEB_RATE_LIMITS = {**settings.IMDSWEB_RATE_LIMITS, "ModifyInstanceMetadataOptions": (3, 40.0)}
    settings.IMDSWEB_RATE_HEADROOM = 1.0
    settings.IMDSWEB_REDIS_URL = ""  # in-process buckets: this test's own
    monkeypatch.setattr(ratelimit, "_redis", None)
    monkeypatch.setattr(ratelimit, "_local", ratelimit._LocalBuckets())
    account = AccountFactory()
    for _ in range(30):
        InstanceFactory(account=account)
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    calls = []

    def fake_modify(account, region, instance_id, values, dry_run=False, token_taken=False):
        ratelimit.acquire(account.account_id, region, "ModifyInstanceMetadataOptions", already_taken=token_taken)
        calls.append(time.monotonic())
        if dry_run:
            raise aws.DryRunSucceeded("req-dry")
        return {**values, "metadata_state": "applied", "request_id": "req"}

    monkeypatch.setattr(aws, "modify_instance_metadata_options", fake_modify)
    start = time.monotonic()
    deadline = start + 10
    while batch.items.filter(state=ItemState.QUEUED).exists() and time.monotonic() < deadline:
        again = runner.run_region(account.pk, "us-east-1", budget=5)
        if again:
            time.sleep(again)
    assert batch.counts()[ItemState.APPLIED] == 30
    assert len(calls) == 31  # one DryRun preflight for the batch in this region, then one call per item
    # 31 calls (one DryRun preflight) from a bucket of 3 refilled at 40/s (a token every 25 ms, under
    # the runner's 50 ms sleep threshold): never ahead of the bucket.
    for n, at in enumerate(calls, start=1):
        assert n <= 3 + 40 * (at - start) + 1, f"call {n} came {at - start:.3f}s after the start"
    assert calls[-1] - start >= (len(calls) - 3 - 1) / 40


def run_preflight(account, region="us-east-1"):
    """A batch's first run in a region makes its DryRun preflight and yields, so that every
    region's first call goes out before any region's burst; with no cover
    (``_local_buckets``) it sends nothing more, and the items go in the next runs."""
    assert runner.run_region(account.pk, region, budget=5) == 0.0


def _modify_failing_at(n, error):
    """A ModifyInstanceMetadataOptions that accepts the DryRun and answers pending, except that its
    ``n``-th real call raises ``error``."""
    calls = []

    def modify(account, region, instance_id, values, dry_run=False, token_taken=False):
        if dry_run:
            raise aws.DryRunSucceeded("req-dry")
        calls.append(instance_id)
        if len(calls) == n:
            raise error
        return {**values, "metadata_state": "pending", "request_id": f"req-{instance_id}"}

    return modify


def _local_buckets(settings, monkeypatch, capacity, refill):
    # These tests look at the runs after the preflight's: it sends nothing after its DryRun (its
    # cover has tests of its own).
    settings.IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS = 0
    settings.IMDSWEB_RATE_LIMITS = {**settings.IMDSWEB_RATE_LIMITS, "ModifyInstanceMetadataOptions": (capacity, refill)}
    settings.IMDSWEB_RATE_HEADROOM = 1.0
    settings.IMDSWEB_REDIS_URL = ""
    monkeypatch.setattr(ratelimit, "_redis", None)
    monkeypatch.setattr(ratelimit, "_local", ratelimit._LocalBuckets())


def _fake_modify(events):
    def fake_modify(account, region, instance_id, values, dry_run=False, token_taken=False):
        ratelimit.acquire(account.account_id, region, "ModifyInstanceMetadataOptions", already_taken=token_taken)
        events.append("dry run" if dry_run else "modify")
        if dry_run:
            raise aws.DryRunSucceeded("req-dry")
        return {**values, "metadata_state": "pending", "request_id": f"req-{instance_id}"}

    return fake_modify


def test_runner_builds_its_aws_client_before_taking_a_token(settings, monkeypatch, aws_env):
    # A client built after the token was taken (AssumeRole, a cold process) holds the token while
    # AWS's bucket, which only sees the call, keeps its own schedule: our bucket would run ahead.
    _local_buckets(settings, monkeypatch, 100, 5.0)
    account = AccountFactory()
    InstanceFactory(account=account)
    changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    events = []
    monkeypatch.setattr(aws, "prepare_modify", lambda account, region: events.append("prepare"))
    real_take_some = ratelimit.take_some
    monkeypatch.setattr(ratelimit, "take_some",
                        lambda *args, **kwargs: events.append("take") or real_take_some(*args, **kwargs))
    monkeypatch.setattr(aws, "modify_instance_metadata_options", _fake_modify(events))
    run_preflight(account)
    assert runner.run_region(account.pk, "us-east-1", budget=5) is None
    # Each run builds the client before it takes a token: the preflight's run, then the item's.
    assert events == ["prepare", "take", "dry run", "prepare", "take", "modify"]


def test_runner_db_statements_per_chunk(settings, monkeypatch, aws_env):
    """Per chunk of IMDSWEB_RUNNER_CHUNK items: read them with their instances, then their batch;
    claim them (one conditional UPDATE). Per item only its answer, on its instance and itself in
    one commit (a worker that dies loses at most the call under way): one statement on PostgreSQL,
    two in a transaction elsewhere."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _local_buckets(settings, monkeypatch, 100, 5.0)
    settings.IMDSWEB_RUNNER_CHUNK = 10
    monkeypatch.setattr(aws, "prepare_modify", lambda account, region: None)
    monkeypatch.setattr(aws, "modify_instance_metadata_options", _fake_modify([]))
    counts = {}
    for size in (10, 30):
        account = AccountFactory()
        for _ in range(size):
            InstanceFactory(account=account)
        batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
        run_preflight(account)
        with CaptureQueriesContext(connection) as queries:
            assert runner.run_region(account.pk, "us-east-1", budget=5) is None
        assert batch.counts()[ItemState.PENDING] == size
        counts[size] = [q["sql"] for q in queries if not q["sql"].upper().startswith(("SAVEPOINT", "RELEASE"))]
    per_item = 1 if connection.vendor == "postgresql" else 2
    assert len(counts[30]) - len(counts[10]) == 2 * 3 + 20 * per_item  # two more chunks of 3, twenty more items
    items = list(batch.items.all())
    # The answer is on each instance too.
    assert set(Instance.objects.filter(account=account).values_list("metadata_state", "http_tokens")) == {
        ("pending", "required")}
    assert all(item.attempts == 1 and item.submitted_at and item.claimed_at for item in items)
    # Each item keeps its own answer: request id and time.
    assert len({item.request_id for item in items}) == 30
    assert len({item.submitted_at for item in items}) == 30


def test_runner_sends_running_instances_before_those_that_wait_for_a_start(settings, monkeypatch, aws_env):
    # Every call spends a token of the same bucket; a stopped instance's change waits for its next
    # start anyway, so the running fleet goes first and is compliant sooner.
    _local_buckets(settings, monkeypatch, 100, 5.0)
    monkeypatch.setattr(aws, "prepare_modify", lambda account, region: None)
    account = AccountFactory()
    states = ["stopped", "running", "stopping", "running", "pending", "stopped", "running"]
    for state in states:
        InstanceFactory(account=account, instance_state=state)
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    sent = []

    def fake_modify(account, region, instance_id, values, dry_run=False, token_taken=False):
        ratelimit.acquire(account.account_id, region, "ModifyInstanceMetadataOptions", already_taken=token_taken)
        if dry_run:
            raise aws.DryRunSucceeded("req-dry")
        sent.append(Instance.objects.get(account=account, instance_id=instance_id).instance_state)
        return {**values, "metadata_state": "pending", "request_id": "req"}

    monkeypatch.setattr(aws, "modify_instance_metadata_options", fake_modify)
    run_preflight(account)
    assert runner.run_region(account.pk, "us-east-1", budget=5) is None
    assert sent == ["running", "running", "pending", "running", "stopped", "stopping", "stopped"]
    # Within each group the items keep their order.
    submitted = list(batch.items.order_by("submitted_at", "id").values_list("instance__instance_state", "id"))
    running_ids = [pk for state, pk in submitted if state not in ("stopped", "stopping")]
    waiting_ids = [pk for state, pk in submitted if state in ("stopped", "stopping")]
    assert running_ids == sorted(running_ids) and waiting_ids == sorted(waiting_ids)
    assert batch.counts()[ItemState.PENDING] == len(states)


def test_an_account_defaults_item_is_not_held_behind_stopped_instances():
    from fleet.tests.factories import ChangeItemFactory

    account = AccountFactory()
    stopped = ChangeItemFactory(instance=InstanceFactory(account=account, instance_state="stopped"))
    defaults = ChangeItemFactory(batch=stopped.batch, instance=None, account=account, region="us-east-1")
    assert runner._next_chunk(account, "us-east-1", 10)[0] == [defaults]
    defaults.delete()
    assert runner._next_chunk(account, "us-east-1", 10)[0] == [stopped]  # nothing else left: the stopped one goes


def test_a_throttle_mid_chunk_keeps_the_answers_before_it_and_returns_the_rest_unsent(settings, monkeypatch, aws_env):
    """AWS answered the first two of a chunk and throttled the third: the two are recorded, the
    third goes back to the queue with AWS's error (an attempt counted), the rest go back unsent
    (no attempt counted), and the throttle teaches the pacing."""
    account, batch = _chunk_setup(settings, monkeypatch, 6)
    monkeypatch.setattr(aws, "modify_instance_metadata_options", _modify_failing_at(
        3, aws.RetryableAwsError("RequestLimitExceeded", "Request limit exceeded.")))
    throttles = []
    real_throttled = ratelimit.throttled
    monkeypatch.setattr(ratelimit, "throttled", lambda *args: throttles.append(args) or real_throttled(*args))
    run_preflight(account)
    again = runner.run_region(account.pk, "us-east-1", budget=5)
    assert again and again > 0 and len(throttles) == 1
    items = list(batch.items.order_by("id"))
    assert [item.state for item in items] == [ItemState.PENDING] * 2 + [ItemState.QUEUED] * 4
    assert [item.attempts for item in items] == [1, 1, 1, 0, 0, 0]
    assert items[2].error_code == "RequestLimitExceeded" and not items[3].error_code
    assert all(item.claimed_at is None for item in items[2:])
    assert [item.request_id for item in items[:2]] == [f"req-{item.instance.instance_id}" for item in items[:2]]


def test_a_chunk_claims_only_what_is_still_queued(aws_env):
    """Between the runner's read and its claim, one item was cancelled: the claim takes the others."""
    from fleet.models import ChangeItem

    account = AccountFactory()
    for _ in range(3):
        InstanceFactory(account=account)
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    chunk, _action = runner._next_chunk(account, "us-east-1", 10)
    assert len(chunk) == 3
    ChangeItem.objects.filter(pk=chunk[1].pk).update(state=ItemState.CANCELLED)
    claimed = ChangeItem.objects.claim_all(chunk)
    assert [item.pk for item in claimed] == [chunk[0].pk, chunk[2].pk]
    assert all(item.state == ItemState.SUBMITTING and item.attempts == 1 for item in claimed)
    assert batch.items.get(pk=chunk[1].pk).state == ItemState.CANCELLED


class _FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _slow_modify(clock):
    """A ModifyInstanceMetadataOptions whose every call takes 0.1 s of ``clock``, answering pending."""

    def modify(account, region, instance_id, values, dry_run=False, token_taken=False):
        clock.now += 0.1
        if dry_run:
            raise aws.DryRunSucceeded("req-dry")
        return {**values, "metadata_state": "pending", "request_id": f"req-{instance_id}"}

    return modify


def _chunk_setup(settings, monkeypatch, count):
    _local_buckets(settings, monkeypatch, 100, 5.0)
    settings.IMDSWEB_RUNNER_CHUNK = 10
    monkeypatch.setattr(runner, "_seconds_per_call", 0.01)  # what this process learned so far
    monkeypatch.setattr(aws, "prepare_modify", lambda account, region: None)
    account = AccountFactory()
    for _ in range(count):
        InstanceFactory(account=account)
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    return account, batch


def _tokens_left(account):
    return ratelimit.take_some(account.account_id, "us-east-1", "ModifyInstanceMetadataOptions", most=100)[0]


def test_a_chunk_stops_at_the_runs_deadline_and_gives_the_rest_back(settings, monkeypatch, aws_env):
    """The slice is checked before each call: a chunk that would run past it stops, its unsent
    items go back to the queue (no attempt counted) and their tokens to the bucket."""
    account, batch = _chunk_setup(settings, monkeypatch, 10)
    clock = _FakeClock()
    monkeypatch.setattr(time, "monotonic", clock)

    monkeypatch.setattr(aws, "modify_instance_metadata_options", _slow_modify(clock))
    run_preflight(account)
    # Calls start at 0, 0.1 and 0.2 s into the run: the fourth would start at 0.3 s, past 0.25 s.
    assert runner.run_region(account.pk, "us-east-1", budget=0.25) == 0.0
    items = list(batch.items.order_by("id"))
    assert [item.state for item in items].count(ItemState.PENDING) == 3
    waiting = [item for item in items if item.state == ItemState.QUEUED]
    assert len(waiting) == 7 and all(item.attempts == 0 and item.claimed_at is None for item in waiting)
    # 100 - 1 (the DryRun) - 10 (the chunk) + 7 given back
    assert _tokens_left(account) == 96


def test_a_run_that_waited_sends_what_aws_refilled_meanwhile_before_its_slice_ends(settings, monkeypatch, aws_env):
    """On busy cores a slice of wall time sends few items while the wait for the next turn grows:
    a run that waited 1.2 s beyond its time sends the 6 tokens AWS refilled meanwhile (5/s) even
    past its deadline, so the region's bucket does not sit full until its next turn; then the slice
    ends as before. A run that did not wait stops at its deadline."""
    account, batch = _chunk_setup(settings, monkeypatch, 30)
    clock = _FakeClock()
    monkeypatch.setattr(time, "monotonic", clock)

    monkeypatch.setattr(aws, "modify_instance_metadata_options", _slow_modify(clock))  # the cores are busy
    run_preflight(account)

    def pending():
        return batch.items.filter(state=ItemState.PENDING).count()

    assert runner.run_region(account.pk, "us-east-1", budget=0.25) == 0.0
    assert pending() == 3  # calls at 0, 0.1 and 0.2 s: the fourth would start past 0.25 s
    assert runner.run_region(account.pk, "us-east-1", budget=0.25, waited=1.2) == 0.0
    assert pending() == 3 + 6  # 1.2 s x 5/s, past the deadline
    # At most a chunk (IMDSWEB_RUNNER_CHUNK 10), however long the wait.
    assert runner.run_region(account.pk, "us-east-1", budget=0.25, waited=60) == 0.0
    assert pending() == 3 + 6 + 10
    # A slice too short for more than two calls still reads all six in one chunk.
    reads = []
    real_next_chunk = runner._next_chunk
    monkeypatch.setattr(runner, "_next_chunk", lambda *args: reads.append(args[2]) or real_next_chunk(*args))
    assert runner.run_region(account.pk, "us-east-1", budget=0.01, waited=1.2) == 0.0
    assert pending() == 3 + 6 + 10 + 6 and reads == [6]
    unsent = batch.items.filter(state=ItemState.QUEUED)
    assert unsent.count() == 5 and all(item.attempts == 0 for item in unsent)


def test_the_preflights_run_sends_its_cover_then_yields(settings, monkeypatch, aws_env):
    """A batch's first run in a region: the DryRun, then two seconds of AWS's refill (10 items at
    5/s) however much is queued and however long its slice, then a yield behind the other regions'
    first runs. AWS's bucket only refills once a call took from it: the cover keeps the region's
    below full until its next turn, where a DryRun alone would leave it full again in 0.2 s."""
    account, batch = _chunk_setup(settings, monkeypatch, 30)
    settings.IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS = 2.0
    events = []
    monkeypatch.setattr(aws, "modify_instance_metadata_options", _fake_modify(events))
    assert runner.run_region(account.pk, "us-east-1", budget=5) == 0.0
    assert events == ["dry run"] + ["modify"] * 10
    assert batch.counts()[ItemState.PENDING] == 10 and batch.counts()[ItemState.QUEUED] == 20
    batch.refresh_from_db()
    assert batch.preflight_report == {f"{account.account_id}/us-east-1": {"ok": True, "request_id": "req-dry"}}
    # The next run is an ordinary one: its slice, the burst's tokens there.
    assert runner.run_region(account.pk, "us-east-1", budget=5) is None
    assert events.count("dry run") == 1 and batch.counts()[ItemState.PENDING] == 30


def test_a_preflight_run_with_less_queued_than_its_cover_finishes_the_region(settings, monkeypatch, aws_env):
    account, batch = _chunk_setup(settings, monkeypatch, 3)
    settings.IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS = 2.0
    events = []
    monkeypatch.setattr(aws, "modify_instance_metadata_options", _fake_modify(events))
    assert runner.run_region(account.pk, "us-east-1", budget=5) is None
    assert events == ["dry run", "modify", "modify", "modify"] and batch.counts()[ItemState.PENDING] == 3


def test_the_preflights_run_leaves_the_posture_refresh_to_later_runs(settings, monkeypatch, aws_env):
    """The batch's other regions wait for their first runs meanwhile (their buckets full): the
    preflight's run only starts the region's refresh period; the run that ends its queue refreshes."""
    from fleet import posture

    account, batch = _chunk_setup(settings, monkeypatch, 30)
    settings.IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS = 2.0
    monkeypatch.setattr(aws, "modify_instance_metadata_options", _fake_modify([]))
    periods, refreshes = [], []  # the first period is due, later ones not yet
    monkeypatch.setattr(runner, "posture_refresh_due", lambda *args: periods.append(args) or len(periods) == 1)
    monkeypatch.setattr(posture, "refresh_region", lambda *args: refreshes.append(args))
    assert runner.run_region(account.pk, "us-east-1", budget=5) == 0.0
    assert batch.counts()[ItemState.PENDING] == 10 and len(periods) == 1 and refreshes == []
    assert runner.run_region(account.pk, "us-east-1", budget=5) is None
    assert refreshes == [(account.pk, "us-east-1")]


def test_the_runner_task_tells_its_next_run_when_it_is_due(monkeypatch, db):
    """apply_region queues the next run with the time it asked for; that run learns how long it
    waited beyond it."""
    from fleet import tasks

    queued, runs = [], []
    monkeypatch.setattr(tasks.tracking, "tracking_wanted", lambda account_pk, region: False)
    monkeypatch.setattr(tasks.apply_region, "apply_async",
                        lambda args, kwargs, countdown: queued.append((args, kwargs, countdown)))
    monkeypatch.setattr(runner, "run_region", lambda account_pk, region, waited: runs.append(waited) or 2.0)
    before = time.time()
    tasks.apply_region(7, "us-east-1")
    [(args, kwargs, countdown)] = queued
    assert args == (7, "us-east-1") and countdown == 2.0
    assert before + 2.0 <= kwargs["due"] <= time.time() + 2.0
    tasks.apply_region(7, "us-east-1", due=time.time() - 1.5)  # ran 1.5 s after its time
    assert runs[0] == 0.0 and 1.5 <= runs[1] < 3.0


def test_an_unexpected_error_mid_chunk_gives_the_unsent_items_back(settings, monkeypatch, aws_env):
    """Not an AWS answer (a bug, a lost database): the item under way stays claimed for the
    sweeper, as a dead worker's would; the items after it go back to the queue with their tokens."""
    account, batch = _chunk_setup(settings, monkeypatch, 6)
    monkeypatch.setattr(aws, "modify_instance_metadata_options", _modify_failing_at(2, RuntimeError("something broke")))
    run_preflight(account)
    with pytest.raises(RuntimeError):
        runner.run_region(account.pk, "us-east-1", budget=5)
    states = [item.state for item in batch.items.order_by("id")]
    assert states == [ItemState.PENDING, ItemState.SUBMITTING] + [ItemState.QUEUED] * 4
    assert _tokens_left(account) == 100 - 1 - 6 + 4


def test_a_run_whose_take_empties_the_bucket_ends_without_reading_the_queue_again(settings, monkeypatch, aws_env):
    """At AWS's rate almost every run gets fewer tokens than the items it read: it sends those,
    then asks the bucket (not the queue) when the next gather will be there, and ends."""
    account, batch = _chunk_setup(settings, monkeypatch, 30)
    settings.IMDSWEB_RUNNER_CHUNK = 20
    monkeypatch.setattr(ratelimit, "_now", lambda: 5000.0)  # no refill during the test
    monkeypatch.setattr(aws, "modify_instance_metadata_options", _fake_modify([]))
    assert ratelimit.take_some(account.account_id, "us-east-1", "ModifyInstanceMetadataOptions", most=87)[0] == 87
    run_preflight(account)  # its DryRun takes one token: 12 left
    reads = []
    real_next_chunk = runner._next_chunk
    monkeypatch.setattr(runner, "_next_chunk", lambda *args: reads.append(args) or real_next_chunk(*args))
    again = runner.run_region(account.pk, "us-east-1", budget=5)
    # One read of 20 that got the 12 tokens left.
    assert len(reads) == 1
    assert batch.counts()[ItemState.PENDING] == 12 and batch.counts()[ItemState.QUEUED] == 18
    # The next gather: the 8 items read without a token, at 5 a second, the bucket empty.
    assert again == pytest.approx(8 / 5.0)
    assert _tokens_left(account) == 0


def test_a_5xx_after_calls_aws_took_backs_off_from_a_fresh_streak(settings, monkeypatch, aws_env, locmem_cache):
    """Under sporadic errors a run rarely ends without one: the streak is the region's errors
    since AWS last took a call, so an error after two accepted calls backs off at most 1 s (a
    streak of one), not the cap a streak no clean run ended would reach."""
    from fleet.engine import locks

    account, batch = _chunk_setup(settings, monkeypatch, 6)
    monkeypatch.setattr(locks.random, "uniform", lambda low, high: high)  # the jitter's worst case
    cache.set(locks._backoff_key(account.pk, "us-east-1"), 9)  # nine errors in a row before
    monkeypatch.setattr(aws, "modify_instance_metadata_options", _modify_failing_at(
        3, aws.RetryableAwsError("InternalError", "An internal error has occurred.")))
    run_preflight(account)
    assert runner.run_region(account.pk, "us-east-1", budget=5) == 1.0
    assert [item.state for item in batch.items.order_by("id")][:3] == [ItemState.PENDING] * 2 + [ItemState.QUEUED]


def test_errors_in_a_row_back_off_up_to_botocores_cap(monkeypatch, locmem_cache):
    from fleet.engine import locks

    monkeypatch.setattr(locks.random, "uniform", lambda low, high: high)
    assert [locks.backoff(7, "us-east-1") for _ in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0, 20.0]
    locks.clear_backoff(7, "us-east-1")
    assert locks.backoff(7, "us-east-1") == 1.0
