"""Waivers end to end (issue 19's "done when"): the simulator as AWS, a real Celery worker and
beat. A waived instance is skipped by a bulk Require IMDSv2 (the waiver as the reason) while the
others are enforced in AWS; once the waiver is past its date the worker's expiry task records it
and notifies, the instance counts as non-compliant again, and the next bulk change enforces it."""

import itertools
from datetime import timedelta

import pytest
from django.test import Client

from fleet import changes, posture, sync, tasks
from fleet.changes.decision import Outcome
from fleet.choices import EventKind, ItemState, WaiverAction
from fleet.models import Account, Instance, NotificationEvent, Waiver
from fleet.models.waivers import utc_today
from fleet.tests.factories import UserFactory
from fleet.tests.live import LiveStack, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

_accounts = (f"7878{n:08d}" for n in itertools.count(1))


def final(batch):
    def check():
        counts = batch.counts()
        return counts["total"] and not any(counts[state] for state in ItemState.active())
    return check


def test_a_waived_instance_is_skipped_then_enforced_after_its_waiver_expires(settings):
    stack = LiveStack(settings, apply_delay=0.3)
    stack.start(workers=1, beat=True)
    try:
        account_id = next(_accounts)
        ec2 = stack.ec2(account_id, "us-east-1")
        image = ec2.describe_images()["Images"][0]["ImageId"]
        ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, MetadataOptions={"HttpTokens": "optional"})
        appliance = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, MetadataOptions={"HttpTokens": "optional"},
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "app", "Value": "vendor-appliance"}]}],
        )["Instances"][0]["InstanceId"]
        account = Account.objects.create(account_id=account_id, name="live", regions=["us-east-1"],
                                         role_arn=f"arn:aws:iam::{account_id}:role/imdsweb-reader")
        sync.sync_region(account, "us-east-1")

        # An admin grants the waiver through the page.
        admin = Client()
        admin.force_login(UserFactory(role="admin", username="alice"))
        response = admin.post("/waivers/new/", {
            "scope": "tag", "tag": "app=vendor-appliance", "owner": "alice", "reason": "vendor appliance",
            "expires_on": (utc_today() + timedelta(days=30)).isoformat()})
        assert response.status_code == 302, response.content.decode()[:2000]
        waiver = Waiver.objects.get()
        assert list(Instance.objects.filter(waiver=waiver).values_list("instance_id", flat=True)) == [appliance]
        assert posture.fleet_totals()["waived"] == 1

        everything = Instance.objects.filter(account=account)
        batch = changes.request_change(None, everything, changes.REQUIRE_IMDSV2, override_usage=True)
        wait_for(final(batch), timeout=60, message="first batch final", stack=stack)
        skipped = batch.items.get(instance__instance_id=appliance)
        assert (skipped.state, skipped.outcome, skipped.reason) == (
            ItemState.SKIPPED, Outcome.WAIVED, waiver.reason_text)
        assert batch.counts()[ItemState.APPLIED] == 2
        options = stack.aws_options(account_id, "us-east-1")
        assert options[appliance]["HttpTokens"] == "optional"
        assert sorted(o["HttpTokens"] for o in options.values()) == ["optional", "required", "required"]

        # Past its date (a day passes): the worker's expiry task records it and notifies.
        Waiver.objects.filter(pk=waiver.pk).update(expires_on=utc_today() - timedelta(days=1))
        tasks.expire_waivers.delay()
        wait_for(lambda: Waiver.objects.get(pk=waiver.pk).expired_at is not None, timeout=60,
                 message="waiver expired by the worker", stack=stack)
        assert waiver.events.filter(action=WaiverAction.EXPIRED).exists()
        assert NotificationEvent.objects.filter(kind=EventKind.WAIVER_EXPIRED, key=f"waiver:{waiver.pk}").exists()
        totals = posture.fleet_totals()
        assert (totals["waived"], totals["not_enforced"]) == (0, 1)

        again = changes.request_change(None, everything, changes.REQUIRE_IMDSV2, override_usage=True)
        wait_for(final(again), timeout=60, message="second batch final", stack=stack)
        item = again.items.get(instance__instance_id=appliance)
        assert (item.state, item.outcome) == (ItemState.APPLIED, Outcome.QUEUED)
        assert stack.aws_options(account_id, "us-east-1")[appliance]["HttpTokens"] == "required"
    finally:
        stack.stop()
