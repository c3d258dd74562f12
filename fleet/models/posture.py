"""A maintained posture summary: one row of counts per account/region.

The overview reads these few rows instead of aggregating every instance on each page view (at a
million instances that was three full passes and 1.5 s). Whatever writes instance rows refreshes
the account/region it touched (sync, usage sync, the change engine); a periodic task refreshes
them all as a safety net.

Every counter counts the instances that are part of the posture: present and neither terminated
nor shutting down (``inventory.NOT_COUNTED``); ``terminated`` and ``shutting_down`` count the
others, which the overview shows apart. ``value_counts`` holds, for both groups, how many instances have
each value of each filterable field, so that the instance list can show any single filter's count
exactly at any size (``fleet.posture.summary_counter``).
"""

from django.db import models

from .inventory import Account

# The counters, in the order the overview shows them.
COUNTERS = (
    "total",
    "enforced",
    "enforced_applied",
    "tokens_required",
    "tokens_optional",
    "pending",
    "endpoint_disabled",
    "hop_limit_over_1",
    "tags_enabled",
    "stopped",
    "v1_in_use",
    "v1_measured",
    "safe_to_enforce",
    "not_enforced_unmeasured",
    "not_enforced_in_use",
    "risk_role_public",
    "waived",
    "terminated",
    "shutting_down",
)


class PostureCounterFields(models.Model):
    """The :data:`COUNTERS` as columns: the summary row of an account/region and each history
    bucket (fleet.models.history) are the same counters, declared once."""

    total = models.PositiveIntegerField(default=0)
    enforced = models.PositiveIntegerField(default=0)
    enforced_applied = models.PositiveIntegerField(default=0)
    tokens_required = models.PositiveIntegerField(default=0)
    # AWS Config ec2-imdsv2-check NON_COMPLIANT: HttpTokens = optional.
    tokens_optional = models.PositiveIntegerField(default=0)
    pending = models.PositiveIntegerField(default=0)
    endpoint_disabled = models.PositiveIntegerField(default=0)
    hop_limit_over_1 = models.PositiveIntegerField(default=0)
    tags_enabled = models.PositiveIntegerField(default=0)
    stopped = models.PositiveIntegerField(default=0)
    v1_in_use = models.PositiveIntegerField(default=0)
    v1_measured = models.PositiveIntegerField(default=0)
    safe_to_enforce = models.PositiveIntegerField(default=0)
    not_enforced_unmeasured = models.PositiveIntegerField(default=0)
    not_enforced_in_use = models.PositiveIntegerField(default=0)
    # Allow IMDSv1 with an IAM instance profile and a public IP (inventory.RISKS): fix these first.
    risk_role_public = models.PositiveIntegerField(default=0, db_default=0)
    # Allow IMDSv1 under an active waiver (inventory.WAIVED): apart from enforced and from the
    # three not-enforced counters above, so total = enforced + waived + safe + in use + unmeasured.
    waived = models.PositiveIntegerField(default=0, db_default=0)
    # Present but not part of the posture (neither Prowler nor AWS Config evaluates them).
    terminated = models.PositiveIntegerField(default=0)
    shutting_down = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True


class RegionPosture(PostureCounterFields):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="posture")
    region = models.CharField(max_length=32)
    # {"1": n, "2": n, "none": n}: counted instances per hop limit.
    hop_limits = models.JSONField(default=dict)
    # {"counted" | "not_counted": {field: {value or "null": n}}}, zero counts left out.
    value_counts = models.JSONField(default=dict)
    refreshed_at = models.DateTimeField()

    class Meta:
        ordering = ["account__name", "account__account_id", "region"]
        constraints = [models.UniqueConstraint(fields=["account", "region"], name="uniq_region_posture")]

    def __str__(self):
        return f"{self.account.account_id}/{self.region}: {self.enforced}/{self.total} enforced"


class HopLimitCount(models.Model):
    """Counted instances of one account/region per hop limit (None: AWS left it out): the overview's
    distribution is one SUM ... GROUP BY over these narrow rows. Summed out of ``hop_limits`` with
    jsonb_each it cost 15-60 ms at 3,400 account/regions, a set-returning call per summary row."""

    posture = models.ForeignKey(RegionPosture, on_delete=models.CASCADE, related_name="hop_limit_counts")
    hop_limit = models.PositiveSmallIntegerField(null=True)
    n = models.PositiveIntegerField()

    def __str__(self):
        return f"{self.posture_id}: hop limit {self.hop_limit}: {self.n}"
