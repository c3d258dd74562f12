"""The change engine end to end: the simulator as AWS, real Celery workers and beat, a private Redis.

Each test queues work through the same service the UI uses and waits for the rows to reach
their final states, then compares them with what the simulated AWS really holds. The tests share
one stack (``module_stack``), each in an account of its own.
"""

import itertools

import pytest

from fleet import changes, sync, usage
from fleet.choices import ItemState
from fleet.models import Account, ChangeItem, Instance, MetadataDefaults
from fleet.tests.factories import InstanceFactory
from fleet.tests.live import module_stack, wait_for
from imdssim.testing import image_id

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

_accounts = (f"5555{n:08d}" for n in itertools.count(1))


# Small expansion chunks, so that a large request's expansion takes several chunks in the worker.
live_stack = module_stack(time_scale=10, apply_delay=0.5, env={"IMDSWEB_EXPANSION_CHUNK": "5"})


@pytest.fixture
def stack(live_stack):
    return live_stack.fresh()


def seed(stack, regions=("us-east-1",), count=10, **options):
    """Launch ``count`` instances per region in a fresh account, register it and sync it."""
    account_id = next(_accounts)
    for region in regions:
        ec2 = stack.ec2(account_id, region)
        image = image_id(ec2)
        kwargs = {"MetadataOptions": options} if options else {}
        ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count, **kwargs)
    account = Account.objects.create(
        account_id=account_id, name=f"acct-{account_id[-3:]}", regions=list(regions),
        role_arn=f"arn:aws:iam::{account_id}:role/imdsweb-reader",
    )
    for region in regions:
        sync.sync_region(account, region)
        usage.sync_usage(account, region)  # the readiness gate holds what was never measured
    return account


def final(batch):
    def check():
        counts = batch.counts()
        return counts["total"] and not any(counts[s] for s in ItemState.active())
    return check


def test_pending_then_applied_and_cache_refreshed(stack):
    account = seed(stack, count=12, HttpTokens="optional", HttpPutResponseHopLimit=2)
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)

    wait_for(lambda: batch.items.filter(state=ItemState.PENDING).exists()
             or batch.items.filter(state=ItemState.APPLIED).exists(), message="first submit", stack=stack)
    wait_for(final(batch), message="batch final", stack=stack)

    assert batch.counts()[ItemState.APPLIED] == 12
    aws = stack.aws_options(account.account_id, "us-east-1")
    assert {o["HttpTokens"] for o in aws.values()} == {"required"}
    assert {o["HttpPutResponseHopLimit"] for o in aws.values()} == {2}  # unsent options kept
    assert set(Instance.objects.filter(account=account).values_list("http_tokens", "metadata_state")) == {
        ("required", "applied")
    }
    assert all(item.request_id for item in batch.items.all())


def test_a_large_request_is_expanded_by_the_worker_in_chunks_and_applied(stack, monkeypatch):
    from fleet.changes import expansion

    monkeypatch.setattr(expansion, "INLINE_MAX", 5)  # this process's request leaves the items to a worker
    account = seed(stack, count=12, HttpTokens="optional")
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    assert batch.expanding and batch.expected == 12 and not batch.items.exists()
    wait_for(lambda: batch.counts()["total"] == 12 and final(batch)(), timeout=120, message="expanded and final",
             stack=stack)
    batch.refresh_from_db()
    assert not batch.expanding and batch.expanded == 12
    assert batch.counts()[ItemState.APPLIED] == 12
    assert {o["HttpTokens"] for o in stack.aws_options(account.account_id, "us-east-1").values()} == {"required"}


def test_throttling_storm_fails_nothing(stack):
    account = seed(stack, count=30)
    stack.sim.configure(throttle_rate=0.5)
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    wait_for(final(batch), timeout=120, message="batch final under throttling", stack=stack)
    counts = batch.counts()
    assert counts[ItemState.APPLIED] == 30 and counts[ItemState.FAILED] == 0
    stats = stack.sim.stats()
    assert stats["actions"]["ModifyInstanceMetadataOptions"]["throttled"] > 0  # the storm really happened


def test_not_found_fails_that_item_and_the_rest_applies(stack):
    account = seed(stack, count=5)
    ghost = InstanceFactory(account=account, region="us-east-1", instance_id="i-0000000000000dead")
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    wait_for(final(batch), message="batch final", stack=stack)
    failed = batch.items.get(state=ItemState.FAILED)
    assert failed.instance == ghost and failed.error_code == "InvalidInstanceID.NotFound"
    assert batch.counts()[ItemState.APPLIED] == 5


def test_dry_run_changes_nothing(stack):
    account = seed(stack, count=4)
    before = stack.aws_options(account.account_id, "us-east-1")
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2,
                                   dry_run=True)
    wait_for(final(batch), message="dry run final", stack=stack)
    assert set(batch.items.values_list("state", flat=True)) == {ItemState.SKIPPED}
    assert all("dry run" in reason for reason in batch.items.values_list("reason", flat=True))
    assert stack.aws_options(account.account_id, "us-east-1") == before
    assert not stack.sim.stats()["modify_calls_by_instance"]


def test_rollback_restores_exactly_the_previous_values(stack):
    account = seed(stack, count=3, HttpTokens="optional", HttpPutResponseHopLimit=1)
    extra = stack.ec2(account.account_id, "us-east-1")
    image = image_id(extra)
    extra.run_instances(ImageId=image, MinCount=2, MaxCount=2,
                        MetadataOptions={"HttpTokens": "optional", "HttpPutResponseHopLimit": 3})
    sync.sync_region(account, "us-east-1")
    usage.sync_usage(account, "us-east-1")
    before = stack.aws_options(account.account_id, "us-east-1")

    batch = changes.request_change(None, Instance.objects.filter(account=account),
                                   {"http_tokens": "required", "hop_limit": 2})
    wait_for(final(batch), message="change final", stack=stack)
    assert {o["HttpPutResponseHopLimit"] for o in stack.aws_options(account.account_id, "us-east-1").values()} == {2}

    undo = changes.rollback(batch, None)
    wait_for(final(undo), message="rollback final", stack=stack)
    assert undo.counts()[ItemState.APPLIED] == 5
    after = stack.aws_options(account.account_id, "us-east-1")
    keys = ("HttpTokens", "HttpPutResponseHopLimit", "HttpEndpoint", "HttpProtocolIpv6", "InstanceMetadataTags")
    assert {i: {k: o[k] for k in keys} for i, o in after.items()} == {
        i: {k: o[k] for k in keys} for i, o in before.items()
    }


def test_account_defaults_set_and_cleared_with_no_preference(stack):
    account = seed(stack, count=1)
    target = [(account, "us-east-1")]
    batch = changes.request_defaults_change(None, target, {"http_tokens": "required", "hop_limit": 2})
    wait_for(final(batch), message="defaults set", stack=stack)
    defaults = MetadataDefaults.objects.get(account=account, region="us-east-1")
    assert (defaults.http_tokens, defaults.hop_limit) == ("required", 2)

    batch = changes.request_defaults_change(None, target, {"http_tokens": "no-preference", "hop_limit": -1})
    wait_for(final(batch), message="defaults cleared", stack=stack)
    assert batch.counts()[ItemState.APPLIED] == 1
    level = stack.ec2(account.account_id, "us-east-1").get_instance_metadata_defaults()["AccountLevel"]
    assert "HttpTokens" not in level and "HttpPutResponseHopLimit" not in level
    defaults.refresh_from_db()
    assert (defaults.http_tokens, defaults.hop_limit) == (None, None)  # absent from AccountLevel: NULL


def test_policy_managed_defaults_are_refused_before_calling_aws(stack):
    account = seed(stack, count=1)
    stack.sim.set_policy(account.account_id, "us-east-1", managed=True, message="Set by the org's IMDS policy")
    sync.sync_region(account, "us-east-1")
    with pytest.raises(changes.ChangeRefused, match="declarative policy"):
        changes.request_defaults_change(None, [(account, "us-east-1")], {"http_tokens": "required"})
    assert not stack.sim.stats()["actions"].get("ModifyInstanceMetadataDefaults", {}).get("calls")


def test_two_workers_never_claim_the_same_item(stack):
    stack.start_worker()
    account = seed(stack, regions=("us-east-1", "eu-west-1"), count=60)
    stack.sim.reset_stats()
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    wait_for(final(batch), timeout=120, message="batch final with two workers", stack=stack)
    assert batch.counts()[ItemState.APPLIED] == 120
    calls = stack.sim.stats()["modify_calls_by_instance"]
    assert len(calls) == 120 and set(calls.values()) == {1}


def test_queued_while_redis_is_down_is_applied_once_it_returns(stack):
    account = seed(stack, count=8)
    stack.redis.stop()
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    assert batch.counts()[ItemState.QUEUED] == 8  # the request itself succeeded: rows are the truth
    stack.redis.start()

    def applied():
        # A worker acknowledging a message as Redis went can die in kombu's reconnect ("'NoneType'
        # object has no attribute 'hostname'"); compose starts it again, and so does this.
        stack.restart_dead_workers()
        return final(batch)()

    wait_for(applied, timeout=120, message="applied after Redis returned", stack=stack)
    assert batch.counts()[ItemState.APPLIED] == 8


def test_worker_killed_mid_batch_every_item_final_none_applied_twice(stack):
    account = seed(stack, count=150)
    stack.sim.reset_stats()
    stack.sim.configure(latency_ms=20)
    batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
    wait_for(lambda: batch.items.exclude(state=ItemState.QUEUED).count() > 20, message="work started", stack=stack)
    stack.kill_worker(stack.workers[0])
    in_flight = set(batch.items.filter(state=ItemState.SUBMITTING).values_list("instance__instance_id", flat=True))
    stack.start_worker()
    wait_for(final(batch), timeout=180, message="batch final after the kill", stack=stack)
    assert batch.counts()[ItemState.APPLIED] == 150
    calls = stack.sim.stats()["modify_calls_by_instance"]
    twice = {i for i, n in calls.items() if n > 1}
    # Only an item whose call was under way when the worker died may be sent again (same values).
    assert twice <= in_flight and len(twice) <= 2
    assert not ChangeItem.objects.filter(batch=batch, state__in=ItemState.active()).exists()
