"""IMDSv1 usage evidence from CloudWatch, the readiness gate (held items) and the breakage flag."""

import itertools
from datetime import timedelta

import boto3
import pytest
from django.utils import timezone

from fleet import changes, sync, usage
from fleet.choices import ItemState
from fleet.models import Account, ChangeItem, Instance
from fleet.tests.live import module_stack
from imdssim.testing import image_id

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REGION = "eu-west-1"
_accounts = (f"6666{n:08d}" for n in itertools.count(1))  # one per test: the simulator is shared

live_stack = module_stack(workers=0, beat=False, apply_delay=0.2)


@pytest.fixture
def stack(live_stack):
    return live_stack.fresh()


@pytest.fixture
def fleet(stack):
    account_id = next(_accounts)
    ec2 = stack.ec2(account_id, REGION)
    image = image_id(ec2)
    ec2.run_instances(ImageId=image, MinCount=6, MaxCount=6)
    account = Account.objects.create(account_id=account_id, name="usage", regions=[REGION],
                                     role_arn=f"arn:aws:iam::{account_id}:role/imdsweb-reader")
    sync.sync_region(account, REGION)
    return account, list(Instance.objects.filter(account=account).order_by("instance_id"))


def put_metric(stack, metric, instance, value, when=None):


    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=stack.sim.endpoint_url)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{instance.account.account_id}:role/imdsweb-reader",
                            RoleSessionName="metrics")["Credentials"]
    cloudwatch = boto3.client(
        "cloudwatch", region_name=REGION, endpoint_url=stack.sim.endpoint_url,
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    cloudwatch.put_metric_data(Namespace="AWS/EC2", MetricData=[{
        "MetricName": metric, "Dimensions": [{"Name": "InstanceId", "Value": instance.instance_id}],
        "Timestamp": when or timezone.now() - timedelta(hours=1), "Value": value, "Unit": "Count",
    }])


def test_usage_sync_records_imdsv1_calls_per_instance(stack, fleet):
    account, instances = fleet
    put_metric(stack, "MetadataNoToken", instances[0], 7)
    put_metric(stack, "MetadataNoToken", instances[1], 3,
               when=timezone.now() - timedelta(days=3))
    measured, calling, flagged = usage.sync_usage(account, REGION)
    assert (measured, calling, flagged) == (6, 2, 0)
    by_id = {i.instance_id: i for i in Instance.objects.filter(account=account)}
    assert by_id[instances[0].instance_id].v1_calls == 7
    assert by_id[instances[1].instance_id].v1_calls == 3
    assert by_id[instances[1].instance_id].v1_last_seen < timezone.now() - timedelta(days=2)
    assert {by_id[i.instance_id].v1_calls for i in instances[2:]} == {0}
    assert all(i.usage_synced_at for i in by_id.values())


def test_instances_calling_imdsv1_are_held_unless_overridden(stack, fleet):
    account, instances = fleet
    put_metric(stack, "MetadataNoToken", instances[0], 12)
    usage.sync_usage(account, REGION)
    selection = Instance.objects.filter(account=account)

    plan = changes.plan_change(selection, changes.REQUIRE_IMDSV2)
    assert (plan.held, plan.to_change) == (1, 5)
    assert any("held back" in text for _bucket, text in plan.warnings)

    batch = changes.request_change(None, selection, changes.REQUIRE_IMDSV2)
    held = batch.items.get(state=ItemState.HELD)
    assert held.instance.instance_id == instances[0].instance_id and "12 IMDSv1 call" in held.reason
    assert batch.items.filter(state=ItemState.QUEUED).count() == 5
    changes.cancel_queued(batch, None)

    overriding = changes.request_change(None, selection, changes.REQUIRE_IMDSV2, override_usage=True)
    assert overriding.override_usage  # the audit records the override
    assert overriding.items.filter(state=ItemState.QUEUED).count() == 6


def test_refused_imdsv1_calls_after_enforcement_flag_a_breakage(stack, fleet):
    account, instances = fleet
    victim = instances[2]
    usage.sync_usage(account, REGION)  # measured: no IMDSv1 calls yet, so the gate lets it through
    batch = changes.request_change(None, Instance.objects.filter(pk=victim.pk), changes.REQUIRE_IMDSV2)
    submitted = timezone.now() - timedelta(hours=2)
    ChangeItem.objects.filter(batch=batch).update(state=ItemState.APPLIED, submitted_at=submitted,
                                                  finished_at=submitted)
    Instance.objects.filter(pk=victim.pk).update(http_tokens="required")  # as the tracker records it
    put_metric(stack, "MetadataNoTokenRejected", victim, 40)

    assert usage.sync_usage(account, REGION)[2] == 1

    item = batch.items.get()
    batch.refresh_from_db()
    assert item.breakage_suspected and batch.breakage_flagged_at is not None
    assert usage.sync_usage(account, REGION)[2] == 0  # flagged once, not again every round
    rollback = changes.rollback(batch, None)  # the one-click way back is there
    assert rollback.items.get().target_values == {"http_tokens": "optional"}
