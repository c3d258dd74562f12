"""Posture over time and drift.

A snapshot copies an account/region's :class:`RegionPosture` counters into an hourly bucket: every
sync overwrites its region's bucket for the current hour, and an hourly beat task writes every
region's bucket (so a region that did not sync still has a point) plus one fleet-wide row, which
the fleet burndown reads instead of summing thousands of rows per point. Buckets older than
``IMDSWEB_HISTORY_HOURLY_DAYS`` are thinned to the day's last one; rows older than
``IMDSWEB_HISTORY_RETENTION_DAYS`` are deleted (``fleet.history.prune``). docs/history.md gives
the cost in rows and bytes.
"""

from django.db import models

from ..choices import DriftKind
from .inventory import Account, Instance, SyncRun
from .posture import PostureCounterFields


class PostureCounters(PostureCounterFields):
    """The :data:`fleet.models.posture.COUNTERS` of one hourly bucket (start of the hour, UTC);
    ``risk_role_public`` is 0 in the buckets from before instance profiles and public IPs were read."""

    bucket = models.DateTimeField()

    class Meta:
        abstract = True


class PostureSnapshot(PostureCounters):
    # No index of its own: the unique (account, region, bucket) index leads with it.
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+", db_index=False)
    region = models.CharField(max_length=32)

    class Meta:
        ordering = ["bucket"]
        constraints = [
            models.UniqueConstraint(fields=["account", "region", "bucket"], name="uniq_posture_snapshot"),
        ]
        # A region across all accounts (the burndown's region filter).
        indexes = [models.Index(fields=["region", "bucket"])]

    def __str__(self):
        return f"{self.account_id}/{self.region} {self.bucket:%Y-%m-%d %H:00}: {self.enforced}/{self.total}"


class FleetSnapshot(PostureCounters):
    """The sum of every account/region's snapshot of one bucket."""

    class Meta:
        ordering = ["bucket"]
        constraints = [models.UniqueConstraint(fields=["bucket"], name="uniq_fleet_snapshot")]

    def __str__(self):
        return f"fleet {self.bucket:%Y-%m-%d %H:00}: {self.enforced}/{self.total}"


class DriftEvent(models.Model):
    """An instance a sync found allowing IMDSv1 that imdsweb did not make so: a new launch, or
    one whose HttpTokens went from required back to optional since the previous sync."""

    kind = models.CharField(max_length=10, choices=DriftKind.choices)
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    region = models.CharField(max_length=32)
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="drift_events")
    detected_at = models.DateTimeField()
    sync_run = models.ForeignKey(SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["-detected_at", "-id"]
        indexes = [
            models.Index(fields=["detected_at"]),
            models.Index(fields=["instance", "detected_at"]),
        ]

    def __str__(self):
        return f"{self.get_kind_display()}: {self.instance_id} at {self.detected_at:%Y-%m-%d %H:%M}"
