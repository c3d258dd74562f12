"""Celery tasks: thin wrappers that take primary keys and call one service function."""

import logging

from celery import shared_task
from celery.signals import worker_init

from . import apply, aws, discovery, health, posture, sync, usage
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
        sync.sync_region(account, region)
    except sync.SyncAlreadyRunning as exc:
        log.info("%s", exc)


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


@shared_task(ignore_result=True)
def discover_organizations():
    """Beat: re-discover every organization source, then check the health of the accounts."""
    discovery.discover_all()
    check_health_all.delay()


@shared_task(ignore_result=True)
def discover_source(source_pk):
    """The admin's "Discover now": one source, then the health of the accounts."""
    from .models import OrganizationSource

    source = OrganizationSource.objects.filter(pk=source_pk).first()
    if source is not None:
        discovery.discover(source)
        check_health_all.delay()


@shared_task(ignore_result=True)
def check_health_all():
    """Beat fan-out: one health check per enabled account."""
    for pk in Account.objects.filter(enabled=True).values_list("pk", flat=True):
        check_account_health.delay(pk)


@shared_task(ignore_result=True)
def check_account_health(account_pk):
    account = Account.objects.filter(pk=account_pk, enabled=True).first()
    if account is not None:
        health.check_account(account)
