"""The runner: work through one account/region's queued items within AWS's rate limits.

For each item: read it, take the token of its target's action without waiting for it (when none
is there the runner yields the worker and is scheduled again for when one will be, so no worker
sleeps in the rate limiter), claim it with a conditional UPDATE (queued -> submitting: no two
workers ever send the same item and no lock is held across an AWS call), preflight the region
with DryRun once per batch, call AWS through the item's target and record the answer.
"""

import logging
import time

from django.conf import settings
from django.db import transaction

from .. import aws, posture, ratelimit
from ..choices import InstanceState, ItemState
from ..models import Account, ChangeBatch, ChangeItem
from .locks import RegionLock, backoff, clear_backoff, posture_refresh_due
from .targets import target_of

log = logging.getLogger(__name__)

# Errors that mean "this principal may not do it here": the preflight fails the whole region.
PERMISSION_CODES = frozenset(
    {"UnauthorizedOperation", "AccessDenied", "AuthFailure", "OptInRequired", "OperationNotPermitted",
     "InvalidClientTokenId", "UnrecognizedClientException", "NoCredentials"}
)
THROTTLE_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
# Yield the worker instead of sleeping when the next token is further away than this.
MAX_SLEEP = 0.05
# Instances whose change AWS holds until they next start (the synced state; a guess that a later
# sync corrects, which only moves an item in the queue).
WAITS_FOR_START = (InstanceState.STOPPED, InstanceState.STOPPING)


def _next_queued(account, region):
    """The next queued item of this account/region, read with what submitting it needs.

    Items AWS can apply now go first: a change to a stopped (or stopping) instance only takes
    effect at its next start, so its call waits behind every other item of the region. Each
    call spends a token of the same bucket, so at AWS's rate the running fleet becomes compliant
    sooner by the stopped instances' share of the calls. Within each group, the order is the
    items' (ids).
    """
    queued = (
        ChangeItem.objects.claimable().filter(account=account, region=region)
        .select_related("batch", "instance", "account")
        .order_by("id")
    )
    # Items without an instance (account defaults) apply at once: the exclusion keeps them.
    return queued.exclude(instance__instance_state__in=WAITS_FOR_START).first() or queued.first()


def _preflight_key(item):
    return f"{item.account.account_id}/{item.region}"


def _record_preflight(item, report):
    with transaction.atomic():
        locked = ChangeBatch.objects.select_for_update().get(pk=item.batch_id)
        locked.preflight_report[_preflight_key(item)] = report
        locked.save(update_fields=["preflight_report"])


def _needs_preflight(item):
    # The batch row was read with the item, after any earlier preflight of this region was recorded
    # (one runner per account/region records it before going on).
    return not item.batch.dry_run and _preflight_key(item) not in item.batch.preflight_report


def _preflight(item):
    """DryRun once per batch and account/region before changing anything there, with the token
    taken for the item (its own call takes the next one).

    Returns True to go on with the region, False when it failed (items recorded).
    """
    try:
        target_of(item).call(item, dry_run=True)
    except aws.DryRunSucceeded as ok:
        _record_preflight(item, {"ok": True, "request_id": ok.request_id})
        return True
    except aws.PermanentAwsError as exc:
        if exc.code in PERMISSION_CODES:
            _record_preflight(item, {"ok": False, "error_code": exc.code, "message": exc.message})
            ChangeItem.objects.fail_region(item.batch, item.account, item.region, exc)
            return False
        # Not a permission problem (e.g. this one instance is gone): the items will tell.
        _record_preflight(item, {"ok": True, "note": f"{exc.code}: {exc.message}"})
        return True
    # An AWS endpoint that accepts DryRun without error does not model it; go on.
    _record_preflight(item, {"ok": True, "note": "endpoint ignored DryRun"})
    return True


def submit(item):
    """Send one claimed item to AWS (its token taken) and record what happened. Returns the
    retryable error, if any."""
    target = target_of(item)
    refused = target.refusal(item)
    if refused:
        item.finish(ItemState.FAILED, error_code=refused[0], error_message=refused[1])
        return None
    try:
        result = target.call(item, dry_run=item.batch.dry_run)
    except aws.DryRunSucceeded as ok:
        item.finish(ItemState.SKIPPED, reason="dry run: AWS would accept this change", request_id=ok.request_id)
        return None
    except aws.RetryableAwsError as exc:
        if exc.code not in THROTTLE_CODES and item.attempts >= settings.IMDSWEB_MAX_ERROR_ATTEMPTS:
            item.finish(ItemState.FAILED, error_code=exc.code,
                        error_message=f"gave up after {item.attempts} attempts: {exc.message}"[:2000])
            return None
        item.requeue(exc)
        return exc
    except aws.PermanentAwsError as exc:
        item.finish(ItemState.FAILED, error_code=exc.code, error_message=exc.message[:2000], request_id=exc.request_id)
        return None
    if item.batch.dry_run:  # the endpoint did not model DryRun and made the change: say so
        log.warning("endpoint ignored DryRun for item %s", item.pk)
    target.record(item, result)
    return None


def _take_token(account, region, action):
    """0 once this action's token is ours; else the seconds until one will be (nothing taken).
    Waits of a few milliseconds are slept through, longer ones are the caller's to yield."""
    while True:
        wait = ratelimit.try_take(account.account_id, region, action)
        if wait == 0 or wait > MAX_SLEEP:
            return wait
        time.sleep(wait)


def run_region(account_pk, region, budget=None):
    """Work through the queued items of one account/region for up to ``budget`` seconds.

    Returns the delay after which it should run again, or None when nothing is left (or another
    runner has the region).
    """
    budget = settings.IMDSWEB_RUNNER_BUDGET_SECONDS if budget is None else budget
    lock = RegionLock(account_pk, region)
    if not lock.acquire():
        return None
    again = None
    submitted = 0
    streak_cleared = False
    try:
        account = Account.objects.get(pk=account_pk)
        try:
            aws.prepare_modify(account, region)
        except aws.AwsError:
            pass  # the first call meets the same error and records it on its item
        deadline = time.monotonic() + budget
        while True:
            if time.monotonic() > deadline:
                again = 0.0
                break
            lock.refresh()
            item = _next_queued(account, region)
            if item is None:
                break
            # The token of this item's own action: account defaults never wait for (nor spend)
            # instance-options tokens, and the other way round.
            wait = _take_token(account, region, target_of(item).action_for(item))
            if wait:
                again = wait
                break
            if not item.claim():
                continue  # another worker took it between our read and our update
            if _needs_preflight(item):
                try:
                    go_on = _preflight(item)
                except aws.RetryableAwsError as exc:
                    item.requeue(exc)
                    again = backoff(account_pk, region)
                    break
                if go_on:
                    item.unclaim()  # its own call takes the next token
                continue
            error = submit(item)
            submitted += 1
            if error is not None:
                # A throttle teaches the shared pacing controller; other errors back off.
                again = (ratelimit.throttled(account.account_id, region, target_of(item).action_for(item))
                         if error.code in THROTTLE_CODES else backoff(account_pk, region))
                log.info("%s/%s: %s, backing off %.1fs", account.account_id, region, error.code, again)
                break
            if not streak_cleared:  # AWS took a call: the backoff streak starts over
                clear_backoff(account_pk, region)
                streak_cleared = True
    finally:
        lock.release()
    if again is None and ChangeItem.objects.claimable().filter(account_id=account_pk, region=region).exists():
        again = 0.0  # items arrived while we were finishing
    # At AWS's rate a runner yields after almost every item: refresh the region's posture summary
    # when its queue is done, and otherwise at most every few seconds, not once per item.
    if submitted and (again is None or posture_refresh_due(account_pk, region)):
        posture.refresh_region(account_pk, region)
    return again


def regions_of_batch(batch_pk):
    """The (account pk, region) pairs with queued items of this batch: where to start runners."""
    return list(
        ChangeItem.objects.claimable().filter(batch_id=batch_pk)
        .values_list("account_id", "region")
        .distinct()
        .order_by()
    )
