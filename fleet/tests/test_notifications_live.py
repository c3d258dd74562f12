"""A new IMDSv1 launch in the simulator reaches a real SMTP server and a real webhook receiver
once, through a real Celery worker and beat: sync (worker) -> drift event -> notify (beat) ->
delivery (worker)."""

import time

import pytest

from fleet import sync, tasks
from fleet.aws import counters
from fleet.choices import DeliveryStatus, EventKind, SyncStatus
from fleet.models import Account, Delivery, NotificationRule, SyncRun
from fleet.tests.live import LiveStack, wait_for
from fleet.tests.receivers import SmtpReceiver, WebhookReceiver
from imdssim.testing import image_id

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ACCOUNT = "666600000001"
REGION = "us-east-1"


@pytest.fixture(scope="module")
def receivers():
    with SmtpReceiver() as smtp, WebhookReceiver() as webhook:
        yield smtp, webhook


@pytest.fixture(scope="module")
def live_stack(django_db_setup, receivers):
    """One stack for the module (as ``fleet.tests.live.module_stack`` makes them), whose worker
    mails to this module's SMTP server; this process's settings and environment are put back."""
    from fleet.aws.session import reset_caches
    from fleet.tests.live import ModuleSettings, SavedEnviron

    smtp, _ = receivers
    settings, environ = ModuleSettings(), SavedEnviron()
    live = LiveStack(settings, env={"IMDSWEB_EMAIL_URL": smtp.url, "IMDSWEB_NOTIFY_SCAN_SECONDS": "1"})
    try:
        live.start(workers=1, beat=True)
        yield live
    finally:
        live.stop()
        settings.restore()
        environ.restore()
        reset_caches()


@pytest.fixture
def stack(live_stack):
    return live_stack.fresh()


def run_instances(stack, count):
    ec2 = stack.ec2(ACCOUNT, REGION)
    image = image_id(ec2)
    return [i["InstanceId"] for i in ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count)["Instances"]]


def sync_in_worker(stack, account):
    before = SyncRun.objects.filter(account=account).count()
    from imdsweb.celery import app

    # Published on a connection to this stack's broker itself: the process-wide producer pool may
    # still hold a connection an earlier module's stack opened.
    with app.connection_for_write(stack.env()["CELERY_BROKER_URL"]) as connection:
        tasks.sync_account_region.apply_async((account.pk, REGION), connection=connection)
    return wait_for(lambda: SyncRun.objects.filter(account=account, status=SyncStatus.SUCCEEDED).count() > before,
                    message="the worker's sync", stack=stack)


def test_new_imdsv1_launch_notifies_once_by_email_and_webhook(stack, receivers):
    smtp, webhook = receivers
    run_instances(stack, 3)
    account = Account.objects.create(account_id=ACCOUNT, name="prod", regions=[REGION],
                                     role_arn=f"arn:aws:iam::{ACCOUNT}:role/imdsweb-reader")
    sync.sync_region(account, REGION)  # the baseline
    NotificationRule.objects.create(name="IMDSv1 launches", event=EventKind.NEW_V1, interval_minutes=1,
                                    email_to="security@example.com", apprise_urls=webhook.apprise_url)

    launched = run_instances(stack, 2)
    sync_in_worker(stack, account)

    wait_for(lambda: smtp.messages and webhook.requests, timeout=90, message="the notification", stack=stack)
    [mail] = smtp.messages
    assert "IMDSv1 launches" in mail["Subject"] and mail["X-Envelope-To"] == "security@example.com"
    assert all(instance_id in mail.get_content() for instance_id in launched)
    [(_, payload)] = webhook.requests
    assert all(instance_id in payload["message"] for instance_id in launched)
    delivery = wait_for(lambda: Delivery.objects.filter(status=DeliveryStatus.SENT).first(), stack=stack)
    assert delivery.event_count == 2 and delivery.result == {"email": "ok", "url 1 (json://127.0.0.1)": "ok"}

    # Syncing again finds nothing new, and beat keeps scanning: the launch was told once.
    sync_in_worker(stack, account)
    time.sleep(4)
    assert len(smtp.messages) == 1 and len(webhook.requests) == 1 and Delivery.objects.count() == 1

    # The worker's AWS calls were counted where /metrics reads them (the stack's Redis).
    assert counters.snapshot()[("calls", "ec2", "DescribeInstances", "")] >= 2
