"""IMDSv1 usage evidence: CloudWatch ``MetadataNoToken`` / ``MetadataNoTokenRejected`` per instance.

AWS's advice is to require IMDSv2 only once ``MetadataNoToken`` has stayed at zero for a while.
This stage, on its own slower schedule, records each instance's IMDSv1 calls over the window so
the change engine can hold back instances that would break. After enforcement,
``MetadataNoTokenRejected`` > 0 means a caller is being refused: the change is flagged as a
likely breakage on its item and batch, with rollback one click away.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from . import aws, posture
from .choices import HttpTokens, ItemState
from .models import ChangeBatch, ChangeItem, Instance, UsageReading

log = logging.getLogger(__name__)

# Two queries per instance and at most 500 per GetMetricData call.
INSTANCES_PER_CALL = aws.cloudwatch.QUERIES_PER_CALL // len(aws.cloudwatch.METRICS)


def stale_before(now=None):
    """Readings older than this are no evidence (IMDSWEB_USAGE_STALE_MINUTES)."""
    return (now or timezone.now()) - timedelta(minutes=settings.IMDSWEB_USAGE_STALE_MINUTES)


def due(account, region):
    """True when this account/region's usage was never read, or its last reading is stale."""
    reading = UsageReading.objects.filter(account=account, region=region).first()
    return reading is None or reading.read_at is None or reading.read_at < stale_before()


def request_reading(pairs):
    """Record that a user asked for a reading now of these (account, region) pairs; the caller
    queues the tasks. Returns the time of the request (the page waits for readings after it)."""
    now = timezone.now()
    for account, region in pairs:
        UsageReading.objects.update_or_create(account=account, region=region, defaults={"requested_at": now})
    return now


def sync_usage(account, region, days=None):
    """Refresh the IMDSv1 figures of this account/region's present instances.

    Returns (instances measured, instances with IMDSv1 calls, newly flagged breakages). An AWS
    error (a missing ``cloudwatch:GetMetricData`` permission, say) is recorded on every instance
    it left unmeasured and on the region's UsageReading, then raised: the readiness gate shows it
    as the reason those instances are held, never as "no calls".
    """
    days = days or settings.IMDSWEB_USAGE_WINDOW_DAYS
    instances = list(Instance.objects.present().filter(account=account, region=region).only("pk", "instance_id"))
    now = timezone.now()
    UsageReading.objects.update_or_create(account=account, region=region, defaults={"started_at": now})
    calling = 0
    rejected_since = {}
    start = 0
    try:
        for start in range(0, len(instances), INSTANCES_PER_CALL):
            chunk = instances[start : start + INSTANCES_PER_CALL]
            usage = aws.get_metadata_usage(account, region, [i.instance_id for i in chunk], days)
            for instance in chunk:
                calls, last_call = usage[instance.instance_id]["MetadataNoToken"]
                rejected, last_rejected = usage[instance.instance_id]["MetadataNoTokenRejected"]
                instance.v1_calls = int(calls)
                instance.v1_rejected = int(rejected)
                instance.v1_last_seen = last_call
                instance.usage_synced_at = now
                instance.usage_error = None
                calling += calls > 0
                if rejected > 0 and last_rejected:
                    rejected_since[instance.pk] = last_rejected
            Instance.objects.bulk_update(
                chunk, ["v1_calls", "v1_rejected", "v1_last_seen", "usage_synced_at", "usage_error"]
            )
    except aws.AwsError as exc:
        error = f"{exc.code}: {exc.message}"[:2000]
        Instance.objects.filter(pk__in=[i.pk for i in instances[start:]]).update(usage_error=error)
        UsageReading.objects.filter(account=account, region=region).update(attempted_at=timezone.now(), error=error)
        posture.refresh_region(account.pk, region)
        log.warning("usage %s/%s failed: %s", account.account_id, region, error)
        raise
    flagged = flag_breakages(rejected_since)
    UsageReading.objects.filter(account=account, region=region).update(
        read_at=now, attempted_at=timezone.now(), error=""
    )
    posture.refresh_region(account.pk, region)
    log.info("usage %s/%s: %d measured, %d calling IMDSv1, %d breakages flagged",
             account.account_id, region, len(instances), calling, flagged)
    return len(instances), calling, flagged


def flag_breakages(rejected_since):
    """Flag applied enforcement items whose instance has had IMDSv1 calls refused since.

    ``rejected_since``: {instance pk: time of the latest refused call}. CloudWatch sums by day,
    so a refusal on the day of the change counts.
    """
    if not rejected_since:
        return 0
    enforcing = Q(desired__http_tokens=HttpTokens.REQUIRED) | Q(
        desired={}, batch__desired__http_tokens=HttpTokens.REQUIRED
    )
    candidates = ChangeItem.objects.filter(
        enforcing, state=ItemState.APPLIED, breakage_suspected=False, instance_id__in=list(rejected_since)
    ).only("pk", "instance_id", "batch_id", "submitted_at", "finished_at")
    flagged_items, batches = [], set()
    for item in candidates:
        changed_at = item.submitted_at or item.finished_at
        if changed_at is None or rejected_since[item.instance_id] >= changed_at - timedelta(days=1):
            flagged_items.append(item.pk)
            batches.add(item.batch_id)
    ChangeItem.objects.filter(pk__in=flagged_items).update(breakage_suspected=True)
    ChangeBatch.objects.filter(pk__in=batches, breakage_flagged_at__isnull=True).update(
        breakage_flagged_at=timezone.now()
    )
    return len(flagged_items)
