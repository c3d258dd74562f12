"""Celery tasks: thin wrappers that take primary keys and call one service function."""

import logging

from celery import shared_task

from . import sync
from .models import Account

log = logging.getLogger(__name__)


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
