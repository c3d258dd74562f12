"""AWS Organizations: where accounts are discovered from, what each discovery changed, and each
account's health (can imdsweb assume its role, and may it make each call it needs)."""

from django.db import models

from ..choices import HealthCheck, SyncStatus
from ..validators import external_id_validator, role_arn_validator, validate_region_list
from .inventory import Account


def role_template_validator(value):
    from django.core.exceptions import ValidationError

    if "{account_id}" not in value:
        raise ValidationError("The role ARN template must contain {account_id}.", code="no_placeholder")
    role_arn_validator(value.replace("{account_id}", "123456789012"))


class OrganizationSource(models.Model):
    """An organization imdsweb keeps its account list in step with, and how to reach it."""

    name = models.CharField(max_length=100, unique=True, default="organization")
    management_role_arn = models.CharField(
        max_length=2048, blank=True, validators=[role_arn_validator],
        help_text="Role in the management or delegated-administrator account that may call "
        "organizations:List*; empty uses imdsweb's own credentials.",
    )
    # Never rendered nor logged, like Account.external_id.
    management_external_id = models.CharField(max_length=1224, blank=True, validators=[external_id_validator])
    role_template = models.CharField(
        max_length=2048, validators=[role_template_validator],
        default="arn:aws:iam::{account_id}:role/imdsweb-reader",
        help_text="Role ARN registered for each discovered account; {account_id} is replaced.",
    )
    external_id = models.CharField(
        max_length=1224, blank=True, validators=[external_id_validator],
        help_text="External id registered for each discovered account.",
    )
    regions_allow = models.JSONField(
        default=list, blank=True, validators=[validate_region_list],
        help_text="Only these regions (of those enabled in each account); empty = every enabled region.",
    )
    regions_deny = models.JSONField(
        default=list, blank=True, validators=[validate_region_list], help_text="Never these regions."
    )
    include_management = models.BooleanField(
        default=False, help_text="Also register the management account (it often has no workloads)."
    )
    home_region = models.CharField(
        max_length=32, default="us-east-1", help_text="Region of the DescribeRegions call in each account."
    )
    enabled = models.BooleanField(default=True, help_text="Re-discovered on the beat schedule.")
    management_account_id = models.CharField(max_length=12, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def role_arn_for(self, account_id):
        return self.role_template.replace("{account_id}", account_id)


class DiscoveryRun(models.Model):
    """One discovery: what it found and every change it made to the account list."""

    source = models.ForeignKey(OrganizationSource, on_delete=models.CASCADE, related_name="runs")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=SyncStatus.choices, default=SyncStatus.RUNNING)
    accounts_seen = models.PositiveIntegerField(default=0)
    # [{"account_id", "name", "change": DiscoveryChange, "detail"}], in the order they were made.
    changes = models.JSONField(default=list)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self):
        return f"discovery of {self.source} {self.started_at:%Y-%m-%d %H:%M} {self.status}"

    def count(self, change):
        return sum(1 for item in self.changes if item["change"] == change)


class AccountHealth(models.Model):
    """The latest health check of an account: one row per account, overwritten by each check."""

    account = models.OneToOneField(Account, on_delete=models.CASCADE, related_name="health")
    checked_at = models.DateTimeField()
    region = models.CharField(max_length=32, help_text="Region the calls were made in.")
    # False when any needed permission was refused or the role could not be assumed.
    healthy = models.BooleanField()
    # False when imdsweb cannot read the account at all (AssumeRole or DescribeInstances failed).
    readable = models.BooleanField()
    # {HealthCheck value: {"ok": true | false | null, "error": "Code: AWS's message" or ""}}.
    # null = not checked (an earlier step failed, or nothing to check it on).
    checks = models.JSONField(default=dict)

    class Meta:
        ordering = ["healthy", "readable", "account__name"]
        verbose_name_plural = "account health"

    def __str__(self):
        return f"{self.account.account_id} {'healthy' if self.healthy else 'failing'}"

    @property
    def results(self):
        """[(check, label, ok, error)] in HealthCheck's order."""
        return [
            (check.value, check.label, self.checks.get(check.value, {}).get("ok"),
             self.checks.get(check.value, {}).get("error", ""))
            for check in HealthCheck
        ]

    @property
    def first_error(self):
        return next((error for _, _, ok, error in self.results if ok is False), "")
