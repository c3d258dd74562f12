"""Celery tasks: thin wrappers that take primary keys and call one service function."""

import logging
import time

from celery import shared_task
from celery.signals import task_postrun, task_prerun, worker_init, worker_ready
from django.conf import settings
from django.db import close_old_connections

from . import aws, discovery, health, history, posture, ratelimit, sync, usage, waivers, workers
from . import notify as notify_service
from .aws import counters as aws_counters
from .changes import expansion
from .choices import SyncStatus
from .engine import runner, tracking
from .engine import sweep as sweeper
from .engine.locks import RegionLock
from .models import Account

log = logging.getLogger(__name__)


@worker_init.connect
def warm_up_aws(**kwargs):
    """Parse the AWS service models once, in the worker's main process, before it forks its pool."""
    aws.warm_up()


@worker_ready.connect
def worker_started(sender=None, **kwargs):
    workers.heartbeat(sender.hostname)


@task_prerun.connect
def worker_took_work(task=None, **kwargs):
    """The heartbeat the pages read: this worker is taking work (see ``fleet.workers``)."""
    workers.heartbeat(task.request.hostname or "unknown worker")


@task_prerun.connect
@task_postrun.connect
def reuse_database_connections(task=None, **kwargs):
    """A task's database connections are kept for the next one unless unusable or older than
    CONN_MAX_AGE, as around a web request (settings.CELERY_DB_REUSE_MAX stops Celery's fix-up from
    closing them after every task). Not for a task run eagerly inside the caller's transaction."""
    if not getattr(task.request, "is_eager", False):
        close_old_connections()


@task_prerun.connect
def hold_aws_call_counts(**kwargs):
    """A task's AWS call counts (/metrics) go to Redis once, when it ends (``fleet.aws.counters``)."""
    aws_counters.hold()


@task_postrun.connect
def send_aws_call_counts(**kwargs):
    aws_counters.flush()


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
    for account_pk, region in runner.regions_of_batch(batch_pk):
        apply_region.delay(account_pk, region)


@shared_task(ignore_result=True)
def expand_batch(batch_pk):
    """Write a large batch's items chunk by chunk (runners start as chunks land)."""
    expansion.expand(batch_pk)


@shared_task(ignore_result=True)
def apply_region(account_pk, region, due=None):
    """One run of a region's runner; ``due`` (epoch seconds) is when the previous run asked for
    this one: the run sends at least what AWS refilled while it waited in the queue beyond that."""
    waited = max(0.0, time.time() - due) if due else 0.0
    again = runner.run_region(account_pk, region, waited=waited)
    if again is not None:
        apply_region.apply_async((account_pk, region), {"due": time.time() + again}, countdown=again)
        try:
            RegionLock.queued_again(account_pk, region, again)
        except Exception:  # noqa: BLE001 - without the mark the sweeper starts a second runner, which the lock stops
            log.warning("could not mark the next run of %s/%s for the sweeper", account_pk, region, exc_info=True)
    # AWS answered pending: the region's first tracking round a second from now (unless one is
    # already on its way), not at the beat's next round.
    if tracking.tracking_wanted(account_pk, region):
        track_pending_region.apply_async((account_pk, region), countdown=settings.IMDSWEB_TRACK_FAST_SECONDS)


@shared_task(ignore_result=True)
def track_pending():
    """Beat: a tracking round for every region with pending items that has none on its way."""
    for account_pk, region in tracking.pending_regions():
        if tracking.claim_tracking(account_pk, region):
            track_pending_region.delay(account_pk, region)


@shared_task(ignore_result=True)
def track_pending_region(account_pk, region):
    """One tracking round (its region's guard taken by whoever scheduled it); the next follows in
    a second while changes are still pending on running instances there (in up to
    IMDSWEB_TRACK_SENDING_SECONDS while its runner still has many to send)."""
    account = Account.objects.filter(pk=account_pk).first()
    checked, throttled_wait = 0, 0.0
    try:
        if account is not None:
            checked = tracking.track_region(account, region)
    except aws.RetryableAwsError as exc:  # throttled or unavailable: the next round tries again
        log.info("tracking %s/%s: %s; the next round retries", account.account_id, region, exc)
        if exc.code in runner.THROTTLE_CODES:  # AWS's DescribeInstances bucket is empty: learn from it
            throttled_wait = ratelimit.throttled(account.account_id, region, "DescribeInstances")
    except aws.AwsError as exc:
        log.warning("tracking %s/%s failed, will retry at the beat's round: %s", account.account_id, region, exc)
        return
    finally:
        tracking.release_tracking(account_pk, region)
    if tracking.tracking_wanted(account_pk, region):
        track_pending_region.apply_async((account_pk, region), countdown=max(
            tracking.next_round_in(checked), throttled_wait, tracking.while_sending(account_pk, region)))


@shared_task(ignore_result=True)
def advance_rollouts():
    """Beat: move staged rollouts, windows and approval requests on (fleet.changes.rollout)."""
    from .changes import rollout

    released = rollout.advance_all()
    if released:
        log.info("rollout: work released in batch(es) %s", released)


@shared_task(ignore_result=True)
def sweep():
    for account_pk, region in sweeper.sweep():
        apply_region.delay(account_pk, region)
    for batch_pk in expansion.stalled():  # an expander died mid-way: go on after its last chunk
        expand_batch.delay(batch_pk)


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
    except aws.AwsError as exc:
        log.warning("usage %s/%s failed, will retry next round: %s", account.account_id, region, exc)


@shared_task(ignore_result=True)
def expire_waivers():
    """Every minute: waivers past their date are recorded as expired (audit, notification) and
    their instances count as non-compliant again (fleet.waivers)."""
    waivers.expire_waivers()


@shared_task(ignore_result=True)
def refresh_posture():
    """Safety net: recompute every account/region's posture summary."""
    posture.refresh_all()


# ---- posture history and notifications (fleet.history, fleet.notify)


@shared_task(ignore_result=True)
def snapshot_posture():
    """Hourly: every account/region's summary into the history, synced this hour or not."""
    history.snapshot_all()


@shared_task(ignore_result=True)
def prune_history():
    history.prune()


@shared_task(ignore_result=True)
def notify():
    """Record the events the database knows, then hand each due rule's events to a delivery."""
    notify_service.scan_batches()
    notify_service.dispatch()


@shared_task(bind=True, ignore_result=True, max_retries=settings.IMDSWEB_NOTIFY_MAX_RETRIES)
def send_delivery(self, delivery_pk, attempt=0):
    try:
        notify_service.send(delivery_pk, attempt=attempt, final=self.request.retries >= self.max_retries)
    except notify_service.DeliveryFailed as exc:
        raise self.retry(args=(delivery_pk, attempt + 1), exc=exc, countdown=min(600, 5 * 2**self.request.retries)) from exc


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
