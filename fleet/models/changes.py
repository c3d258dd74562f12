"""The change audit trail: a batch a user asked for, and one item per instance or account/region.

Rows are the source of truth for work: the broker only carries hints. Rows are never deleted.
"""

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Count, F, Q
from django.urls import reverse
from django.utils import timezone

from ..choices import ApprovalState, BatchStatus, ChangeKind, ItemState, RolloutState
from .inventory import Account, Instance


class ChangeBatchQuerySet(models.QuerySet):
    def with_counts(self):
        """Annotate per-state item counts in the same query (no N+1 on lists)."""
        annotations = {f"n_{state}": Count("items", filter=Q(items__state=state)) for state in ItemState.values}
        awaiting = Count("items", filter=Q(items__state=ItemState.PENDING, items__awaiting_start=True))
        return self.annotate(n_total=Count("items"), n_awaiting_start=awaiting, **annotations)


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
    override_owner = models.BooleanField(
        default=False, help_text="Change instances whose source a managed service owns (EKS, Beanstalk, EMR, "
                                 "CloudFormation) anyway."
    )
    override_waivers = models.BooleanField(
        default=False, db_default=False, help_text="Apply to waived instances too (this batch only)."
    )
    rollback_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="rollbacks"
    )
    preflight_report = models.JSONField(default=dict, blank=True)
    # The one-time token of the confirmation form that created this batch: a replayed form (two
    # tabs, a resent POST) finds this batch instead of creating a second one.
    request_token = models.CharField(max_length=64, null=True, blank=True, unique=True, editable=False)
    breakage_flagged_at = models.DateTimeField(null=True, blank=True)
    # A large selection is expanded into items by a worker, in chunks (fleet.changes.expansion):
    # the selection's query, the instances it held when requested, how many are expanded, and
    # the keyset cursor (the last instance pk expanded) a resumed expansion starts after.
    expanding = models.BooleanField(default=False, editable=False)
    selection_query = models.JSONField(default=dict, blank=True, editable=False)
    expected = models.PositiveIntegerField(null=True, blank=True, editable=False)
    expanded = models.PositiveIntegerField(default=0, editable=False)
    expanded_through = models.BigIntegerField(null=True, blank=True, editable=False)

    # Staged rollout (fleet.changes.rollout): items carry a wave number; the runner claims only
    # items of waves up to ``released_wave``. A batch of one wave has wave 0 released from the start.
    waves = models.PositiveSmallIntegerField(default=1, db_default=1)
    released_wave = models.PositiveSmallIntegerField(default=0, db_default=0)
    wave_labels = models.JSONField(default=list, blank=True, help_text="What each wave holds, in words.")
    soak_seconds = models.PositiveIntegerField(default=0, db_default=0)
    rollout_state = models.CharField(max_length=10, choices=RolloutState.choices, blank=True, default="",
                                     db_default="")
    wave_started_at = models.DateTimeField(null=True, blank=True)
    soak_until = models.DateTimeField(null=True, blank=True)
    rollout_note = models.TextField(blank=True, default="", db_default="")
    # When the runner may claim: the scheduled start, or the current (or next) opening of the
    # recurring ``window`` ({"days": [0..6, Monday=0], "start": "HH:MM", "end": "HH:MM", "tz": ...}).
    start_at = models.DateTimeField(null=True, blank=True)
    window = models.JSONField(default=dict, blank=True)
    run_from = models.DateTimeField(null=True, blank=True)
    run_until = models.DateTimeField(null=True, blank=True)
    # Four-eyes approval: nothing is sent while it is awaited.
    approval = models.CharField(max_length=10, choices=ApprovalState.choices, blank=True, default="", db_default="")
    approval_reason = models.TextField(blank=True, default="", db_default="")
    approval_expires_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    approved_at = models.DateTimeField(null=True, blank=True)

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
        """Per-state item counts, from the annotation when present, else one query.

        Besides the states: ``awaiting_start`` (pending items whose instance is stopped: AWS applies
        them at its next start, nothing moves until then), ``active`` (items still moving: queued,
        submitting, or pending on an instance that runs) and ``total``.
        """
        if hasattr(self, "n_total"):
            counts = {state: getattr(self, f"n_{state}") for state in ItemState.values}
            awaiting = getattr(self, "n_awaiting_start", None)
            if awaiting is None:  # counts set by hand without it: one more query, only if something is pending
                awaiting = self.items.filter(state=ItemState.PENDING, awaiting_start=True).count() if counts[
                    ItemState.PENDING] else 0
            counts["awaiting_start"] = awaiting
        else:
            rows = (
                self.items.values("state", "awaiting_start").annotate(n=Count("id")).order_by()
            )
            counts = dict.fromkeys([*ItemState.values, "awaiting_start"], 0)
            for row in rows:
                counts[row["state"]] += row["n"]
                if row["state"] == ItemState.PENDING and row["awaiting_start"]:
                    counts["awaiting_start"] += row["n"]
        counts["total"] = sum(counts[state] for state in ItemState.values)
        counts["active"] = sum(counts[state] for state in ItemState.active()) - counts["awaiting_start"]
        return counts

    @staticmethod
    def status_from_counts(counts):
        """The batch's status. Items waiting for a stopped instance's next start do not keep a
        batch running: once they are all that is left, it is done for now (or done with errors)."""
        total = counts["total"]
        if counts[ItemState.QUEUED] == total - counts[ItemState.SKIPPED] - counts[ItemState.HELD] and counts[
            ItemState.QUEUED
        ]:
            return BatchStatus.QUEUED
        if counts[ItemState.QUEUED] or counts[ItemState.SUBMITTING]:
            return BatchStatus.RUNNING
        if counts[ItemState.PENDING] > counts.get("awaiting_start", 0):
            return BatchStatus.PENDING
        if total and counts[ItemState.CANCELLED] == total:
            return BatchStatus.CANCELLED
        if counts[ItemState.FAILED] or counts[ItemState.STUCK]:
            return BatchStatus.DONE_WITH_ERRORS
        if counts[ItemState.PENDING]:
            return BatchStatus.AWAITING_START
        return BatchStatus.DONE

    @property
    def status(self):
        if self.expanding:
            return BatchStatus.EXPANDING
        return self.status_from_counts(self.counts())

    @property
    def active_count(self):
        """Items still moving (not counting those waiting for their stopped instance to start)."""
        return self.counts()["active"]


class ChangeItemQuerySet(models.QuerySet):
    """The engine's transitions of many items at once (one UPDATE each)."""

    def fail_region(self, batch, account, region, error):
        """The preflight found the principal may not do this here: the batch's unsent items of this
        account/region fail with its answer."""
        return self.filter(
            batch=batch, account=account, region=region, state__in=[ItemState.QUEUED, ItemState.SUBMITTING]
        ).update(
            state=ItemState.FAILED,
            error_code=error.code,
            error_message=f"preflight (DryRun) failed for {account.account_id}/{region}: {error.message}"[:2000],
            request_id=error.request_id,
            finished_at=timezone.now(),
        )

    def return_abandoned(self, cutoff):
        """Items claimed before ``cutoff`` and never answered (their worker died) go back to the queue."""
        return self.filter(state=ItemState.SUBMITTING, claimed_at__lt=cutoff).update(
            state=ItemState.QUEUED, claimed_at=None
        )

    def claim_all(self, items):
        """queued -> submitting for each of ``items`` in one conditional UPDATE; returns the ones
        this call claimed (another worker, a cancel or the sweeper may have moved the others)."""
        if not items:
            return []
        now = timezone.now()
        pks = [item.pk for item in items]
        claimed = self.filter(pk__in=pks, state=ItemState.QUEUED).update(
            state=ItemState.SUBMITTING, claimed_at=now, attempts=F("attempts") + 1
        )
        if claimed != len(items):  # the claim's own time marks what it took
            ours = set(self.filter(pk__in=pks, state=ItemState.SUBMITTING, claimed_at=now).values_list("pk", flat=True))
            items = [item for item in items if item.pk in ours]
        for item in items:
            item.state, item.claimed_at, item.attempts = ItemState.SUBMITTING, now, item.attempts + 1
        return items

    def unclaim_all(self, items):
        """Give claimed items back to the queue without counting an attempt (their calls are still ahead)."""
        if items:
            self.filter(pk__in=[item.pk for item in items], state=ItemState.SUBMITTING).update(
                state=ItemState.QUEUED, claimed_at=None, attempts=F("attempts") - 1
            )

    def _finish_sql(self, state, answered):
        ops = connection.ops
        finished_at = ops.adapt_datetimefield_value(timezone.now()) if state in ItemState.final() else None
        table = ops.quote_name(self.model._meta.db_table)
        sql = (f"UPDATE {table} SET state = %s, finished_at = %s, request_id = %s, submitted_at = %s, "
               f"error_code = '', error_message = '' WHERE id = %s AND state = %s")
        return sql, [
            (state, finished_at, request_id, ops.adapt_datetimefield_value(at), item.pk, ItemState.SUBMITTING)
            for item, request_id, at in answered
        ]

    def finish_all(self, state, answered):
        """Move items we hold (submitting) to ``state``, each with its own AWS request id and time
        of answer: ``answered`` is ``[(item, request id, answered at)]``.

        One parameterised UPDATE run for every item (``executemany``). It is plain SQL because the
        ORM's UPDATE, compiled again for every answer (or with a CASE per item for several), cost
        more worker CPU than the AWS call it recorded (benchmark P5b's profile)."""
        if not answered:
            return 0
        sql, rows = self._finish_sql(state, answered)
        with connection.cursor() as cursor:
            cursor.executemany(sql, rows)
        return len(answered)

    def finish_with_instance(self, state, item, request_id, at, values):
        """``finish_all`` for one item and, in the same commit, ``values`` (field: value) on its
        instance row: AWS's answer to one ModifyInstanceMetadataOptions, as the runner records it.

        On PostgreSQL this is one statement (a data-modifying WITH) in autocommit: one round trip
        to the database instead of four (BEGIN, two UPDATEs, COMMIT) for every call AWS answered,
        a large share of the engine's time per item at AWS's rate on few cores (benchmark P5b).
        Elsewhere, the two UPDATEs in one transaction."""
        if connection.vendor != "postgresql":
            with transaction.atomic():
                Instance.objects.filter(pk=item.instance_id).update(**values)
                return self.finish_all(state, [(item, request_id, at)])
        ops = connection.ops
        fields = [(Instance._meta.get_field(name), value) for name, value in values.items()]
        assignments = ", ".join(f"{ops.quote_name(field.column)} = %s" for field, _ in fields)
        sql, rows = self._finish_sql(state, [(item, request_id, at)])
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH instance AS (UPDATE {ops.quote_name(Instance._meta.db_table)} SET {assignments} "
                f"WHERE id = %s) {sql}",
                [*(field.get_db_prep_save(value, connection) for field, value in fields), item.instance_id, *rows[0]],
            )
        return 1

    def claimable(self, now=None):
        """Queued items the runner may send now: their wave is released, their batch is not
        awaiting approval, and it is inside its allowed time (fleet.changes.rollout keeps
        ``run_from``/``run_until`` on the current or next opening of its window)."""
        now = now or timezone.now()
        return self.filter(
            Q(batch__run_from__isnull=True) | Q(batch__run_from__lte=now),
            Q(batch__run_until__isnull=True) | Q(batch__run_until__gt=now),
            state=ItemState.QUEUED,
            wave__lte=F("batch__released_wave"),
        ).exclude(batch__approval=ApprovalState.AWAITING)


class ChangeItem(models.Model):
    # No database constraint on these two: a bulk request inserts up to a million items in one
    # INSERT ... SELECT whose batch is the row it just created and whose accounts come from the
    # instance rows, and PostgreSQL would re-check that same batch row and those few account rows
    # once per item at COMMIT, a large share of a bulk request's time (benchmark P4 measures the
    # request). Batches and accounts with items are never deleted: PROTECT refuses it in Django, and
    # the admin and commands delete through Django.
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
    # (gone instances are only marked), so the audit keeps its target. No database constraint
    # either, for the same reason as the batch's: PostgreSQL checks it item by item at COMMIT and
    # locks the instance row each time (a write per instance), a tenth of the time of every chunk
    # of a million-instance expansion (docs/benchmarks.md P4b); Django's PROTECT refuses deleting
    # an instance that has items, and every path writes an item from an instance row it has just
    # read. Its index stays: an instance's history is read by it.
    instance = models.ForeignKey(
        Instance, null=True, blank=True, on_delete=models.PROTECT, related_name="change_items", db_constraint=False
    )
    # A launch template for "require IMDSv2 at the source" (fleet.source_changes); null otherwise.
    # Its index is partial (below): an instance item, nearly every item, has no source and adds no
    # entry to it.
    source = models.ForeignKey(
        "fleet.LaunchSource", null=True, blank=True, on_delete=models.PROTECT, related_name="change_items",
        db_index=False,
    )
    # Values this item sets when they differ per item (a rollback); empty = the batch's desired.
    desired = models.JSONField(default=dict, blank=True)
    # The values of the changed parameters before the change, for rollback and audit.
    previous = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=10, choices=ItemState.choices, default=ItemState.QUEUED)
    reason = models.TextField(blank=True, help_text="Why the item was skipped, held or cancelled.")
    # The decision behind ``state`` (fleet.changes.decision.Outcome): what the batch page counts
    # "held by reason" and "skipped by reason" with. Blank for items decided by the engine later.
    outcome = models.CharField(max_length=20, blank=True, default="")
    # A pending item whose instance is stopped: AWS accepted the change and applies it when the
    # instance next starts. Set and cleared by the tracker from DescribeInstances. A database
    # default too: a bulk request inserts items with its own INSERT ... SELECT.
    awaiting_start = models.BooleanField(
        default=False, db_default=False, help_text="Pending until the stopped instance next starts."
    )
    # When the pending timeout's clock started, if not at submitted_at: the time the tracker saw
    # the instance running again after it had waited stopped.
    pending_since = models.DateTimeField(null=True, blank=True)
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
    # The wave of a staged rollout this item belongs to (0: the first, the canary).
    wave = models.PositiveSmallIntegerField(default=0, db_default=0)

    objects = ChangeItemQuerySet.as_manager()

    class Meta:
        ordering = ["batch_id", "id"]
        constraints = [
            # One active change per instance, and per account/region for defaults: the database
            # refuses a second one even if two requests race.
            models.UniqueConstraint(
                fields=["instance"],
                condition=Q(state__in=ItemState.active(), instance__isnull=False),
                name="one_active_item_per_instance",
            ),
            models.UniqueConstraint(
                fields=["account", "region"],
                condition=Q(state__in=ItemState.active(), instance__isnull=True, source__isnull=True),
                name="one_active_defaults_item_per_region",
            ),
            models.UniqueConstraint(
                fields=["source"],
                condition=Q(state__in=ItemState.active(), source__isnull=False),
                name="one_active_item_per_source",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "account", "region"]),
            models.Index(fields=["batch", "state"]),
            models.Index(fields=["source"], condition=Q(source__isnull=False), name="changeitem_source"),
        ]

    def __str__(self):
        if self.source_id:
            return f"{self.source.source_id}: {self.state}"
        target = self.instance.instance_id if self.instance else f"{self.account.account_id}/{self.region} defaults"
        return f"{target}: {self.state}"

    @property
    def target_values(self):
        return self.desired or self.batch.desired

    # ---- the engine's transitions of one item: conditional UPDATEs, so only the holder moves it

    def claim(self):
        """queued -> submitting with a conditional UPDATE: False when another worker took it first."""
        now = timezone.now()
        claimed = ChangeItem.objects.filter(pk=self.pk, state=ItemState.QUEUED).update(
            state=ItemState.SUBMITTING, claimed_at=now, attempts=F("attempts") + 1
        )
        if claimed:
            self.state, self.claimed_at, self.attempts = ItemState.SUBMITTING, now, self.attempts + 1
        return bool(claimed)

    def unclaim(self):
        """Give a claimed item back to the queue without counting an attempt (its call is still ahead)."""
        ChangeItem.objects.filter(pk=self.pk, state=ItemState.SUBMITTING).update(
            state=ItemState.QUEUED, claimed_at=None, attempts=F("attempts") - 1
        )

    def finish(self, state, **fields):
        """Move an item we hold (submitting) to its next state."""
        final = state in ItemState.final()
        ChangeItem.objects.filter(pk=self.pk, state=ItemState.SUBMITTING).update(
            state=state, finished_at=timezone.now() if final else None, **fields
        )

    def requeue(self, error):
        """AWS refused for now (throttled, unavailable): back to the queue with the error shown."""
        ChangeItem.objects.filter(pk=self.pk, state=ItemState.SUBMITTING).update(
            state=ItemState.QUEUED, claimed_at=None, error_code=error.code, error_message=error.message[:2000]
        )
