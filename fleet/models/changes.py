"""The change audit trail: a batch a user asked for, and one item per instance or account/region.

Rows are the source of truth for work: the broker only carries hints. Rows are never deleted.
"""

from django.conf import settings
from django.db import models
from django.db.models import Count, Q
from django.urls import reverse

from ..choices import BatchStatus, ChangeKind, ItemState
from .inventory import Account, Instance


class ChangeBatchQuerySet(models.QuerySet):
    def with_counts(self):
        """Annotate per-state item counts in the same query (no N+1 on lists)."""
        annotations = {f"n_{state}": Count("items", filter=Q(items__state=state)) for state in ItemState.values}
        return self.annotate(n_total=Count("items"), **annotations)


class ChangeBatch(models.Model):
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    kind = models.CharField(max_length=20, choices=ChangeKind.choices, default=ChangeKind.INSTANCE_OPTIONS)
    # Only the parameters being changed, under the model's field names (http_tokens, hop_limit, ...).
    desired = models.JSONField()
    selection = models.TextField(blank=True, help_text="How the user chose the targets.")
    comment = models.TextField(blank=True)
    dry_run = models.BooleanField(default=False, help_text="Preflight with DryRun before changing anything.")
    override_usage = models.BooleanField(
        default=False, help_text="Apply even where IMDSv1 calls were seen in the usage window."
    )
    rollback_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="rollbacks"
    )
    preflight_report = models.JSONField(default=dict, blank=True)
    breakage_flagged_at = models.DateTimeField(null=True, blank=True)

    objects = ChangeBatchQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "change batches"
        permissions = [("queue_change", "Can queue metadata changes")]

    def __str__(self):
        return f"batch #{self.pk}"

    def get_absolute_url(self):
        return reverse("fleet:change_detail", args=[self.pk])

    def counts(self):
        """Per-state item counts, from the annotation when present, else one query."""
        if hasattr(self, "n_total"):
            counts = {state: getattr(self, f"n_{state}") for state in ItemState.values}
        else:
            rows = self.items.values("state").annotate(n=Count("id")).order_by()
            counts = dict.fromkeys(ItemState.values, 0) | {row["state"]: row["n"] for row in rows}
        counts["total"] = sum(counts[state] for state in ItemState.values)
        return counts

    @staticmethod
    def status_from_counts(counts):
        total = counts["total"]
        if counts[ItemState.QUEUED] == total - counts[ItemState.SKIPPED] - counts[ItemState.HELD] and counts[
            ItemState.QUEUED
        ]:
            return BatchStatus.QUEUED
        if counts[ItemState.QUEUED] or counts[ItemState.SUBMITTING]:
            return BatchStatus.RUNNING
        if counts[ItemState.PENDING]:
            return BatchStatus.PENDING
        if total and counts[ItemState.CANCELLED] == total:
            return BatchStatus.CANCELLED
        if counts[ItemState.FAILED] or counts[ItemState.STUCK]:
            return BatchStatus.DONE_WITH_ERRORS
        return BatchStatus.DONE

    @property
    def status(self):
        return self.status_from_counts(self.counts())


class ChangeItem(models.Model):
    # No database constraint on these two: a bulk request inserts up to a million items in one
    # INSERT ... SELECT whose batch is the row it just created and whose accounts come from the
    # instance rows, and PostgreSQL would re-check that same batch row and those few account rows
    # once per item at COMMIT (1.5-1.9 s of a 4.3 s request at 100,000 items, docs/benchmarks.md
    # P4). Batches and accounts with items are never deleted: PROTECT refuses it in Django, and
    # the admin and commands delete through Django. The instance keeps its database constraint.
    # Nor an index of their own (one less per item to write): (batch, state) and (state, account,
    # region) below serve the engine's and the pages' lookups; only removing an account counts its
    # items by account alone, an admin command that may scan.
    batch = models.ForeignKey(
        ChangeBatch, on_delete=models.PROTECT, related_name="items", db_constraint=False, db_index=False
    )
    account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False
    )
    region = models.CharField(max_length=32)
    # Null for an account-defaults item. Instance rows are never deleted while they have history
    # (gone instances are only marked), so the audit keeps its target.
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.PROTECT, related_name="change_items"
    )
    # A launch template for "require IMDSv2 at the source" (fleet.source_changes); null otherwise.
    source = models.ForeignKey(
        "fleet.LaunchSource", null=True, blank=True, on_delete=models.PROTECT, related_name="change_items"
    )
    # Values this item sets when they differ per item (a rollback); empty = the batch's desired.
    desired = models.JSONField(default=dict, blank=True)
    # The values of the changed parameters before the change, for rollback and audit.
    previous = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=10, choices=ItemState.choices, default=ItemState.QUEUED)
    reason = models.TextField(blank=True, help_text="Why the item was skipped, held or cancelled.")
    attempts = models.PositiveIntegerField(default=0)
    request_id = models.CharField(max_length=64, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    breakage_suspected = models.BooleanField(default=False)

    class Meta:
        ordering = ["batch_id", "id"]
        constraints = [
            # One active change per instance, and per account/region for defaults: the database
            # refuses a second one even if two requests race.
            models.UniqueConstraint(
                fields=["instance"],
                condition=Q(state__in=["queued", "submitting", "pending"], instance__isnull=False),
                name="one_active_item_per_instance",
            ),
            models.UniqueConstraint(
                fields=["account", "region"],
                condition=Q(state__in=["queued", "submitting", "pending"], instance__isnull=True, source__isnull=True),
                name="one_active_defaults_item_per_region",
            ),
            models.UniqueConstraint(
                fields=["source"],
                condition=Q(state__in=["queued", "submitting", "pending"], source__isnull=False),
                name="one_active_item_per_source",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "account", "region"]),
            models.Index(fields=["batch", "state"]),
        ]

    def __str__(self):
        if self.source_id:
            return f"{self.source.source_id}: {self.state}"
        target = self.instance.instance_id if self.instance else f"{self.account.account_id}/{self.region} defaults"
        return f"{target}: {self.state}"

    @property
    def target_values(self):
        return self.desired or self.batch.desired
