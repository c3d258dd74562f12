"""Batches end, and the engine says when it is stuck: stopped instances waiting for their next
start, tracking rounds that follow a submit within a second, account defaults paced by their own
bucket, and the worker heartbeat the pages read."""

import time
from datetime import timedelta

import botocore.exceptions
import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from fleet import aws, changes, ratelimit, tasks, workers
from fleet.choices import BatchStatus, ChangeKind, ItemState
from fleet.engine import runner, tracking
from fleet.engine.targets import defaults, target_for
from fleet.models import ChangeBatch, ChangeItem, Instance
from fleet.tests.factories import (
    AccountFactory,
    ChangeBatchFactory,
    ChangeItemFactory,
    InstanceFactory,
    MetadataDefaultsFactory,
)

pytestmark = pytest.mark.django_db

MODIFY_OPTIONS = target_for(ChangeKind.INSTANCE_OPTIONS).action
MODIFY_DEFAULTS = target_for(ChangeKind.ACCOUNT_DEFAULTS).action
REGION = "us-east-1"


@pytest.fixture
def local_buckets(settings, monkeypatch):
    """In-process buckets of this test's own, at AWS's exact rates. These tests step through a
    batch's preflight run alone, then the runs after it: the preflight sends nothing after its
    DryRun (its cover has tests of its own, in test_apply_pacing)."""
    settings.IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS = 0
    settings.IMDSWEB_RATE_HEADROOM = 1.0
    settings.IMDSWEB_RATE_TIME_SCALE = 1.0
    settings.IMDSWEB_REDIS_URL = ""
    monkeypatch.setattr(ratelimit, "_redis", None)
    monkeypatch.setattr(ratelimit, "_local", ratelimit._LocalBuckets())


# ---------------------------------------------------------------- batch status


def test_a_batch_left_with_stopped_instances_is_done_for_now():
    batch = ChangeBatchFactory()
    ChangeItemFactory.create_batch(3, batch=batch, state=ItemState.APPLIED)
    waiting = ChangeItemFactory.create_batch(2, batch=batch, state=ItemState.PENDING, awaiting_start=True)
    assert batch.status == BatchStatus.AWAITING_START and batch.status.label == "done for now"
    counts = batch.counts()
    assert (counts["awaiting_start"], counts["active"], batch.active_count) == (2, 0, 0)
    annotated = ChangeBatch.objects.with_counts().get(pk=batch.pk)
    assert annotated.counts() == counts and annotated.status == BatchStatus.AWAITING_START

    moving = ChangeItemFactory(batch=batch, state=ItemState.PENDING)  # a running instance's change
    assert batch.status == BatchStatus.PENDING and batch.active_count == 1
    ChangeItem.objects.filter(pk=moving.pk).update(state=ItemState.FAILED)
    assert batch.status == BatchStatus.DONE_WITH_ERRORS  # errors are not hidden by "done for now"
    ChangeItem.objects.filter(pk__in=[w.pk for w in waiting]).update(state=ItemState.APPLIED)
    assert batch.status == BatchStatus.DONE_WITH_ERRORS and batch.counts()["awaiting_start"] == 0


def test_recent_changes_on_the_overview_count_stopped_instances_too(operator):
    # The overview fills the counts itself (fleet.posture.recent_batches): they still add up.
    batch = ChangeBatchFactory()
    ChangeItemFactory(batch=batch, state=ItemState.PENDING, awaiting_start=True)
    html = operator.get(reverse("fleet:overview")).content.decode()
    assert f'href="{batch.get_absolute_url()}"' in html and "done for now" in html


# ---------------------------------------------------------------- tracking stopped instances


def described(instance, state="running", metadata_state="pending", **options):
    return {
        "InstanceId": instance.instance_id,
        "State": {"Name": state},
        "MetadataOptions": {"State": metadata_state, "HttpTokens": "required", "HttpPutResponseHopLimit": 1,
                            "HttpEndpoint": "enabled", **options},
    }


@pytest.fixture
def aws_answers(monkeypatch, locmem_cache):
    """DescribeInstances answers by instance id, as the test sets them; records each call's ids."""
    answers, calls = {}, []

    def describe(account, region, ids, max_attempts=None):
        calls.append(set(ids))
        return [answers[i] for i in ids if i in answers]

    monkeypatch.setattr(aws, "describe_instances_by_ids", describe)
    return answers, calls


def pending_item(instance, submitted_minutes_ago=1, **fields):
    submitted = timezone.now() - timedelta(minutes=submitted_minutes_ago)
    return ChangeItemFactory(instance=instance, state=ItemState.PENDING, submitted_at=submitted, **fields)


def test_stopped_instance_waits_for_its_start_and_never_times_out_while_stopped(settings, aws_answers):
    answers, _calls = aws_answers
    settings.IMDSWEB_PENDING_TIMEOUT_MINUTES = 30
    account = AccountFactory()
    instance = InstanceFactory(account=account, instance_state="stopped")
    item = pending_item(instance, submitted_minutes_ago=3 * 24 * 60)  # stopped for three days
    answers[instance.instance_id] = described(instance, state="stopped")

    tracking.track_region(account, REGION)
    item.refresh_from_db()
    assert item.state == ItemState.PENDING and item.awaiting_start
    assert item.batch.status == BatchStatus.AWAITING_START

    # Started: AWS applies it now. The pending timeout starts over from the start, it does not
    # make the item stuck at once for the days it was stopped.
    answers[instance.instance_id] = described(instance, state="running")
    cache.clear()  # the stopped-instances check is due again
    tracking.track_region(account, REGION)
    item.refresh_from_db()
    assert item.state == ItemState.PENDING and not item.awaiting_start and item.pending_since
    assert item.batch.status == BatchStatus.PENDING

    answers[instance.instance_id] = described(instance, state="running", metadata_state="applied")
    tracking.track_region(account, REGION)
    item.refresh_from_db()
    assert item.state == ItemState.APPLIED and item.finished_at


def test_started_instance_still_pending_past_the_timeout_is_stuck(settings, aws_answers):
    answers, _calls = aws_answers
    settings.IMDSWEB_PENDING_TIMEOUT_MINUTES = 30
    account = AccountFactory()
    instance = InstanceFactory(account=account)
    item = pending_item(instance, submitted_minutes_ago=600, awaiting_start=False,
                        pending_since=timezone.now() - timedelta(minutes=31))
    answers[instance.instance_id] = described(instance)
    tracking.track_region(account, REGION)
    item.refresh_from_db()
    assert item.state == ItemState.STUCK and "on a running instance" in item.reason


def test_terminated_while_waiting_fails_at_once(aws_answers):
    answers, _calls = aws_answers
    account = AccountFactory()
    instance = InstanceFactory(account=account, instance_state="stopped")
    item = pending_item(instance, awaiting_start=True)
    answers[instance.instance_id] = described(instance, state="terminated")
    tracking.track_region(account, REGION)
    item.refresh_from_db()
    assert item.state == ItemState.FAILED and item.error_code == "InstanceTerminated" and not item.awaiting_start
    assert item.batch.status == BatchStatus.DONE_WITH_ERRORS


def test_stopped_instances_are_checked_rarely_running_ones_every_round(settings, aws_answers):
    answers, calls = aws_answers
    settings.IMDSWEB_TRACK_STOPPED_SECONDS = 60
    account = AccountFactory()
    stopped, running = InstanceFactory(account=account), InstanceFactory(account=account)
    pending_item(stopped, awaiting_start=True)
    pending_item(running)
    answers[stopped.instance_id] = described(stopped, state="stopped")
    answers[running.instance_id] = described(running)
    for _ in range(3):
        tracking.track_region(account, REGION)
    assert calls == [{stopped.instance_id, running.instance_id}, {running.instance_id}, {running.instance_id}]


# ---------------------------------------------------------------- tracking follows a submit


@pytest.fixture
def scheduled(monkeypatch):
    """Celery's apply_async / delay of the tracking task, recorded instead of sent."""
    sent = []
    monkeypatch.setattr(tasks.track_pending_region, "apply_async",
                        lambda args, countdown=None: sent.append((tuple(args), countdown)))
    monkeypatch.setattr(tasks.track_pending_region, "delay", lambda *args: sent.append((args, None)))
    monkeypatch.setattr(tasks.apply_region, "apply_async", lambda *args, **kwargs: None)
    return sent


def fake_modify(answer_state):
    def modify(account, region, instance_id, values, dry_run=False, token_taken=False):
        assert token_taken
        if dry_run:
            raise aws.DryRunSucceeded("req-dry")
        return {**values, "metadata_state": answer_state, "request_id": "req"}
    return modify


def test_a_pending_submit_is_tracked_a_second_later_not_at_the_beats_round(
        settings, monkeypatch, local_buckets, locmem_cache, scheduled):
    settings.IMDSWEB_TRACK_PENDING_SECONDS = 10.0
    settings.IMDSWEB_TRACK_FAST_SECONDS = 1.0
    monkeypatch.setattr(aws, "prepare_modify", lambda account, region: None)
    monkeypatch.setattr(aws, "modify_instance_metadata_options", fake_modify("pending"))
    account = AccountFactory()
    InstanceFactory.create_batch(3, account=account)
    changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2,
                           override_usage=True)

    tasks.apply_region(account.pk, REGION)  # the DryRun preflight alone: nothing pending yet
    assert scheduled == []
    tasks.apply_region(account.pk, REGION)
    assert scheduled == [((account.pk, REGION), 1.0)]
    # One round per region in flight: another runner's turn schedules nothing more, nor the beat.
    tasks.apply_region(account.pk, REGION)
    tasks.track_pending()
    assert len(scheduled) == 1


def test_a_tracking_round_follows_itself_while_changes_move_then_stops(
        settings, monkeypatch, aws_answers, scheduled):
    answers, _calls = aws_answers
    settings.IMDSWEB_TRACK_FAST_SECONDS = 1.0
    account = AccountFactory()
    running = InstanceFactory(account=account)
    item = pending_item(running)
    answers[running.instance_id] = described(running)
    assert tracking.claim_tracking(account.pk, REGION)  # as whoever scheduled this round did

    tasks.track_pending_region(account.pk, REGION)
    assert scheduled == [((account.pk, REGION), 1.0)]  # still pending: the next round in a second

    answers[running.instance_id] = described(running, metadata_state="applied")
    tasks.track_pending_region(account.pk, REGION)
    item.refresh_from_db()
    assert item.state == ItemState.APPLIED
    assert len(scheduled) == 1 and tracking.claim_tracking(account.pk, REGION)  # chain ended, guard free


def _pending_one_queued(answers, queued):
    """An account whose one running instance has a pending change (AWS still says pending) and
    ``queued`` more instances with changes queued for the runner."""
    account = AccountFactory()
    running = InstanceFactory(account=account)
    pending_item(running)
    answers[running.instance_id] = described(running)
    InstanceFactory.create_batch(queued, account=account, http_tokens="optional")
    if queued:
        changes.request_change(None, Instance.objects.filter(account=account).exclude(pk=running.pk),
                               changes.REQUIRE_IMDSV2, override_usage=True)
    assert ChangeItem.objects.claimable().filter(account=account).count() == queued
    return account, running


@pytest.mark.parametrize(("queued", "countdown"), [(0, 1.0), (3, 1.0), (10, 2.0), (24, 4.8), (100, 5.0)])
def test_rounds_wait_while_the_runner_still_has_many_to_send(settings, aws_answers, scheduled, queued, countdown):
    """While the region's runner has ``queued`` changes to send at AWS's 5 a second, the next round
    waits as long as sending them takes, at most IMDSWEB_TRACK_SENDING_SECONDS; a second when few
    are left."""
    answers, calls = aws_answers
    settings.IMDSWEB_TRACK_FAST_SECONDS = 1.0
    settings.IMDSWEB_TRACK_SENDING_SECONDS = 5.0
    settings.IMDSWEB_RATE_HEADROOM = 1.0
    settings.IMDSWEB_RATE_TIME_SCALE = 1.0
    account, running = _pending_one_queued(answers, queued)
    assert tracking.claim_tracking(account.pk, REGION)

    tasks.track_pending_region(account.pk, REGION)
    assert calls == [{running.instance_id}]
    assert scheduled == [((account.pk, REGION), countdown)]


def test_rounds_do_not_wait_for_the_runner_when_told_not_to(settings, aws_answers, scheduled):
    answers, _calls = aws_answers
    settings.IMDSWEB_TRACK_FAST_SECONDS = 1.0
    settings.IMDSWEB_TRACK_SENDING_SECONDS = 0
    account, _running = _pending_one_queued(answers, 30)
    assert tracking.claim_tracking(account.pk, REGION)
    tasks.track_pending_region(account.pk, REGION)
    assert scheduled == [((account.pk, REGION), 1.0)]


def test_a_throttled_round_is_retried_by_the_next_round_on_one_attempt(settings, monkeypatch, scheduled):
    """Tracking calls DescribeInstances once (the runner's one-attempt client): AWS's throttle does
    not end the chain of rounds, the next one a second later tries again."""
    settings.IMDSWEB_TRACK_FAST_SECONDS = 1.0
    attempts = []

    def throttled(account, region, ids, max_attempts=None):
        attempts.append(max_attempts)
        raise aws.RetryableAwsError("RequestLimitExceeded", "Request limit exceeded.")

    monkeypatch.setattr(aws, "describe_instances_by_ids", throttled)
    account = AccountFactory()
    item = pending_item(InstanceFactory(account=account))
    assert tracking.claim_tracking(account.pk, REGION)
    tasks.track_pending_region(account.pk, REGION)
    assert attempts == [1]
    assert scheduled == [((account.pk, REGION), 1.0)]  # the next round, not the beat's in 10 s
    item.refresh_from_db()
    assert item.state == ItemState.PENDING


def test_rounds_keep_to_half_the_describe_rate_when_many_are_pending(settings):
    settings.IMDSWEB_TRACK_FAST_SECONDS = 1.0
    settings.IMDSWEB_RATE_HEADROOM = 1.0
    settings.IMDSWEB_RATE_TIME_SCALE = 1.0
    # DescribeInstances refills at 20/s; 200 ids a call.
    assert tracking.next_round_in(1) == tracking.next_round_in(1_000) == 1.0  # 5 calls a second: a quarter
    assert tracking.next_round_in(10_000) == 5.0  # 50 calls every 5 s: half


def test_only_stopped_instances_left_no_fast_rounds(settings, aws_answers, scheduled):
    answers, _calls = aws_answers
    account = AccountFactory()
    stopped = InstanceFactory(account=account, instance_state="stopped")
    pending_item(stopped)
    answers[stopped.instance_id] = described(stopped, state="stopped")
    assert tracking.claim_tracking(account.pk, REGION)
    tasks.track_pending_region(account.pk, REGION)
    assert scheduled == []  # the beat's rounds check it every IMDSWEB_TRACK_STOPPED_SECONDS


# ---------------------------------------------------------------- account defaults' own bucket


class FakeEc2:
    """boto3's EC2 client as far as the defaults calls go: DryRun answers DryRunOperation."""

    def __init__(self, calls):
        self.calls = calls

    def modify_instance_metadata_defaults(self, DryRun=False, **params):  # noqa: N803 - boto3's names
        self.calls.append(("modify", DryRun))
        if DryRun:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "DryRunOperation", "Message": "would have succeeded"}},
                "ModifyInstanceMetadataDefaults")
        return {"Return": True, "ResponseMetadata": {"RequestId": "req-defaults"}}

    def get_instance_metadata_defaults(self):
        self.calls.append(("get", False))
        return {"AccountLevel": {"HttpTokens": "required"}}


@pytest.fixture
def fake_ec2(monkeypatch):
    calls = []
    monkeypatch.setattr(aws.ec2, "client", lambda *args, **kwargs: FakeEc2(calls))
    monkeypatch.setattr(aws, "prepare_modify", lambda account, region: None)
    return calls


@pytest.fixture
def tokens(monkeypatch):
    """The actions whose tokens were taken, in order."""
    taken = []
    real_take = ratelimit._take

    def take(account_id, region, action, only_if_available):
        wait = real_take(account_id, region, action, only_if_available)
        if wait == 0:
            taken.append(action)
        return wait

    real_take_some = ratelimit.take_some

    def take_some(account_id, region, action, most, least=1, within=0.0):
        got, wait = real_take_some(account_id, region, action, most, least, within)
        taken.extend([action] * got)
        return got, wait

    monkeypatch.setattr(ratelimit, "_take", take)
    monkeypatch.setattr(ratelimit, "take_some", take_some)
    return taken


@pytest.fixture
def sleeps(monkeypatch):
    """Every sleep of the runner and the rate limiter, recorded (and not slept)."""
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    return slept


def test_account_defaults_take_their_own_tokens_not_instance_options(
        local_buckets, locmem_cache, fake_ec2, tokens):
    account = AccountFactory()
    MetadataDefaultsFactory(account=account, region=REGION)
    # Another batch has spent this region's whole instance-options bucket.
    for _ in range(100):
        ratelimit.try_take(account.account_id, REGION, MODIFY_OPTIONS)
    batch = changes.request_defaults_change(None, [(account, REGION)], {"http_tokens": "required"})
    tokens.clear()

    assert runner.run_region(account.pk, REGION, budget=5) == 0.0  # the preflight, then a yield
    assert runner.run_region(account.pk, REGION, budget=5) is None
    assert batch.counts()[ItemState.APPLIED] == 1
    assert fake_ec2 == [("modify", True), ("modify", False), ("get", False)]  # preflight, change, read back
    # One defaults token per call (the bucket's 2), one for the read-back; no instance-options token.
    assert tokens == [MODIFY_DEFAULTS, MODIFY_DEFAULTS, defaults.GET_DEFAULTS]
    assert batch.items.get().request_id == "req-defaults"


def test_no_worker_sleeps_waiting_for_a_defaults_token(local_buckets, locmem_cache, fake_ec2, sleeps):
    account = AccountFactory()
    MetadataDefaultsFactory(account=account, region=REGION)
    batch = changes.request_defaults_change(None, [(account, REGION)], {"http_tokens": "required"})
    ratelimit.try_take(account.account_id, REGION, MODIFY_DEFAULTS)
    ratelimit.try_take(account.account_id, REGION, MODIFY_DEFAULTS)  # the bucket is empty

    again = runner.run_region(account.pk, REGION, budget=5)
    # The runner yields the worker and asks to run again when the token is there (0.5 s at 2/s).
    assert 0.2 < again <= 0.5
    assert not [s for s in sleeps if s > runner.MAX_SLEEP] and fake_ec2 == []
    assert batch.counts()[ItemState.QUEUED] == 1
    item = batch.items.get()
    assert item.attempts == 0 and item.claimed_at is None

    # The preflight spends the token it found (and yields); the change waits for the next one, again
    # yielding.
    ratelimit._local = ratelimit._LocalBuckets()
    ratelimit.try_take(account.account_id, REGION, MODIFY_DEFAULTS)  # one left
    assert runner.run_region(account.pk, REGION, budget=5) == 0.0 and fake_ec2 == [("modify", True)]
    again = runner.run_region(account.pk, REGION, budget=5)
    assert 0.2 < again <= 0.5 and fake_ec2 == [("modify", True)]
    item.refresh_from_db()
    assert item.state == ItemState.QUEUED and item.attempts == 0
    assert not [s for s in sleeps if s > runner.MAX_SLEEP]


# ---------------------------------------------------------------- fleet_change --wait


def test_wait_ends_when_only_stopped_instances_are_left(capsys, monkeypatch):
    account = AccountFactory(account_id="123456789012")
    InstanceFactory(account=account, instance_state="stopped")
    real_request = changes.request_change

    def request_and_submit(*args, **kwargs):
        # As if a worker had submitted it at once and the tracker had seen the instance stopped.
        batch = real_request(*args, **kwargs)
        batch.items.update(state=ItemState.PENDING, awaiting_start=True, submitted_at=timezone.now())
        return batch

    monkeypatch.setattr(changes, "request_change", request_and_submit)
    started = time.monotonic()
    call_command("fleet_change", "require-imdsv2", "--account", account.account_id, "--override-usage", "--wait",
                 "--timeout", "5")
    assert time.monotonic() - started < 2  # not the timeout
    out = capsys.readouterr().out
    assert "finished: pending=1" in out and "1 will apply when started" in out


# ---------------------------------------------------------------- the worker heartbeat


def test_heartbeat_names_the_worker_and_stalls_only_with_old_queued_items(settings, locmem_cache, monkeypatch):
    settings.IMDSWEB_WORKER_STALL_SECONDS = 60
    monkeypatch.setattr(workers, "_written_at", 0.0)
    assert workers.stalled() is None  # nothing queued
    item = ChangeItemFactory(state=ItemState.QUEUED)
    assert workers.stalled() is None  # queued just now: give a worker its minute
    ChangeItem.objects.filter(pk=item.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    stall = workers.stalled()
    assert stall["queued"] == 1 and stall["last"] is None and "celery -A imdsweb worker" in stall["worker_command"]
    assert workers.stalled(batch=ChangeBatchFactory()) is None  # another batch has nothing queued

    workers.heartbeat("worker0@host-a")
    assert workers.stalled() is None
    assert workers.last_heartbeat()["hostname"] == "worker0@host-a"
    cache.set(workers.KEY, {"hostname": "worker0@host-a", "at": time.time() - 120}, None)
    stall = workers.stalled(batch=item.batch)
    assert stall["last"]["hostname"] == "worker0@host-a" and stall["queued"] == 1


def test_celery_signal_writes_the_heartbeat(locmem_cache, monkeypatch):
    monkeypatch.setattr(workers, "_written_at", 0.0)

    class Request:
        hostname = "celery@box-7"

    class Task:
        request = Request()

    tasks.worker_took_work(task=Task())
    assert workers.last_heartbeat()["hostname"] == "celery@box-7"


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif("'postgresql' not in __import__('django.conf').conf.settings.DATABASES['default']['ENGINE']",
                    reason="SQLite connections are closed after every task (CONN_MAX_AGE 0)")
def test_a_worker_keeps_its_database_connection_between_tasks(monkeypatch):
    """Celery's Django fix-up, as the worker runs it around each task, keeps the connection
    (settings.CELERY_DB_REUSE_MAX) and so does ours until the connection is older than
    CONN_MAX_AGE: a task does not pay for a new PostgreSQL backend."""
    from celery.fixups.django import DjangoWorkerFixup
    from django.db import connection

    from imdsweb.celery import app

    class Request:
        is_eager = False
        hostname = "celery@box-7"

    class Task:
        request = Request()

    def backend():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 60)
    connection.close()
    fixup = DjangoWorkerFixup(app)
    first = backend()
    for _ in range(3):  # as the worker runs three tasks
        fixup.on_task_prerun(sender=Task())
        tasks.reuse_database_connections(task=Task())
        assert backend() == first
        tasks.reuse_database_connections(task=Task())
        fixup.on_task_postrun(sender=Task())
    connection.close_at = time.monotonic() - 1  # older than CONN_MAX_AGE
    tasks.reuse_database_connections(task=Task())
    assert backend() != first


# ---------------------------------------------------------------- the sweeper and a waiting runner


def test_the_sweeper_starts_no_second_runner_where_one_waits_for_its_next_run(settings, monkeypatch, locmem_cache):
    """At AWS's rate a region's runner spends nearly all its time queued for its next run, holding
    no lock: the mark of that run keeps the sweeper from starting a second runner there (which
    the lock would stop, but only after it had cost a run) until the run is a submit timeout late,
    when it is presumed lost with its worker."""
    from fleet.engine import locks, sweep
    from fleet.engine.locks import RegionLock

    settings.IMDSWEB_SUBMIT_TIMEOUT_SECONDS = 5
    account = AccountFactory()
    InstanceFactory(account=account)
    changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2,
                           override_usage=True)
    assert sweep.sweep() == [(account.pk, REGION)]  # queued and no runner: it gets one

    queued = []
    monkeypatch.setattr(tasks.tracking, "tracking_wanted", lambda account_pk, region: False)
    monkeypatch.setattr(tasks.apply_region, "apply_async",
                        lambda args, kwargs, countdown: queued.append(countdown))
    monkeypatch.setattr(runner, "run_region", lambda *args, **kwargs: 2.0)  # AWS's refill is 2 s away
    tasks.apply_region(account.pk, REGION)
    assert queued == [2.0]
    mark = cache.make_key(locks._queued_key(account.pk, REGION))
    assert cache._expire_info[mark] - time.time() == pytest.approx(7, abs=0.5)  # its wait and the submit timeout
    assert RegionLock.attended(account.pk, REGION) and not RegionLock.held(account.pk, REGION)
    assert sweep.sweep() == []
    cache.delete(locks._queued_key(account.pk, REGION))  # the mark expired: that run is lost
    assert sweep.sweep() == [(account.pk, REGION)]


def test_a_runner_whose_mark_cannot_be_written_still_queues_its_next_run(settings, monkeypatch, locmem_cache):
    from fleet.engine.locks import RegionLock

    queued = []
    monkeypatch.setattr(tasks.tracking, "tracking_wanted", lambda account_pk, region: False)
    monkeypatch.setattr(tasks.apply_region, "apply_async", lambda args, kwargs, countdown: queued.append(args))
    monkeypatch.setattr(runner, "run_region", lambda *args, **kwargs: 1.0)

    def down(*args, **kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(RegionLock, "queued_again", staticmethod(down))
    tasks.apply_region(7, REGION)
    assert queued == [(7, REGION)]
