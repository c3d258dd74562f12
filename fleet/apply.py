"""The worker side of the change engine: submit queued items within AWS's rate limits, follow
pending ones until AWS reports ``applied``, and sweep up work that a dead broker or worker left.

Work is claimed with a conditional UPDATE (queued -> submitting), so no two workers ever send
the same item and no lock is held across an AWS call. One runner at a time works through an
account/region (a short-lived lock in the cache); account/regions run in parallel.
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
STOPPED_REASON = "instance is stopped: AWS applies the change when it next starts"
POSTURE_REFRESH_SECONDS = 5
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


# ---------------------------------------------------------------- submitting


def _claim_next(account, region):
    """Claim the next queued item of this account/region: (item, None when none is left, False when
    another worker took it first). Two statements: read it with what submitting needs, then the
    conditional UPDATE that makes it ours."""
    item = (
        ChangeItem.objects.filter(account=account, region=region, state=ItemState.QUEUED)
        .select_related("batch", "instance", "account")
        .order_by("id")
        .first()
    )
    if item is None:
        return None
    now = timezone.now()
    claimed = ChangeItem.objects.filter(pk=item.pk, state=ItemState.QUEUED).update(
        state=ItemState.SUBMITTING, claimed_at=now, attempts=F("attempts") + 1
    )
    if not claimed:
        return False  # another worker took it between our read and our update
    item.state, item.claimed_at, item.attempts = ItemState.SUBMITTING, now, item.attempts + 1
    return item


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


def _preflight(item):
    """DryRun once per batch and account/region before changing anything there.

    Returns True to go on with the item, False when the region failed (items recorded).
    """
    batch, account, region = item.batch, item.account, item.region
    key = f"{account.account_id}/{region}"
    # The batch row was read with the item, after any earlier preflight of this region was recorded
    # (one runner per account/region records it before going on).
    if batch.dry_run or key in batch.preflight_report:
        return True
    try:
        _call(item, dry_run=True, token_taken=False)
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


def _call(item, dry_run, token_taken):
    target = targets.target_for(item.batch.kind)  # kinds written as target objects (fleet.targets)
    if target is not None:
        return target().call(item, dry_run=dry_run, token_taken=token_taken)
    if item.batch.kind == ChangeKind.ACCOUNT_DEFAULTS:
        return {"request_id": aws.modify_instance_metadata_defaults(
            item.account, item.region, item.target_values, dry_run=dry_run, token_taken=token_taken)}
    return aws.modify_instance_metadata_options(
        item.account, item.region, item.instance.instance_id, item.target_values, dry_run=dry_run,
        token_taken=token_taken,
    )


def submit(item):
    """Send one claimed item to AWS and record what happened. Returns the retryable error, if any."""
    if item.batch.kind == ChangeKind.ACCOUNT_DEFAULTS:
        managed = MetadataDefaults.objects.filter(
            account=item.account, region=item.region, managed_by="declarative-policy"
        ).first()
        if managed:
            _finish(item, ItemState.FAILED, error_code="DeclarativePolicy",
                    error_message=managed.managed_exception_message or "managed by a declarative policy")
            return None
    try:
        result = _call(item, dry_run=item.batch.dry_run, token_taken=True)
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
    target = targets.target_for(item.batch.kind)
    if target is not None:
        target().record(item, result)
        _finish(item, ItemState.APPLIED, request_id=result["request_id"], submitted_at=timezone.now(),
                error_code="", error_message="")
        return None
    if item.batch.kind == ChangeKind.ACCOUNT_DEFAULTS:
        sync_defaults(item.account, item.region)
        _finish(item, ItemState.APPLIED, request_id=result["request_id"], submitted_at=timezone.now(),
                error_code="", error_message="")
        return None
    state = ItemState.APPLIED if result["metadata_state"] == MetadataState.APPLIED else ItemState.PENDING
    with transaction.atomic():  # one commit for the item and its instance
        Instance.objects.filter(pk=item.instance_id).update(
            metadata_state=result["metadata_state"] or MetadataState.PENDING,
            **{name: result[name] for name in INSTANCE_OPTION_FIELDS if result.get(name) is not None},
        )
        _finish(item, state, request_id=result["request_id"], submitted_at=timezone.now(), error_code="",
                error_message="")
    return None


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
            wait = ratelimit.try_take(account.account_id, region, MODIFY)
            if wait > MAX_SLEEP:
                again = wait
                break
            if wait > 0:
                time.sleep(wait)  # nothing was taken: take the token once it has refilled
                continue
            item = _claim_next(account, region)
            if item is False:
                continue
            if item is None:
                break
            try:
                go_on = _preflight(item)
            except aws.RetryableAwsError as exc:
                _requeue(item, exc)
                again = _backoff(account_pk, region)
                break
            if not go_on:
                continue
            error = submit(item)
            submitted += 1
            if error is not None:
                again = _backoff(account_pk, region)
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


def track_region(account, region):
    """Check this account/region's pending items with batched DescribeInstances."""
    items = list(
        ChangeItem.objects.filter(account=account, region=region, state=ItemState.PENDING, instance__isnull=False)
        .select_related("instance", "batch")
    )
    if not items:
        return 0
    now = timezone.now()
    seen = {
        data["InstanceId"]: data
        for data in aws.describe_instances_by_ids(account, region, {item.instance.instance_id for item in items})
    }
    upsert_instances(account, region, list(seen.values()), now)
    timeout = now - timezone.timedelta(minutes=settings.IMDSWEB_PENDING_TIMEOUT_MINUTES)
    outcome = {ItemState.APPLIED: [], ItemState.STUCK: []}
    failed = {}
    waiting_for_start = []
    for item in items:
        data = seen.get(item.instance.instance_id)
        if data is None:
            failed[item.pk] = ("InvalidInstanceID.NotFound", "the instance no longer exists in AWS")
            continue
        options = aws.ec2.options_from_aws(data.get("MetadataOptions", {}))
        stopped = data.get("State", {}).get("Name") in (InstanceState.STOPPED, InstanceState.STOPPING)
        if options["metadata_state"] == MetadataState.APPLIED:
            wrong = {k: options[k] for k, v in item.target_values.items() if options[k] != v}
            if wrong:
                failed[item.pk] = ("Overwritten", f"AWS reports applied but with {wrong}: changed elsewhere")
            else:
                outcome[ItemState.APPLIED].append(item.pk)
        elif stopped:
            waiting_for_start.append(item.pk)  # by design: AWS applies it at the next start
        elif item.submitted_at and item.submitted_at < timeout:
            outcome[ItemState.STUCK].append(item.pk)
    for state, pks in outcome.items():
        if pks:
            reason = "" if state == ItemState.APPLIED else (
                f"still pending after {settings.IMDSWEB_PENDING_TIMEOUT_MINUTES} minutes")
            ChangeItem.objects.filter(pk__in=pks, state=ItemState.PENDING).update(
                state=state, finished_at=now, reason=reason)
    ChangeItem.objects.filter(pk__in=waiting_for_start, state=ItemState.PENDING).exclude(
        reason=STOPPED_REASON).update(reason=STOPPED_REASON)
    for pk, (code, message) in failed.items():
        ChangeItem.objects.filter(pk=pk, state=ItemState.PENDING).update(
            state=ItemState.FAILED, error_code=code, error_message=message, finished_at=now)
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
