"""The runner: work through one account/region's queued items within AWS's rate limits.

It works in chunks of up to ``IMDSWEB_RUNNER_CHUNK`` (50) items that call one AWS action: read the
chunk (running instances first), take its tokens in one round trip without waiting for them (when
too few are there the runner yields the worker and is scheduled again for when they will be, so
no worker sleeps in the rate limiter), claim the chunk with one conditional UPDATE (queued ->
submitting: no two workers ever send the same item and no lock is held across an AWS call),
preflight the region with DryRun once per batch (and yield, so that every region of a batch
makes its first call before any region's burst; that run first sends
``IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS`` (1 s) of AWS's refill, the *cover*, so the bucket of
each region that made its call keeps refilling until its next turn), then call AWS for each item
in turn and record each answer as it comes (one commit each: a worker that dies leaves only the
call under way to be sent again).

Two rules keep it at AWS's rate on few cores (benchmark P5b):

- *gather*: once the burst is spent, a runner waits for two seconds' refill at the learned rate
  (``IMDSWEB_RUNNER_GATHER_SECONDS``; ten ModifyInstanceMetadataOptions tokens at AWS's full rate,
  fewer when AWS leaves us less) or for what its queue still needs, whichever is fewer, before it
  runs again, instead of running once per token.
  This never delays the region's last item: it goes when its own token is there either way, and
  two seconds' refill is far less than the bucket;
- *slice*: a run yields after ``IMDSWEB_RUNNER_BUDGET_SECONDS`` (a chunk is sized to what fits the
  rest of it at this process's recent time per call; checked before each call, a chunk cut short
  gives its unsent items and tokens back) and queues itself again behind the other
  regions' runners, so a burst of one region never keeps another's full bucket waiting (its
  refill would be lost while it is full). But not before it has sent what AWS refilled while this
  run waited in the queue beyond the time it asked for (``waited`` × AWS's refill rate, at most a
  chunk): on cores that every region's runner shares, a slice of wall time sends fewer items the
  busier they are while the wait for the next turn grows, so the bucket would refill to full (and
  stop refilling) between two turns; sending what the last wait refilled keeps it below full, and
  spreads a run's fixed cost over more items when the cores are short.
"""

import itertools
import logging
import math
import time

from django.conf import settings
from django.db import transaction

from .. import aws, posture, ratelimit
from ..choices import InstanceState, ItemState
from ..models import Account, ChangeBatch, ChangeItem
from .locks import RegionLock, backoff, clear_backoff, posture_refresh_due
from .targets import target_of, with_batches
from .targets.instances import InstanceOptionsTarget

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


def _next_chunk(account, region, size):
    """Up to ``size`` queued items of this account/region, of one batch and one AWS action, read
    with what submitting them needs; returns ``(items, action)``.

    Items AWS can apply now go first: a change to a stopped (or stopping) instance only takes
    effect at its next start, so its call waits behind every other item of the region. Each
    call spends a token of the same bucket, so at AWS's rate the running fleet becomes compliant
    sooner by the stopped instances' share of the calls. Within each group, the order is the
    items' (ids).
    """
    queued = (
        ChangeItem.objects.claimable().filter(account=account, region=region)
        .select_related("instance")
        .defer("instance__tags")  # the one large column a submit never reads
        .order_by("id")
    )
    # Items without an instance (account defaults) apply at once: the exclusion keeps them.
    items = list(queued.exclude(instance__instance_state__in=WAITS_FOR_START)[:size]) or list(queued[:size])
    if not items:
        return [], None
    for item in with_batches(items):
        item.account = account  # the run's own, not a copy joined to every item
    first = items[0]
    action = target_of(first).action_for(first)
    chunk = list(itertools.takewhile(
        lambda item: item.batch_id == first.batch_id and target_of(item).action_for(item) == action, items))
    return chunk, action


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


def _call(item):
    """Send one claimed item to AWS (its token taken). Returns ``(result, error)``: AWS's answer,
    for the caller to record, or the retryable error the item went back to the queue with; both
    None when the item is already finished (refused, failed, or a dry run)."""
    target = target_of(item)
    refused = target.refusal(item)
    if refused:
        item.finish(ItemState.FAILED, error_code=refused[0], error_message=refused[1])
        return None, None
    try:
        result = target.call(item, dry_run=item.batch.dry_run)
    except aws.DryRunSucceeded as ok:
        item.finish(ItemState.SKIPPED, reason="dry run: AWS would accept this change", request_id=ok.request_id)
        return None, None
    except aws.RetryableAwsError as exc:
        if exc.code not in THROTTLE_CODES and item.attempts >= settings.IMDSWEB_MAX_ERROR_ATTEMPTS:
            item.finish(ItemState.FAILED, error_code=exc.code,
                        error_message=f"gave up after {item.attempts} attempts: {exc.message}"[:2000])
            return None, None
        item.requeue(exc)
        return None, exc
    except aws.PermanentAwsError as exc:
        item.finish(ItemState.FAILED, error_code=exc.code, error_message=exc.message[:2000], request_id=exc.request_id)
        return None, None
    if item.batch.dry_run:  # the endpoint did not model DryRun and made the change: say so
        log.warning("endpoint ignored DryRun for item %s", item.pk)
    return result, None


def _send(chunk, action, lock, deadline, least=1):
    """Send a claimed chunk (its tokens taken) item by item, recording each answer as it comes: one
    commit per answer, so a worker that dies mid-chunk leaves only the call under way to be sent
    again. The chunk stops early at a retryable error (that item goes back to the queue with AWS's
    error), at the run's deadline once ``least`` items are sent, or when anything raises: the items
    after the stop go back to the queue unsent, and their tokens to the bucket. Returns ``(items
    sent, that error or None)``."""
    sent, error = 0, None
    try:
        for item in chunk:
            if sent >= least and time.monotonic() > deadline:
                break  # the slice is over: the rest waits for the region's next turn
            lock.refresh()
            sent += 1
            result, error = _call(item)
            if result is not None:
                target_of(item).record(item, result)
            if error is not None:
                break
    finally:
        _give_back(chunk[sent:], action)
    return sent, error


def _give_back(items, action):
    """Claimed items whose calls were not made go back to the queue, their tokens to the bucket
    (so the pacing does not count them as calls AWS accepted). If that fails too, the sweeper
    returns the items later."""
    if not items:
        return
    first = items[0]
    try:
        ChangeItem.objects.unclaim_all(items)
        ratelimit.give_back(first.account.account_id, first.region, action, len(items))
    except Exception:  # noqa: BLE001 - the original error, if any, is what the caller must see
        log.warning("could not return %d unsent item(s) of %s/%s; the sweeper will", len(items),
                    first.account.account_id, first.region, exc_info=True)


def _take_tokens(account, region, action, most):
    """``(taken, 0)`` once up to ``most`` tokens are ours, at least all ``most`` or the refill of
    IMDSWEB_RUNNER_GATHER_SECONDS at the learned rate if that is fewer (the gather); else ``(0, the
    seconds until they will be there)``, nothing taken. Waits of a few milliseconds are slept
    through, longer ones are the caller's to yield."""
    while True:
        taken, wait = _take_gathered(account, region, action, most)
        if taken or wait > MAX_SLEEP:
            return taken, wait
        time.sleep(wait)


def _take_gathered(account, region, action, most):
    """One try at the gather: up to ``most`` tokens, once all ``most`` or the refill of
    IMDSWEB_RUNNER_GATHER_SECONDS at the learned rate (if fewer) are there."""
    return ratelimit.take_some(account.account_id, region, action, most, least=most,
                               within=settings.IMDSWEB_RUNNER_GATHER_SECONDS)


def _gather_wait(account, region, action, queued):
    """The seconds until the next gather for ``queued`` more items (those a chunk read but found
    no tokens for), asked of the bucket without reading the queue again: at AWS's rate almost
    every run ends so, and a read of a chunk's items for no tokens cost more than the run's token
    round trips. Tokens refilled meanwhile (a slow chunk) go back: no items hold them."""
    taken, wait = _take_gathered(account, region, action, queued)
    if taken:
        ratelimit.give_back(account.account_id, region, action, taken)
        return 0.0
    return wait


# Seconds one call and its record take in this process, a moving average: a chunk is sized to
# what fits the rest of the run's slice, so no read is spent on items the slice cannot send.
_seconds_per_call = 0.01


def _chunk_size(deadline, least=1):
    left = max(0.0, deadline - time.monotonic())
    return max(1, least, min(settings.IMDSWEB_RUNNER_CHUNK, int(left / _seconds_per_call) + 1))


def _least_to_send(waited, action):
    """What AWS refilled in ``waited`` seconds, at most a chunk."""
    if waited <= 0:
        return 0
    _capacity, rate = ratelimit.limits_for(action)
    return min(settings.IMDSWEB_RUNNER_CHUNK, math.ceil(waited * rate))


def _learn_call_time(seconds, sent):
    global _seconds_per_call
    if sent:
        _seconds_per_call = 0.7 * _seconds_per_call + 0.3 * (seconds / sent)


def run_region(account_pk, region, budget=None, waited=0.0):
    """Work through the queued items of one account/region for up to ``budget`` seconds (its slice),
    and until it has sent what AWS refilled in the ``waited`` seconds the run waited beyond the
    time it was queued for. A run that makes a batch's preflight in the region then sends the
    cover (IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS of AWS's refill, 1 s by default) and yields,
    whatever its slice.

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
    preflighted = False
    try:
        account = Account.objects.get(pk=account_pk)
        try:
            aws.prepare_modify(account, region)
        except aws.AwsError:
            pass  # the first call meets the same error and records it on its item
        # A run ends after its slice and queues itself again behind the other regions' runners.
        deadline = time.monotonic() + budget
        # To send before the slice may end: known once the first chunk names its action; the
        # first read is sized for instance options, nearly every item's action.
        least = 0
        first_read = _least_to_send(waited, InstanceOptionsTarget.action)
        while True:
            if submitted >= least and time.monotonic() > deadline:
                again = 0.0
                break
            lock.refresh()
            chunk, action = _next_chunk(account, region, _chunk_size(deadline, max(first_read, least) - submitted))
            first_read = 0
            if not chunk:
                break
            least = max(least, _least_to_send(waited, action))
            read = len(chunk)
            if _needs_preflight(chunk[0]):
                chunk = chunk[:1]  # the DryRun spends one token; its item's own call takes the next one
            # The tokens of the chunk's own action: account defaults never wait for (nor spend)
            # instance-options tokens, and the other way round.
            taken, wait = _take_tokens(account, region, action, len(chunk))
            if wait:
                again = wait
                break
            claimed = ChangeItem.objects.claim_all(chunk[:taken])
            if len(claimed) < taken:  # another worker (or a cancel) took some between our read and our update
                ratelimit.give_back(account.account_id, region, action, taken - len(claimed))
            chunk = claimed
            if not chunk:
                continue
            if _needs_preflight(chunk[0]):
                try:
                    go_on = _preflight(chunk[0])
                except aws.RetryableAwsError as exc:
                    chunk[0].requeue(exc)
                    again = backoff(account_pk, region)
                    break
                if go_on:
                    chunk[0].unclaim()  # its own call takes the next token
                    preflighted = True
                    # Then the cover, and yield: the other regions' first runs (a batch starts
                    # them all at once) each make their first call before any region's burst,
                    # since AWS's bucket of a region only refills once a call took from it; and
                    # the cover keeps this region's bucket below full (refilling) until its next
                    # turn, which comes after every other region's first run. (Measured: a
                    # DryRun-only first run and the cover in the region's next run end later,
                    # as the later regions' buckets sit full while the earlier ones' covers go;
                    # on 2 cores short of CPU a two-second cover ended the 16 point later, so
                    # the default is one second.)
                    cover = _least_to_send(settings.IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS, action)
                    if not cover:
                        again = 0.0
                        break
                    least, deadline = submitted + cover, -math.inf  # the slice ends with the cover
                continue
            began = time.monotonic()
            sent, error = _send(chunk, action, lock, deadline, max(1, least - submitted))
            _learn_call_time(time.monotonic() - began, sent)
            submitted += sent
            if sent > (error is not None) and not streak_cleared:
                # AWS took a call: the backoff streak starts over, also when a later call of the
                # chunk erred (else under sporadic errors a streak that no clean run ends grows
                # to the cap, and the region waits that long after each error).
                clear_backoff(account_pk, region)
                streak_cleared = True
            if error is not None:
                # A throttle teaches the shared pacing controller; other errors back off.
                again = (ratelimit.throttled(account.account_id, region, action)
                         if error.code in THROTTLE_CODES else backoff(account_pk, region))
                log.info("%s/%s: %s, backing off %.1fs", account.account_id, region, error.code, again)
                break
            if taken < read and time.monotonic() <= deadline:
                # This take emptied the bucket: another read now would find no tokens for its items.
                again = _gather_wait(account, region, action, read - taken)
                break
    finally:
        lock.release()
    if again is None and ChangeItem.objects.claimable().filter(account_id=account_pk, region=region).exists():
        again = 0.0  # items arrived while we were finishing
    # At AWS's rate a runner yields after almost every item: refresh the region's posture summary
    # when its queue is done, and otherwise at most every few seconds, not once per item. A
    # batch's first run there (its preflight's) only starts that period: the batch's other
    # regions are waiting for their own first runs, and their buckets sit full meanwhile.
    if submitted and (again is None or (posture_refresh_due(account_pk, region) and not preflighted)):
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
