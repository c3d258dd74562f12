"""Posture over time and drift: what each sync adds to the record, and the burndown read from it.

Sync calls a :class:`SyncObserver` at two points: with every DescribeInstances page *before* it is
written (the only moment the cached row still holds the previous HttpTokens, so a regression
from enforced back to IMDSv1-allowed can be seen without keeping a second copy of the fleet), and
once after the run and its posture summary are saved. :meth:`SyncObserver.finish` then records
drift, the notification events it implies, and the region's hourly snapshot. It never raises into
the sync: a history failure is logged and the sync's own result stands.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Subquery, Sum
from django.utils import timezone

from .choices import DriftKind, EventKind, HttpTokens, SyncStatus, Toggle
from .models import (
    ChangeBatch,
    ChangeItem,
    DiscoveryRun,
    DriftEvent,
    FleetSnapshot,
    Instance,
    NotificationEvent,
    PostureSnapshot,
    RegionPosture,
    SyncRun,
)
from .models.inventory import ENFORCED
from .models.posture import COUNTERS

log = logging.getLogger(__name__)

# Codes after which the account is not readable until someone fixes its role or trust policy.
UNREADABLE_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId",
    "ExpiredToken", "NoCredentials", "OptInRequired", "SignatureDoesNotMatch", "UnrecognizedClientException",
})


def bucket_of(when):
    """The hourly bucket (start of the hour) a moment falls in."""
    return when.replace(minute=0, second=0, microsecond=0)


# ------------------------------------------------------------------ snapshots


def _counter_values(row):
    return {name: row[name] for name in COUNTERS}


def _upsert(model, rows, unique_fields):
    model.objects.bulk_create(
        rows, batch_size=1000, update_conflicts=True, unique_fields=unique_fields, update_fields=list(COUNTERS)
    )


def _snapshot_fleet(bucket):
    totals = RegionPosture.objects.aggregate(**{name: Sum(name) for name in COUNTERS})
    _upsert(FleetSnapshot, [FleetSnapshot(bucket=bucket, **{k: v or 0 for k, v in totals.items()})], ["bucket"])


def snapshot_region(account_pk, region, now=None):
    """Copy one account/region's summary into the current bucket, and the fleet row with it."""
    bucket = bucket_of(now or timezone.now())
    row = RegionPosture.objects.filter(account_id=account_pk, region=region).values(*COUNTERS).first()
    with transaction.atomic():  # one commit for both rows
        if row is not None:
            _upsert(PostureSnapshot, [PostureSnapshot(account_id=account_pk, region=region, bucket=bucket,
                                                      **_counter_values(row))], ["account", "region", "bucket"])
        _snapshot_fleet(bucket)


def snapshot_all(now=None):
    """Every account/region's summary into the current bucket (the hourly beat): a region that did
    not sync this hour still gets its point, so every bucket sums the whole fleet."""
    bucket = bucket_of(now or timezone.now())
    rows = [
        PostureSnapshot(account_id=row["account_id"], region=row["region"], bucket=bucket, **_counter_values(row))
        for row in RegionPosture.objects.values("account_id", "region", *COUNTERS)
    ]
    with transaction.atomic():
        _upsert(PostureSnapshot, rows, ["account", "region", "bucket"])
        _snapshot_fleet(bucket)
    return len(rows)


def _thin(model, group, start, end):
    """Keep only the last bucket of each group in [start, end)."""
    last = model.objects.filter(bucket__gte=start, bucket__lt=end, **{f: OuterRef(f) for f in group})
    last = last.order_by("-bucket").values("bucket")[:1]
    deleted, _ = model.objects.filter(bucket__gte=start, bucket__lt=end).exclude(bucket=Subquery(last)).delete()
    return deleted


def prune(now=None):
    """Delete buckets past retention, and thin hourly buckets older than the hourly window to the
    day's last one. The last few days before the window are thinned again, so a missed day is caught
    up by the next run. Returns the number of rows deleted."""
    now = now or timezone.now()
    deleted = 0
    expired = now - timedelta(days=settings.IMDSWEB_HISTORY_RETENTION_DAYS)
    for model in (PostureSnapshot, FleetSnapshot):
        deleted += model.objects.filter(bucket__lt=expired).delete()[0]
    cutoff = (now - timedelta(days=settings.IMDSWEB_HISTORY_HOURLY_DAYS)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    for back in range(1, 4):
        start, end = cutoff - timedelta(days=back), cutoff - timedelta(days=back - 1)
        deleted += _thin(PostureSnapshot, ("account", "region"), start, end)
        deleted += _thin(FleetSnapshot, (), start, end)
    return deleted + prune_runs(now)


RUN_DELETE_BATCH = 2000


def _expired_runs(model, scope, cutoff):
    """Finished runs started before ``cutoff``, except the latest run of each outcome in its scope
    (account/region, or organization source): the overview's staleness reads the latest run and the
    last success, drift its baseline (any earlier success) and failure news the previous run."""
    newer = model.objects.filter(**{key: OuterRef(key) for key in (*scope, "status")}, pk__gt=OuterRef("pk"))
    return (model.objects.filter(started_at__lt=cutoff).exclude(status=SyncStatus.RUNNING)
            .filter(Exists(newer)).order_by("pk"))


def prune_runs(now=None):
    """Delete SyncRun and DiscoveryRun rows past ``IMDSWEB_RUN_RETENTION_DAYS`` in batches (a sync
    run every 15 minutes is 96 rows a day per account/region: 326,400 a day at 3,400). Drift events
    keep their instance and time; their link to a deleted run becomes empty (SET_NULL)."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.IMDSWEB_RUN_RETENTION_DAYS)
    deleted = 0
    for model, scope in ((SyncRun, ("account", "region")), (DiscoveryRun, ("source",))):
        expired = _expired_runs(model, scope, cutoff)
        while pks := list(expired.values_list("pk", flat=True)[:RUN_DELETE_BATCH]):
            with transaction.atomic():
                deleted += model.objects.filter(pk__in=pks).delete()[1].get(model._meta.label, 0)
    return deleted


# ------------------------------------------------------------------ drift and events during a sync


def _allows_v1(data):
    options = data.get("MetadataOptions", {})
    return options.get("HttpTokens") == HttpTokens.OPTIONAL and options.get("HttpEndpoint") != Toggle.DISABLED


def _where(instance):
    account = instance.account
    return f"{account.name} ({account.account_id}) {instance.region}"


def _describe(instance):
    name = f" “{instance.name}”" if instance.name else ""
    return f"{instance.instance_id}{name} in {_where(instance)}"


class SyncObserver:
    """Watches one sync run (see the module docstring)."""

    def __init__(self, run):
        self.run = run
        self.regressed = set()

    def page(self, instances):
        """Before a page is written: remember instances the cache holds as enforced that AWS now
        reports as allowing IMDSv1 (one indexed query over the page's ids)."""
        ids = [data["InstanceId"] for data in instances if _allows_v1(data)]
        if ids:
            self.regressed.update(
                Instance.objects.filter(account=self.run.account, region=self.run.region, instance_id__in=ids)
                .filter(ENFORCED).values_list("pk", flat=True)
            )

    def finish(self):
        try:
            with transaction.atomic():
                self._record_drift()
                self._record_sync_failure()
            snapshot_region(self.run.account_id, self.run.region)
        except Exception:
            log.exception("history of sync %s not recorded", self.run.pk)

    def _record_drift(self):
        run = self.run
        regressed = (
            Instance.objects.filter(pk__in=self.regressed)
            # imdsweb's own change since the page was read is not drift (the engine wrote the row).
            .exclude(Exists(ChangeItem.objects.filter(instance=OuterRef("pk"), submitted_at__gte=run.started_at)))
            if self.regressed else Instance.objects.none()
        )
        baseline = not SyncRun.objects.filter(
            account=run.account_id, region=run.region, status=SyncStatus.SUCCEEDED, started_at__lt=run.started_at
        ).exists()
        # The first sync of a region is its baseline: everything in it is "new" to us, not launched.
        new = Instance.objects.none() if baseline else Instance.objects.present().not_enforced().filter(
            account=run.account_id, region=run.region, first_seen__gte=run.started_at
        )
        found = [(DriftKind.REGRESSED, i) for i in regressed.select_related("account")]
        found += [(DriftKind.NEW_V1, i) for i in new.select_related("account")]
        if not found:
            return
        now = timezone.now()
        events = DriftEvent.objects.bulk_create([
            DriftEvent(kind=kind, account_id=i.account_id, region=i.region, instance=i, detected_at=now, sync_run=run)
            for kind, i in found
        ])
        texts = {
            DriftKind.NEW_V1: lambda i: f"new instance allowing IMDSv1: {_describe(i)}"
            + (f", launched {i.launch_time:%Y-%m-%d %H:%M} UTC" if i.launch_time else ""),
            DriftKind.REGRESSED: lambda i: f"back to IMDSv1 allowed outside imdsweb: {_describe(i)}",
        }
        record_events([
            NotificationEvent(kind=EventKind(event.kind), key=f"drift:{event.pk}", account_id=i.account_id,
                              region=i.region, instance=i, text=texts[kind](i), created_at=now)
            for event, (kind, i) in zip(events, found, strict=True)
        ])

    def _record_sync_failure(self):
        """A failing sync is news once, when it starts failing; so is an account turning unreadable."""
        run = self.run
        if run.status != SyncStatus.FAILED:
            return
        previous = (
            SyncRun.objects.filter(account=run.account_id, region=run.region, started_at__lt=run.started_at)
            .exclude(pk=run.pk).exclude(status=SyncStatus.RUNNING).order_by("-started_at").first()
        )
        where = f"{run.account.name} ({run.account.account_id}) {run.region}"
        events = []
        if previous is None or previous.status != SyncStatus.FAILED:
            events.append(NotificationEvent(kind=EventKind.SYNC_FAILING, key=f"sync:{run.pk}", text=(
                f"sync of {where} failed: {run.error}")))
        if error_code(run) in UNREADABLE_CODES and (previous is None or error_code(previous) not in UNREADABLE_CODES):
            events.append(NotificationEvent(kind=EventKind.ACCOUNT_UNREADABLE, key=f"unreadable:{run.pk}", text=(
                f"{where} can no longer be read: {run.error}")))
        for event in events:
            event.account_id, event.region, event.created_at = run.account_id, run.region, timezone.now()
        record_events(events)


def error_code(run):
    """AWS's error code of a failed run: sync records its error as ``"<code>: <message>"``."""
    return run.error.split(":", 1)[0].strip() if run and run.error else ""


def record_events(events):
    """Insert notification events; one already recorded (same kind and key) is left as it was."""
    if events:
        NotificationEvent.objects.bulk_create(events, ignore_conflicts=True)


# ------------------------------------------------------------------ reading the burndown

RANGES = (7, 30, 90)


@dataclass
class Point:
    at: object
    total: int
    enforced: int

    @property
    def allowing_v1(self):
        return self.total - self.enforced

    @property
    def enforced_pct(self):
        return round(100.0 * self.enforced / self.total, 1) if self.total else None


def _scope(queryset, account=None, region=None):
    if account is not None:
        queryset = queryset.filter(account=account)
    if region:
        queryset = queryset.filter(region=region)
    return queryset


def burndown(days, account=None, region=None, now=None):
    """Points over the last ``days`` (hourly up to 7 days, else the last of each day), the fleet or
    one account and/or region, ending with the live summary as "now". A point is the state at the
    end of its hour; the current hour is the live summary itself."""
    now = now or timezone.now()
    current = bucket_of(now)
    start = current - timedelta(days=days)
    if account is None and not region:
        rows = FleetSnapshot.objects.filter(bucket__gte=start, bucket__lt=current).values("bucket", "total", "enforced")
    else:
        rows = (
            _scope(PostureSnapshot.objects.filter(bucket__gte=start, bucket__lt=current), account, region)
            .values("bucket").annotate(total=Sum("total"), enforced=Sum("enforced")).order_by("bucket")
        )
    # A bucket holds the last state seen in its hour: it is plotted at the hour's end.
    points = [Point(row["bucket"] + timedelta(hours=1), row["total"], row["enforced"]) for row in rows]
    if days > 7:
        by_day = {}
        for point in points:
            by_day[point.at.date()] = point  # ordered by bucket: the day's last one wins
        points = list(by_day.values())
    live = _scope(RegionPosture.objects.all(), account, region).aggregate(total=Sum("total"), enforced=Sum("enforced"))
    points.append(Point(now, live["total"] or 0, live["enforced"] or 0))
    return points


def batch_markers(since, account=None, region=None, limit=50):
    """Change batches (not dry runs) created since ``since`` that touched the chosen scope."""
    batches = ChangeBatch.objects.filter(created_at__gte=since, dry_run=False)
    if account is not None or region:
        batches = batches.filter(Exists(_scope(ChangeItem.objects.filter(batch=OuterRef("pk")), account, region)))
    return list(batches.order_by("created_at")[:limit])
