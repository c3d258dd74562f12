"""Staged rollouts end to end: the simulator as AWS (with an instance whose software still calls
IMDSv1), real Celery workers and beat, a private Redis.

One simulated minute is a second here (time scale 60, for the simulator's clock and the soak's),
so a five-minute soak takes five seconds.
"""

import itertools
import time
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from fleet import changes, sync
from fleet.changes import rollout
from fleet.choices import BatchEventKind, ItemState, RolloutState, WaveMode
from fleet.models import Account, ChangeBatch, Instance
from fleet.tests.factories import UserFactory
from fleet.tests.live import module_stack, wait_for
from imdssim.testing import image_id

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

_accounts = (f"8888{n:08d}" for n in itertools.count(1))
REGION = "us-east-1"

live_stack = module_stack(time_scale=60, apply_delay=0.5, env={"IMDSWEB_ROLLOUT_TICK_SECONDS": "1"})


@pytest.fixture
def stack(live_stack):
    return live_stack.fresh()


def seed(stack, count, canaries=0):
    """``count`` instances allowing IMDSv1, the first ``canaries`` tagged Canary=yes; synced."""
    account_id = next(_accounts)
    ec2 = stack.ec2(account_id, REGION)
    ids = [i["InstanceId"] for i in ec2.run_instances(
        ImageId=image_id(ec2), MinCount=count, MaxCount=count, MetadataOptions={"HttpTokens": "optional"})["Instances"]]
    if canaries:
        ec2.create_tags(Resources=ids[:canaries], Tags=[{"Key": "Canary", "Value": "yes"}])
    account = Account.objects.create(account_id=account_id, name=f"acct-{account_id[-3:]}", regions=[REGION],
                                     role_arn=f"arn:aws:iam::{account_id}:role/imdsweb-reader")
    sync.sync_region(account, REGION)
    return account, ec2, ids


def tokens_in_aws(ec2, ids):
    reservations = ec2.describe_instances(InstanceIds=list(ids))["Reservations"]
    return {i["InstanceId"]: i["MetadataOptions"]["HttpTokens"] for r in reservations for i in r["Instances"]}


def test_an_imdsv1_caller_in_the_canary_pauses_the_batch_and_its_wave_rolls_back(stack):
    account, ec2, ids = seed(stack, count=5, canaries=2)
    caller, quiet_canary, rest = ids[0], ids[1], ids[2:]
    stack.sim.set_workload(account.account_id, REGION, [caller], calls_per_minute=30)
    operator = UserFactory(role="operator")
    options = rollout.RolloutOptions(mode=WaveMode.TAG, canary="Canary=yes", soak_minutes=30)
    batch = changes.request_change(operator, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2,
                                   override_usage=True, rollout=options)
    assert batch.waves == 2

    def paused():
        batch.refresh_from_db()
        return batch.rollout_state == RolloutState.PAUSED
    wait_for(paused, timeout=90, message="the soak to pause the batch", stack=stack)
    # Paused well before the 30-minute (30 s) soak would have ended, naming the caller only.
    assert caller in batch.rollout_note and quiet_canary not in batch.rollout_note
    assert "Likely breakage" in batch.rollout_note and batch.breakage_flagged_at is not None
    assert set(batch.items.filter(breakage_suspected=True).values_list("instance__instance_id", flat=True)) == {caller}
    # The rest was never sent: still queued here, still optional in AWS.
    assert set(batch.items.filter(wave=1).values_list("state", flat=True)) == {ItemState.QUEUED}
    aws_now = tokens_in_aws(ec2, ids)
    assert {aws_now[i] for i in rest} == {"optional"}
    assert aws_now[caller] == aws_now[quiet_canary] == "required"
    modified = stack.sim.stats()["modify_calls_by_instance"]
    assert not any(modified.get(i) for i in rest)
    assert batch.events.filter(kind=BatchEventKind.PAUSED, text__contains=caller).exists()

    # Roll back the wave: the canaries get IMDSv1 back, the rest is cancelled, the rollout stops.
    plan = changes.plan_rollback(batch, wave=0)
    assert {entry.item.instance.instance_id for entry in plan.restore} == {caller, quiet_canary}
    back = changes.rollback(batch, operator, wave=0)
    wait_for(lambda: back.items.filter(state=ItemState.APPLIED).count() == 2, timeout=60,
             message="the wave's rollback to apply", stack=stack)
    aws_now = tokens_in_aws(ec2, ids)
    assert set(aws_now.values()) == {"optional"}
    batch.refresh_from_db()
    assert batch.rollout_state == RolloutState.ABORTED
    assert set(batch.items.filter(wave=1).values_list("state", flat=True)) == {ItemState.CANCELLED}


def test_a_clean_canary_promotes_itself_after_its_soak(stack):
    account, ec2, ids = seed(stack, count=4)
    options = rollout.RolloutOptions(mode=WaveMode.COUNT, canary="1", soak_minutes=4)
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2,
                                   override_usage=True, rollout=options)

    def complete():
        batch.refresh_from_db()
        return batch.rollout_state == RolloutState.COMPLETE and batch.items.filter(state=ItemState.APPLIED).count() == 4
    wait_for(complete, timeout=120, message="the rollout to complete by itself", stack=stack)
    assert set(tokens_in_aws(ec2, ids).values()) == {"required"}
    events = list(batch.events.values_list("kind", "user", "wave"))
    assert events == [(BatchEventKind.SOAK_STARTED, None, 0), (BatchEventKind.WAVE_RELEASED, None, 1),
                      (BatchEventKind.COMPLETED, None, 1)]
    canary = batch.items.get(wave=0)
    soak_started = batch.events.get(kind=BatchEventKind.SOAK_STARTED).at
    first_of_rest = min(batch.items.filter(wave=1).values_list("submitted_at", flat=True))
    # Nothing of the rest went out before the canary was done and had soaked (4 s at this scale).
    assert first_of_rest >= canary.finished_at
    assert (first_of_rest - soak_started).total_seconds() >= 4 * 60 / 60 - 0.1
    assert ChangeBatch.objects.get(pk=batch.pk).breakage_flagged_at is None


def test_nothing_is_sent_before_approval_by_a_second_person_nor_outside_the_window(stack, settings):
    settings.IMDSWEB_APPROVAL_MIN_ITEMS = 2  # the request is decided in this process
    account, ec2, ids = seed(stack, count=3)
    requester, checker = UserFactory(role="operator"), UserFactory(role="operator")
    # A window opening at a whole minute at least 20 s away, open for two minutes.
    now = timezone.now().astimezone(ZoneInfo("UTC"))
    opens = (now + timedelta(seconds=80 if now.second >= 40 else 60)).replace(second=0, microsecond=0)
    window = {"days": [opens.weekday()], "start": opens.strftime("%H:%M"),
              "end": (opens + timedelta(minutes=2)).strftime("%H:%M"), "tz": "UTC"}
    batch = changes.request_change(requester, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2,
                                   override_usage=True, rollout=rollout.RolloutOptions(window=window))
    assert batch.approval == "awaiting" and batch.run_from == opens

    with pytest.raises(changes.ChangeRefused, match="a second person has to approve"):
        rollout.approve(batch, requester)
    time.sleep(4)  # workers, beat and sweep running: nothing is sent while approval is awaited
    assert set(batch.items.values_list("state", flat=True)) == {ItemState.QUEUED}
    rollout.approve(batch, checker)
    time.sleep(4)  # approved, but the window is not open yet
    assert timezone.now() < opens
    assert set(batch.items.values_list("state", flat=True)) == {ItemState.QUEUED}
    assert not any(stack.sim.stats()["modify_calls_by_instance"].get(i) for i in ids)
    assert set(tokens_in_aws(ec2, ids).values()) == {"optional"}
    wait_for(lambda: batch.items.filter(state=ItemState.APPLIED).count() == 3, timeout=150,
             message="the batch to run once its window opened", stack=stack)
    first = min(batch.items.values_list("submitted_at", flat=True))
    assert first >= opens
    assert set(tokens_in_aws(ec2, ids).values()) == {"required"}
    assert list(batch.events.values_list("kind", flat=True)) == [BatchEventKind.APPROVAL_REQUESTED,
                                                                 BatchEventKind.APPROVED]
