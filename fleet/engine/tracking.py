"""Following pending items until AWS reports ``applied``: tracking rounds of batched
DescribeInstances.

A region's round runs about a second after a submit that AWS answered ``pending`` and again every
second while changes are pending on running instances (each round checks the changes sent at least
a second before it; while the region's runner still has many to send, every few seconds:
``while_sending``), one round per region at a time (a guard in the cache); the beat's round every
``IMDSWEB_TRACK_PENDING_SECONDS`` is the safety net. Items on stopped instances (``ChangeItem.awaiting_start``) are checked only every
``IMDSWEB_TRACK_STOPPED_SECONDS``: nothing changes for them until someone starts the instance.
"""

import math

from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone

from .. import aws, posture, ratelimit
from ..choices import ItemState
from ..models import ChangeItem
from ..sync import upsert_instances
from .locks import posture_refresh_due
from .targets import target_of, with_batches
from .targets.base import Tracked

# A region's tracking guard outlives a round and the countdown to the next; if the worker that
# carries the chain dies, the beat's round takes over once it has expired.
TRACKING_TTL = 60


def _tracking_key(account_pk, region):
    return f"imdsweb:tracking:{account_pk}:{region}"


def claim_tracking(account_pk, region):
    """Take the region's tracking guard: True when the caller should run (or schedule) a round.
    At most one round per account/region is scheduled or running at a time."""
    return cache.add(_tracking_key(account_pk, region), 1, TRACKING_TTL)


def release_tracking(account_pk, region):
    cache.delete(_tracking_key(account_pk, region))


def tracking_wanted(account_pk, region):
    """Take the guard if changes are pending on running instances here and no round is already
    on its way: True when the caller should schedule one (``IMDSWEB_TRACK_FAST_SECONDS`` from now)."""
    if cache.get(_tracking_key(account_pk, region)) is not None:
        return False
    moving = ChangeItem.objects.filter(
        account_id=account_pk, region=region, state=ItemState.PENDING, awaiting_start=False,
        instance__isnull=False,
    ).exists()
    return moving and claim_tracking(account_pk, region)


def next_round_in(checked):
    """Seconds until a region's next tracking round after one that checked ``checked`` items:
    IMDSWEB_TRACK_FAST_SECONDS, or longer when the rounds would use more than half of the
    region's DescribeInstances refill rate (≤ 200 ids a call), which the inventory sync shares."""
    calls = -(-checked // aws.ec2.IDS_PER_FILTER)
    _capacity, rate = ratelimit.limits_for("DescribeInstances")
    return max(settings.IMDSWEB_TRACK_FAST_SECONDS, calls / (rate / 2))


def while_sending(account_pk, region):
    """Seconds to hold a region's next round while its runner still has changes to send: about as
    long as AWS's refill takes to let the runner send them, at most IMDSWEB_TRACK_SENDING_SECONDS.

    A round checks the changes sent at least a second before it, so rounds every second while a
    runner sends at AWS's 5 a second would each describe about five instances, and most of a
    round's cost (its task, its reads, its DescribeInstances call and the writes that follow) is
    per round, not per instance. Held like this, one round describes the changes of several
    seconds in one call, and once the last few changes are queued the rounds come every second
    again, so the batch's end is seen as soon as before."""
    cap = settings.IMDSWEB_TRACK_SENDING_SECONDS
    if cap <= settings.IMDSWEB_TRACK_FAST_SECONDS:
        return 0.0
    _capacity, rate = ratelimit.limits_for("ModifyInstanceMetadataOptions")
    queued = ChangeItem.objects.claimable().filter(account_id=account_pk, region=region)
    queued = queued[:math.ceil(cap * rate)].count()
    return min(cap, queued / rate)


def _stopped_check_due(account_pk, region):
    """True at most once per IMDSWEB_TRACK_STOPPED_SECONDS per account/region, across workers."""
    return cache.add(f"imdsweb:track-stopped:{account_pk}:{region}", 1, settings.IMDSWEB_TRACK_STOPPED_SECONDS)


def track_region(account, region):
    """Check this account/region's pending items with batched DescribeInstances (≤ 200 ids a
    call). Returns how many items were checked. Each item's target reads the answer
    (``Target.verify``); for instance options:

    - applied with the values we set: applied; applied with others: failed (changed elsewhere);
    - the instance gone, terminated or shutting down: failed, the change can never apply;
    - stopped or stopping: ``awaiting_start``. AWS applies the change when it next starts, and the
      pending timeout does not run while it is stopped: its clock starts over (``pending_since``)
      when the instance is seen running again. These items are checked only every
      ``IMDSWEB_TRACK_STOPPED_SECONDS``;
    - running and pending for longer than ``IMDSWEB_PENDING_TIMEOUT_MINUTES``: stuck.
    """
    now = timezone.now()
    # A change is first checked a round after AWS answered (AWS takes seconds to apply one): each
    # is described about once, not in every round from its submit on, while a runner still sends
    # the region's next ones (DescribeInstances answers cost AWS's bucket and our parsing alike).
    young = now - timezone.timedelta(seconds=settings.IMDSWEB_TRACK_FAST_SECONDS)
    pending = ChangeItem.objects.filter(
        Q(submitted_at__isnull=True) | Q(submitted_at__lte=young) | Q(awaiting_start=True),
        account=account, region=region, state=ItemState.PENDING, instance__isnull=False,
    ).select_related("instance").defer("instance__tags")  # a round reads the instance's id only
    if not _stopped_check_due(account.pk, region):
        pending = pending.filter(awaiting_start=False)
    items = list(pending)
    if not items:
        return 0
    with_batches(items)
    seen = {
        data["InstanceId"]: data
        # One attempt, on the runner's client: a refused round is retried by the next one.
        for data in aws.describe_instances_by_ids(account, region, {item.instance.instance_id for item in items},
                                                  max_attempts=1)
    }
    _new, changed = upsert_instances(account, region, list(seen.values()), now)
    timeout = now - timezone.timedelta(minutes=settings.IMDSWEB_PENDING_TIMEOUT_MINUTES)
    applied, stuck, to_await, started = [], [], [], []
    failed = {}
    moves = {Tracked.APPLIED: applied, Tracked.STUCK: stuck, Tracked.AWAITING_START: to_await,
             Tracked.STARTED: started}
    for item in items:
        verdict, error = target_of(item).verify(item, seen.get(item.instance.instance_id), now, timeout)
        if verdict is Tracked.FAILED:
            failed[item.pk] = error
        elif verdict is not None:
            moves[verdict].append(item.pk)
    still_pending = ChangeItem.objects.filter(state=ItemState.PENDING)
    if applied:
        still_pending.filter(pk__in=applied).update(
            state=ItemState.APPLIED, finished_at=now, reason="", awaiting_start=False)
    if stuck:
        still_pending.filter(pk__in=stuck).update(
            state=ItemState.STUCK, finished_at=now,
            reason=f"still pending after {settings.IMDSWEB_PENDING_TIMEOUT_MINUTES} minutes on a running instance")
    if to_await:
        still_pending.filter(pk__in=to_await).update(awaiting_start=True)
    if started:
        still_pending.filter(pk__in=started).update(awaiting_start=False, pending_since=now)
    for pk, (code, message) in failed.items():
        still_pending.filter(pk=pk).update(
            state=ItemState.FAILED, error_code=code, error_message=message, finished_at=now, awaiting_start=False)
    finished = len(applied) + len(stuck) + len(failed)
    # Rounds come every second while changes are pending: refresh the summary when the last of
    # the region's changes finished, else at most every few seconds (while a runner still sends
    # the region's changes, nearly every round finishes all it checked).
    if (finished or changed) and (
            (finished == len(items) and not ChangeItem.objects.claimable().filter(account=account, region=region).exists())
            or posture_refresh_due(account.pk, region)):
        posture.refresh_region(account.pk, region)
    return len(items)


def pending_regions():
    return (
        ChangeItem.objects.filter(state=ItemState.PENDING, instance__isnull=False)
        .values_list("account_id", "region")
        .distinct()
        .order_by()
    )
