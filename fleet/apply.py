"""The worker side of the change engine: submit queued items within AWS's rate limits, follow
pending ones until AWS reports ``applied``, and sweep up work that a dead broker or worker left.

Work is claimed with a conditional UPDATE (queued -> submitting), so no two workers ever send
the same item and no lock is held across an AWS call. One runner at a time works through an
account/region (a short-lived lock in the cache); account/regions run in parallel.

Each kind of change is a target (``TARGETS``): the AWS action whose token bucket paces it, the
call, and how its answer is recorded. The runner takes the token of the item it is about to send
without waiting for it: when none is there it yields the worker and is scheduled again for when
one will be, so no worker sleeps in the rate limiter.

Pending items are followed by tracking rounds (``track_region``): a region's round runs about a
second after a submit that AWS answered ``pending`` and again every second while changes are
pending on running instances, one round per region at a time (a guard in the cache); the beat's
round every ``IMDSWEB_TRACK_PENDING_SECONDS`` is the safety net. Items on stopped instances
(``ChangeItem.awaiting_start``) are checked only every ``IMDSWEB_TRACK_STOPPED_SECONDS``: nothing
changes for them until someone starts the instance.
"""

import logging
import random
import time
import uuid

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from . import aws, posture, ratelimit, targets
from .choices import ChangeKind, InstanceState, ItemState, MetadataState
from .models import Account, ChangeBatch, ChangeItem, Instance, MetadataDefaults
from .models.inventory import INSTANCE_OPTION_FIELDS
from .sync import sync_defaults, upsert_instances

log = logging.getLogger(__name__)

MODIFY = "ModifyInstanceMetadataOptions"
MODIFY_DEFAULTS = "ModifyInstanceMetadataDefaults"
# Errors that mean "this principal may not do it here": the preflight fails the whole region.
PERMISSION_CODES = frozenset(
    {"UnauthorizedOperation", "AccessDenied", "AuthFailure", "OptInRequired", "OperationNotPermitted",
     "InvalidClientTokenId", "UnrecognizedClientException", "NoCredentials"}
)
THROTTLE_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException"})
RUNNER_TTL = 60
# A runner renews its lock at most this often (a Redis round trip per item is not needed).
RUNNER_RENEW_SECONDS = 5
GET_DEFAULTS = "GetInstanceMetadataDefaults"
POSTURE_REFRESH_SECONDS = 5
# A region's tracking guard outlives a round and the countdown to the next; if the worker that
# carries the chain dies, the beat's round takes over once it has expired.
TRACKING_TTL = 60
# Yield the worker instead of sleeping when the next token is further away than this.
MAX_SLEEP = 0.05


# ---------------------------------------------------------------- the runner lock


class RegionLock:
    """At most one runner per account/region; expires by itself if its worker dies."""

    def __init__(self, account_pk, region):
        self.key = f"imdsweb:runner:{account_pk}:{region}"
        self.token = uuid.uuid4().hex

    def acquire(self):
        self.renewed = time.monotonic()
        return cache.add(self.key, self.token, RUNNER_TTL)

    def refresh(self):
        if time.monotonic() - self.renewed >= RUNNER_RENEW_SECONDS:
            cache.touch(self.key, RUNNER_TTL)
            self.renewed = time.monotonic()

    def release(self):
        if cache.get(self.key) == self.token:
            cache.delete(self.key)

    @staticmethod
    def held(account_pk, region):
        return cache.get(f"imdsweb:runner:{account_pk}:{region}") is not None


def _posture_refresh_due(account_pk, region):
    """True at most once per POSTURE_REFRESH_SECONDS per account/region, across workers."""
    return cache.add(f"imdsweb:posture:{account_pk}:{region}", 1, POSTURE_REFRESH_SECONDS)


def _backoff_key(account_pk, region):
    return f"imdsweb:backoff:{account_pk}:{region}"


def _backoff(account_pk, region):
    """Jittered exponential backoff after AWS throttled or failed us (full jitter, cap 60 s)."""
    key = _backoff_key(account_pk, region)
    streak = cache.get(key, 0) + 1
    cache.set(key, streak, 300)
    return random.uniform(0, min(60.0, 0.5 * 2**streak))


# ---------------------------------------------------------------- what each kind of change does


class InstanceOptionsTarget:
    """ModifyInstanceMetadataOptions on one instance: AWS answers ``pending`` or ``applied``."""

    action = MODIFY

    def refusal(self, item):
        return None

    def call(self, item, dry_run):
        return aws.modify_instance_metadata_options(
            item.account, item.region, item.instance.instance_id, item.target_values, dry_run=dry_run,
            token_taken=True,
        )

    def record(self, item, result):
        state = ItemState.APPLIED if result["metadata_state"] == MetadataState.APPLIED else ItemState.PENDING
        with transaction.atomic():  # one commit for the item and its instance
            Instance.objects.filter(pk=item.instance_id).update(
                metadata_state=result["metadata_state"] or MetadataState.PENDING,
                **{name: result[name] for name in INSTANCE_OPTION_FIELDS if result.get(name) is not None},
            )
            _finish(item, state, request_id=result["request_id"], submitted_at=timezone.now(), error_code="",
                    error_message="")


class AccountDefaultsTarget:
    """ModifyInstanceMetadataDefaults of one account/region, paced by that action's own bucket
    (2, refilled at 2 per second). AWS applies it at once; the defaults are read back."""

    action = MODIFY_DEFAULTS

    def refusal(self, item):
        managed = MetadataDefaults.objects.filter(
            account=item.account, region=item.region, managed_by="declarative-policy"
        ).first()
        if managed:
            return "DeclarativePolicy", managed.managed_exception_message or "managed by a declarative policy"
        return None

    def call(self, item, dry_run):
        return {"request_id": aws.modify_instance_metadata_defaults(
            item.account, item.region, item.target_values, dry_run=dry_run, token_taken=True)}

    def record(self, item, result):
        # The read-back takes its token only if one is there now (no worker waits for it); without
        # one the next sync reads the new defaults.
        if ratelimit.try_take(item.account.account_id, item.region, GET_DEFAULTS) == 0:
            sync_defaults(item.account, item.region, token_taken=True)
        _finish(item, ItemState.APPLIED, request_id=result["request_id"], submitted_at=timezone.now(),
                error_code="", error_message="")


class KindTarget:
    """A kind written in its own module (fleet.targets: launch templates, account-level
    enforcement), paced by the bucket of its first AWS action; the runner takes that token."""

    def __init__(self, kind, action):
        self.kind, self.action = kind, action

    @property
    def impl(self):
        return targets.target_for(self.kind)()

    def refusal(self, item):
        return None

    def call(self, item, dry_run):
        return self.impl.call(item, dry_run=dry_run, token_taken=True)

    def record(self, item, result):
        self.impl.record(item, result)
        _finish(item, ItemState.APPLIED, request_id=result["request_id"], submitted_at=timezone.now(),
                error_code="", error_message="")


TARGETS = {
    ChangeKind.INSTANCE_OPTIONS: InstanceOptionsTarget(),
    ChangeKind.ACCOUNT_DEFAULTS: AccountDefaultsTarget(),
    ChangeKind.LAUNCH_TEMPLATE: KindTarget(ChangeKind.LAUNCH_TEMPLATE, "CreateLaunchTemplateVersion"),
    ChangeKind.ENFORCEMENT: KindTarget(ChangeKind.ENFORCEMENT, MODIFY_DEFAULTS),
}


def target_of(item):
    return TARGETS[item.batch.kind]


# ---------------------------------------------------------------- submitting


def _next_queued(account, region):
    """The next queued item of this account/region, read with what submitting it needs."""
    return (
        ChangeItem.objects.filter(account=account, region=region, state=ItemState.QUEUED)
        .select_related("batch", "instance", "account")
        .order_by("id")
        .first()
    )


def _claim(item):
    """The conditional UPDATE that makes the item ours: False when another worker took it first."""
    now = timezone.now()
    claimed = ChangeItem.objects.filter(pk=item.pk, state=ItemState.QUEUED).update(
        state=ItemState.SUBMITTING, claimed_at=now, attempts=F("attempts") + 1
    )
    if claimed:
        item.state, item.claimed_at, item.attempts = ItemState.SUBMITTING, now, item.attempts + 1
    return bool(claimed)


def _unclaim(item):
    """Give a claimed item back to the queue without counting an attempt (its call is still ahead)."""
    ChangeItem.objects.filter(pk=item.pk, state=ItemState.SUBMITTING).update(
        state=ItemState.QUEUED, claimed_at=None, attempts=F("attempts") - 1
    )


def _finish(item, state, **fields):
    """Move an item we hold (submitting) to its next state."""
    final = state in ItemState.final()
    ChangeItem.objects.filter(pk=item.pk, state=ItemState.SUBMITTING).update(
        state=state, finished_at=timezone.now() if final else None, **fields
    )


def _requeue(item, error):
    ChangeItem.objects.filter(pk=item.pk, state=ItemState.SUBMITTING).update(
        state=ItemState.QUEUED, claimed_at=None, error_code=error.code, error_message=error.message[:2000]
    )


def _fail_region(batch, account, region, error):
    ChangeItem.objects.filter(
        batch=batch, account=account, region=region, state__in=[ItemState.QUEUED, ItemState.SUBMITTING]
    ).update(
        state=ItemState.FAILED,
        error_code=error.code,
        error_message=f"preflight (DryRun) failed for {account.account_id}/{region}: {error.message}"[:2000],
        request_id=error.request_id,
        finished_at=timezone.now(),
    )


def _record_preflight(batch, account, region, report):
    with transaction.atomic():
        locked = ChangeBatch.objects.select_for_update().get(pk=batch.pk)
        locked.preflight_report[f"{account.account_id}/{region}"] = report
        locked.save(update_fields=["preflight_report"])


def _needs_preflight(item):
    # The batch row was read with the item, after any earlier preflight of this region was recorded
    # (one runner per account/region records it before going on).
    return not item.batch.dry_run and f"{item.account.account_id}/{item.region}" not in item.batch.preflight_report


def _preflight(item):
    """DryRun once per batch and account/region before changing anything there, with the token
    taken for the item (its own call takes the next one).

    Returns True to go on with the region, False when it failed (items recorded).
    """
    batch, account, region = item.batch, item.account, item.region
    try:
        target_of(item).call(item, dry_run=True)
    except aws.DryRunSucceeded as ok:
        _record_preflight(batch, account, region, {"ok": True, "request_id": ok.request_id})
        return True
    except aws.PermanentAwsError as exc:
        if exc.code in PERMISSION_CODES:
            _record_preflight(batch, account, region, {"ok": False, "error_code": exc.code, "message": exc.message})
            _fail_region(batch, account, region, exc)
            return False
        # Not a permission problem (e.g. this one instance is gone): the items will tell.
        _record_preflight(batch, account, region, {"ok": True, "note": f"{exc.code}: {exc.message}"})
        return True
    # An AWS endpoint that accepts DryRun without error does not model it; go on.
    _record_preflight(batch, account, region, {"ok": True, "note": "endpoint ignored DryRun"})
    return True


def submit(item):
    """Send one claimed item to AWS (its token taken) and record what happened. Returns the
    retryable error, if any."""
    target = target_of(item)
    refused = target.refusal(item)
    if refused:
        _finish(item, ItemState.FAILED, error_code=refused[0], error_message=refused[1])
        return None
    try:
        result = target.call(item, dry_run=item.batch.dry_run)
    except aws.DryRunSucceeded as ok:
        _finish(item, ItemState.SKIPPED, reason="dry run: AWS would accept this change", request_id=ok.request_id)
        return None
    except aws.RetryableAwsError as exc:
        if exc.code not in THROTTLE_CODES and item.attempts >= settings.IMDSWEB_MAX_ERROR_ATTEMPTS:
            _finish(item, ItemState.FAILED, error_code=exc.code,
                    error_message=f"gave up after {item.attempts} attempts: {exc.message}"[:2000])
            return None
        _requeue(item, exc)
        return exc
    except aws.PermanentAwsError as exc:
        _finish(item, ItemState.FAILED, error_code=exc.code, error_message=exc.message[:2000], request_id=exc.request_id)
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
            wait = _take_token(account, region, target_of(item).action)
            if wait:
                again = wait
                break
            if not _claim(item):
                continue  # another worker took it between our read and our update
            if _needs_preflight(item):
                try:
                    go_on = _preflight(item)
                except aws.RetryableAwsError as exc:
                    _requeue(item, exc)
                    again = _backoff(account_pk, region)
                    break
                if go_on:
                    _unclaim(item)  # its own call takes the next token
                continue
            error = submit(item)
            submitted += 1
            if error is not None:
                # A throttle teaches the shared pacing controller; other errors back off.
                again = (ratelimit.throttled(account.account_id, region, target_of(item).action)
                         if error.code in THROTTLE_CODES else _backoff(account_pk, region))
                log.info("%s/%s: %s, backing off %.1fs", account.account_id, region, error.code, again)
                break
            if not streak_cleared:  # AWS took a call: the backoff streak starts over
                cache.delete(_backoff_key(account_pk, region))
                streak_cleared = True
    finally:
        lock.release()
    if again is None and ChangeItem.objects.filter(account_id=account_pk, region=region,
                                                   state=ItemState.QUEUED).exists():
        again = 0.0  # items arrived while we were finishing
    # At AWS's rate a runner yields after almost every item: refresh the region's posture summary
    # when its queue is done, and otherwise at most every few seconds, not once per item.
    if submitted and (again is None or _posture_refresh_due(account_pk, region)):
        posture.refresh_region(account_pk, region)
    return again


# ---------------------------------------------------------------- following pending items


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


def _stopped_check_due(account_pk, region):
    """True at most once per IMDSWEB_TRACK_STOPPED_SECONDS per account/region, across workers."""
    return cache.add(f"imdsweb:track-stopped:{account_pk}:{region}", 1, settings.IMDSWEB_TRACK_STOPPED_SECONDS)


def track_region(account, region):
    """Check this account/region's pending items with batched DescribeInstances (≤ 200 ids a
    call). Returns how many items were checked.

    - applied with the values we set: applied; applied with others: failed (changed elsewhere);
    - the instance gone, terminated or shutting down: failed, the change can never apply;
    - stopped or stopping: ``awaiting_start``. AWS applies the change when it next starts, and the
      pending timeout does not run while it is stopped: its clock starts over (``pending_since``)
      when the instance is seen running again. These items are checked only every
      ``IMDSWEB_TRACK_STOPPED_SECONDS``;
    - running and pending for longer than ``IMDSWEB_PENDING_TIMEOUT_MINUTES``: stuck.
    """
    pending = ChangeItem.objects.filter(
        account=account, region=region, state=ItemState.PENDING, instance__isnull=False
    ).select_related("instance", "batch")
    if not _stopped_check_due(account.pk, region):
        pending = pending.filter(awaiting_start=False)
    items = list(pending)
    if not items:
        return 0
    now = timezone.now()
    seen = {
        data["InstanceId"]: data
        for data in aws.describe_instances_by_ids(account, region, {item.instance.instance_id for item in items})
    }
    _new, changed = upsert_instances(account, region, list(seen.values()), now)
    timeout = now - timezone.timedelta(minutes=settings.IMDSWEB_PENDING_TIMEOUT_MINUTES)
    applied, stuck, to_await, started = [], [], [], []
    failed = {}
    for item in items:
        data = seen.get(item.instance.instance_id)
        if data is None:
            failed[item.pk] = ("InvalidInstanceID.NotFound", "the instance no longer exists in AWS")
            continue
        options = aws.ec2.options_from_aws(data.get("MetadataOptions", {}))
        instance_state = data.get("State", {}).get("Name")
        if options["metadata_state"] == MetadataState.APPLIED:
            wrong = {k: options[k] for k, v in item.target_values.items() if options[k] != v}
            if wrong:
                failed[item.pk] = ("Overwritten", f"AWS reports applied but with {wrong}: changed elsewhere")
            else:
                applied.append(item.pk)
        elif instance_state in (InstanceState.TERMINATED, InstanceState.SHUTTING_DOWN):
            failed[item.pk] = ("InstanceTerminated", f"the instance is {instance_state}: the change can never apply")
        elif instance_state in (InstanceState.STOPPED, InstanceState.STOPPING):
            if not item.awaiting_start:
                to_await.append(item.pk)  # by design: AWS applies it at the next start
        elif item.awaiting_start:
            started.append(item.pk)  # started again: AWS applies it now, the timeout starts over
        elif (item.pending_since or item.submitted_at or now) < timeout:
            stuck.append(item.pk)
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
    # them finished, else at most every few seconds.
    if (finished or changed) and (finished == len(items) or _posture_refresh_due(account.pk, region)):
        posture.refresh_region(account.pk, region)
    return len(items)


def pending_regions():
    return (
        ChangeItem.objects.filter(state=ItemState.PENDING, instance__isnull=False)
        .values_list("account_id", "region")
        .distinct()
        .order_by()
    )


# ---------------------------------------------------------------- the sweeper


def sweep():
    """Return abandoned items to the queue and make sure every queued region has a runner.

    Returns the (account pk, region) pairs that need a runner now.
    """
    cutoff = timezone.now() - timezone.timedelta(seconds=settings.IMDSWEB_SUBMIT_TIMEOUT_SECONDS)
    returned = ChangeItem.objects.filter(state=ItemState.SUBMITTING, claimed_at__lt=cutoff).update(
        state=ItemState.QUEUED, claimed_at=None
    )
    if returned:
        log.warning("sweeper: %d item(s) left in submitting by a dead worker are queued again", returned)
    queued = (
        ChangeItem.objects.filter(state=ItemState.QUEUED).values_list("account_id", "region").distinct().order_by()
    )
    return [(account_pk, region) for account_pk, region in queued if not RegionLock.held(account_pk, region)]


def regions_of_batch(batch_pk):
    return list(
        ChangeItem.objects.filter(batch_id=batch_pk, state=ItemState.QUEUED)
        .values_list("account_id", "region")
        .distinct()
        .order_by()
    )
