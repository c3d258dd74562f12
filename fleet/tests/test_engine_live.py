"""The engine as deployed (the simulator as AWS, real Celery workers and beat, a private Redis):
AWS's ``applied`` noticed within about two seconds at the production beat interval, and the pages
saying plainly when no worker takes the queued work."""

import itertools
import time

import pytest
from django.core.management import call_command
from django.urls import reverse

from fleet import changes, sync, workers
from fleet.choices import ItemState
from fleet.models import Account, ChangeBatch, Instance
from fleet.tests.live import LiveStack, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

_accounts = (f"7777{n:08d}" for n in itertools.count(1))
APPLY_DELAY = 1.0
NO_WORKER = "No worker is taking work"


def seed(stack, count):
    account_id = next(_accounts)
    ec2 = stack.ec2(account_id, "us-east-1")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count, MetadataOptions={"HttpTokens": "optional"})
    account = Account.objects.create(
        account_id=account_id, name=f"acct-{account_id[-3:]}", regions=["us-east-1"],
        role_arn=f"arn:aws:iam::{account_id}:role/imdsweb-reader",
    )
    sync.sync_region(account, "us-east-1")
    return account


def lateness(batch):
    """Seconds between AWS applying each item (submitted + the simulator's apply delay) and
    imdsweb recording it."""
    return [
        (item.finished_at - item.submitted_at).total_seconds() - APPLY_DELAY
        for item in batch.items.all()
    ]


def test_applied_is_noticed_within_two_seconds_at_the_production_beat_interval(settings):
    # The beat's round every 10 s, as deployed, and a bucket of one change a second: the submits
    # spread over ten seconds, so AWS applies them at every phase of the beat's round, and only
    # the region's own rounds can notice each within two seconds.
    stack = LiveStack(settings, apply_delay=APPLY_DELAY, env={
        "IMDSWEB_TRACK_PENDING_SECONDS": "10", "IMDSWEB_RATE_MODIFY_BUCKET": "1", "IMDSWEB_RATE_MODIFY_REFILL": "1",
    })
    stack.start(workers=1, beat=True)
    try:
        account = seed(stack, count=10)
        call_command("fleet_change", "require-imdsv2", "--account", account.account_id, "--override-usage",
                     "--wait", "--timeout", "120")
        returned_at = time.time()
        batch = ChangeBatch.objects.order_by("-pk").first()
        assert batch.counts()[ItemState.APPLIED] == 10, batch.counts()
        submits = sorted(item.submitted_at for item in batch.items.all())
        assert (submits[-1] - submits[0]).total_seconds() >= 8  # paced, as intended
        late = lateness(batch)
        assert max(late) <= 2.0, late
        # fleet_change --wait returned within about two seconds of AWS applying the last change.
        assert returned_at - (submits[-1].timestamp() + APPLY_DELAY) <= 2.5
    finally:
        stack.stop()


def test_no_worker_message_appears_without_a_worker_and_goes_with_one(settings, operator):
    settings.IMDSWEB_WORKER_STALL_SECONDS = 2  # the pages' limit (a minute by default)
    stack = LiveStack(settings, apply_delay=0.2)
    stack.start(workers=0, beat=True)
    try:
        account = seed(stack, count=3)
        batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2,
                                       override_usage=True)
        time.sleep(2.5)
        overview = operator.get(reverse("fleet:overview")).content.decode()
        page = operator.get(batch.get_absolute_url()).content.decode()
        for html in (overview, page):
            assert NO_WORKER in html and "none has been seen" in html
            assert workers.WORKER_COMMAND in html
        assert "3 items of this batch have been queued" in page

        worker = stack.start_worker()
        wait_for(lambda: batch.counts()[ItemState.APPLIED] == 3, timeout=60, message="batch applied", stack=stack)
        assert NO_WORKER not in operator.get(reverse("fleet:overview")).content.decode()
        assert NO_WORKER not in operator.get(batch.get_absolute_url()).content.decode()
        last = workers.last_heartbeat()
        assert last["hostname"].startswith("worker0@")

        # The worker goes away with work still to do: the message is back and names it.
        stack.kill_worker(worker)
        other = seed(stack, count=2)
        undo = changes.request_change(None, Instance.objects.filter(account=other), changes.REQUIRE_IMDSV2,
                                      override_usage=True)
        wait_for(lambda: NO_WORKER in operator.get(undo.get_absolute_url()).content.decode(), timeout=15,
                 interval=0.5, message="the message again", stack=stack)
        html = operator.get(undo.get_absolute_url()).content.decode()
        assert "the last one seen was <code>worker0@" in html
    finally:
        stack.stop()
