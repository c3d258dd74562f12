"""Celery tasks: thin wrappers that take primary keys and call one service function."""

import logging

from celery import shared_task
from celery.signals import worker_init

from . import apply, aws, posture, sync, usage
from .choices import SyncStatus
from .models import Account

log = logging.getLogger(__name__)


@worker_init.connect
def warm_up_aws(**kwargs):
    """Parse the AWS service models once, in the worker's main process, before it forks its pool."""
    aws.warm_up()


@shared_task(ignore_result=True)
def sync_account_region(account_pk, region):
    account = Account.objects.filter(pk=account_pk, enabled=True).first()
    if account is None or region not in account.regions:
        log.info("sync skipped: account %s / %s no longer enabled", account_pk, region)
        return
    try:
        run = sync.sync_region(account, region)
    except sync.SyncAlreadyRunning as exc:
        log.info("%s", exc)
        return
    # A new account/region (or one whose reading went stale) gets its IMDSv1 use read right after
    # its inventory, not on the next 6-hourly round: until then its instances are held.
    if run.status == SyncStatus.SUCCEEDED and usage.due(account, region):
        sync_usage_region.delay(account.pk, region)


@shared_task(ignore_result=True)
def sync_all():
    """Beat fan-out: one task per enabled account/region, so they run in parallel."""
    for account, region in sync.targets():
        sync_account_region.delay(account.pk, region)


@shared_task(ignore_result=True)
def dispatch_batch(batch_pk):
    """Start a runner for every account/region a new batch touches."""
    for account_pk, region in apply.regions_of_batch(batch_pk):
        apply_region.delay(account_pk, region)


@shared_task(ignore_result=True)
def apply_region(account_pk, region):
    again = apply.run_region(account_pk, region)
    if again is not None:
        apply_region.apply_async((account_pk, region), countdown=again)


@shared_task(ignore_result=True)
def track_pending():
    for account_pk, region in apply.pending_regions():
        track_pending_region.delay(account_pk, region)


@shared_task(ignore_result=True)
def track_pending_region(account_pk, region):
    account = Account.objects.get(pk=account_pk)
    try:
        apply.track_region(account, region)
    except apply.aws.AwsError as exc:
        log.warning("tracking %s/%s failed, will retry next round: %s", account.account_id, region, exc)


@shared_task(ignore_result=True)
def sweep():
    for account_pk, region in apply.sweep():
        apply_region.delay(account_pk, region)


@shared_task(ignore_result=True)
def sync_usage_all():
    """Beat fan-out of the IMDSv1 usage stage (a slower schedule than the inventory)."""
    for account, region in sync.targets():
        sync_usage_region.delay(account.pk, region)


@shared_task(ignore_result=True)
def sync_usage_region(account_pk, region):
    account = Account.objects.filter(pk=account_pk, enabled=True).first()
    if account is None:
        return
    try:
        usage.sync_usage(account, region)
    except apply.aws.AwsError as exc:
        log.warning("usage %s/%s failed, will retry next round: %s", account.account_id, region, exc)


@shared_task(ignore_result=True)
def refresh_posture():
    """Safety net: recompute every account/region's posture summary."""
    posture.refresh_all()
