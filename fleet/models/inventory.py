"""The cached fleet: accounts, instances with their metadata options, account defaults, sync runs."""

from datetime import UTC, datetime

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Case, CharField, DateTimeField, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.urls import reverse

from ..choices import (
    DefaultsEnforced,
    DefaultsHttpTokens,
    DefaultsStatus,
    DefaultsToggle,
    HttpTokens,
    InstanceState,
    ManagedBy,
    MetadataState,
    OrgAccountStatus,
    Risk,
    SyncStatus,
    Toggle,
)
from ..validators import (
    account_id_validator,
    external_id_validator,
    instance_id_validator,
    role_arn_account,
    role_arn_validator,
    validate_regions,
)


class Account(models.Model):
    account_id = models.CharField(max_length=12, unique=True, validators=[account_id_validator])
    name = models.CharField(max_length=100)
    role_arn = models.CharField(
        max_length=2048, blank=True, validators=[role_arn_validator],
        help_text="Role to assume in this account; empty uses the ambient credentials.",
    )
    # Never rendered nor logged: it is a shared secret between us and the account owner.
    external_id = models.CharField(max_length=1224, blank=True, validators=[external_id_validator])
    regions = models.JSONField(default=list, validators=[validate_regions])
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # Set by organization discovery (fleet.discovery); blank for accounts registered by hand.
    source = models.ForeignKey(
        "fleet.OrganizationSource", null=True, blank=True, on_delete=models.SET_NULL, related_name="accounts"
    )
    ou_path = models.CharField(
        max_length=1024, blank=True, db_index=True,
        help_text="OU names from the root, e.g. Workloads/Prod; blank = directly under the root.",
    )
    ou_id = models.CharField(max_length=68, blank=True)
    org_status = models.CharField(max_length=16, choices=OrgAccountStatus.choices, blank=True)
    discovered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "account_id"]

    def __str__(self):
        return f"{self.name} ({self.account_id})"

    def clean(self):
        """The rules between fields, for every way an account is written (admin form, fleet_account)."""
        errors = {}
        arn_account = role_arn_account(self.role_arn)
        if arn_account and self.account_id and arn_account != self.account_id:
            errors["role_arn"] = ValidationError(
                "The role ARN is in account %(arn_account)s, not in account %(account_id)s: imdsweb would "
                "read another account's fleet under this account's name.",
                code="role_in_other_account", params={"arn_account": arn_account, "account_id": self.account_id},
            )
        if self.external_id and not self.role_arn:
            errors["external_id"] = ValidationError(
                "An external id is only sent when assuming a role: give a role ARN, or clear the external id.",
                code="external_id_without_role",
            )
        if errors:
            raise ValidationError(errors)


# The posture rules, written once as database expressions (fleet.posture counts with them, the
# instance list filters with them, Instance.enforced mirrors them for one row).
#
# Terminated and shutting-down instances are not part of the fleet's posture: neither Prowler nor
# AWS Config evaluates them. They stay visible in AWS (and in the list) for about an hour.
NOT_COUNTED_STATES = (InstanceState.TERMINATED, InstanceState.SHUTTING_DOWN)
NOT_COUNTED = Q(instance_state__in=NOT_COUNTED_STATES)
# Prowler's ec2_instance_imdsv2_enabled: PASS iff (endpoint enabled and tokens required) or the
# endpoint disabled. A member AWS left out (NULL) is neither, so it does not pass.
ENFORCED = Q(http_endpoint=Toggle.ENABLED, http_tokens=HttpTokens.REQUIRED) | Q(http_endpoint=Toggle.DISABLED)
ENFORCED_AND_APPLIED = ENFORCED & Q(metadata_state=MetadataState.APPLIED)
# AWS Config's ec2-imdsv2-check (Security Hub EC2.8): NON_COMPLIANT iff HttpTokens = optional.
CONFIG_NON_COMPLIANT = Q(http_tokens=HttpTokens.OPTIONAL)
# IMDSv1 evidence from CloudWatch: calls seen, none seen, or never measured.
V1_USAGE = {"yes": Q(v1_calls__gt=0), "no": Q(v1_calls=0), "unknown": Q(v1_calls__isnull=True)}
# The SSRF risk of an instance that allows IMDSv1 (not ENFORCED): an instance profile's role
# credentials are what IMDSv1 hands out, and a public IP puts the instance in reach of the
# internet. Enforced instances have no risk class (NULL). Tried in order, first match wins; the
# list filter, the posture summary, the CSV and the confirmation page all use these.
HAS_ROLE = Q(iam_instance_profile_arn__isnull=False)
RISKS = {
    Risk.ROLE_PUBLIC: ~ENFORCED & HAS_ROLE & Q(public_ip__isnull=False),
    Risk.ROLE: ~ENFORCED & HAS_ROLE & Q(public_ip__isnull=True),
    Risk.NO_ROLE: ~ENFORCED & ~HAS_ROLE,
}
# Allows IMDSv1 under an active waiver (Instance.waiver, fleet.waivers): counted apart in the
# posture, neither compliant nor non-compliant (Prowler's mutelist "muted").
WAIVED = ~ENFORCED & Q(waiver__isnull=False)
RISK = Case(*(When(q, then=Value(key.value)) for key, q in RISKS.items()), default=None, output_field=CharField())


# A launch time AWS left out sorts first: keyset keys are never NULL (fleet.pagination).
NEVER = Value(datetime(1970, 1, 1, tzinfo=UTC), output_field=DateTimeField())


class InstanceQuerySet(models.QuerySet):
    """Posture filters shared by the list, the overview and the change engine."""

    def present(self):
        return self.filter(gone_at__isnull=True)

    def counted(self):
        """Present instances that are part of the posture (not terminated or shutting down)."""
        return self.present().exclude(NOT_COUNTED)

    def enforced(self):
        return self.filter(ENFORCED)

    def not_enforced(self):
        return self.exclude(ENFORCED)

    def with_risk(self):
        """Each row with ``risk``: its ``Risk`` value, or None when IMDSv2 is enforced."""
        return self.annotate(risk=RISK)


class Instance(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="instances")
    region = models.CharField(max_length=32)
    instance_id = models.CharField(max_length=19, validators=[instance_id_validator])
    name = models.CharField(max_length=256, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    instance_state = models.CharField(max_length=16, choices=InstanceState.choices)
    instance_type = models.CharField(max_length=32, blank=True)
    image_id = models.CharField(max_length=32, blank=True)
    launch_time = models.DateTimeField(null=True, blank=True)
    # Where it came from, from AWS's own tags (aws:ec2launchtemplate:id / :version,
    # aws:autoscaling:groupName); blank when AWS did not tag it.
    # A database default too: bulk COPY paths that predate these columns leave them out.
    launch_template_id = models.CharField(max_length=32, blank=True, default="", db_default="")
    launch_template_version = models.CharField(max_length=16, blank=True, default="", db_default="")
    autoscaling_group = models.CharField(max_length=255, blank=True, default="", db_default="")
    # DescribeInstances' IamInstanceProfile.Arn and PublicIpAddress; NULL when AWS leaves them out
    # (no instance profile, no public IP), and for bulk COPY paths that predate the columns.
    iam_instance_profile_arn = models.CharField(max_length=2048, null=True, blank=True)  # noqa: DJ001
    public_ip = models.GenericIPAddressField(null=True, blank=True)
    # Where it runs and what it is (DescribeInstances' VpcId, SubnetId, PrivateIpAddress and
    # PlatformDetails, e.g. "Linux/UNIX", "Windows"); NULL when AWS leaves them out (EC2-Classic,
    # an instance still launching or terminated), and for bulk COPY paths that predate them.
    vpc_id = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001
    subnet_id = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001
    private_ip = models.GenericIPAddressField(null=True, blank=True)
    platform_details = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001

    # A member DescribeInstances left out of MetadataOptions is NULL: one value for "absent", so
    # the filters, the posture summary and the CSV export all count it the same way.
    http_tokens = models.CharField(max_length=8, choices=HttpTokens.choices, null=True, blank=True)  # noqa: DJ001
    hop_limit = models.PositiveSmallIntegerField(null=True, blank=True)
    http_endpoint = models.CharField(max_length=8, choices=Toggle.choices, null=True, blank=True)  # noqa: DJ001
    http_protocol_ipv6 = models.CharField(  # noqa: DJ001
        max_length=8, choices=Toggle.choices, default=Toggle.DISABLED, null=True, blank=True
    )
    instance_metadata_tags = models.CharField(  # noqa: DJ001
        max_length=8, choices=Toggle.choices, default=Toggle.DISABLED, null=True, blank=True
    )
    metadata_state = models.CharField(max_length=8, choices=MetadataState.choices, null=True, blank=True)  # noqa: DJ001

    # IMDSv1 evidence from CloudWatch over the configured window; null = never measured.
    v1_calls = models.BigIntegerField(null=True, blank=True)
    v1_rejected = models.BigIntegerField(null=True, blank=True)
    v1_last_seen = models.DateTimeField(null=True, blank=True)
    usage_synced_at = models.DateTimeField(null=True, blank=True)
    # Why the last attempt to read this instance's usage failed (AWS's code and message); null
    # once a reading succeeds. A failed reading is never "no calls": the readiness gate holds.
    usage_error = models.TextField(null=True, blank=True)  # noqa: DJ001 (absent is NULL, one value)

    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    gone_at = models.DateTimeField(null=True, blank=True)

    # The active waiver that covers this instance (the one expiring last), maintained by
    # fleet.waivers.apply_waivers alone whenever waivers or instances change; NULL = none.
    waiver = models.ForeignKey(
        "fleet.Waiver", null=True, blank=True, on_delete=models.SET_NULL, related_name="instances", editable=False
    )

    objects = InstanceQuerySet.as_manager()

    class Meta:
        # The unique index's order: the first page of a million-row list is an index scan.
        ordering = ["account_id", "region", "instance_id"]
        constraints = [
            models.UniqueConstraint(fields=["account", "region", "instance_id"], name="uniq_instance"),
        ]
        indexes = [
            models.Index(fields=["account", "region", "last_seen"]),
            models.Index(fields=["http_tokens", "http_endpoint"]),
            models.Index(fields=["metadata_state"]),
            models.Index(fields=["instance_state"]),
            models.Index(fields=["hop_limit"]),
            models.Index(fields=["gone_at"]),
            models.Index(fields=["account", "region", "launch_template_id"], name="instance_launch_template"),
            models.Index(fields=["account", "region", "autoscaling_group"], name="instance_autoscaling_group"),
            # One per sortable column of the instance list, on exactly its keyset keys
            # (fleet.tables.InstanceTable.SORT_KEYS), so any page of any sort is an index seek.
            models.Index(fields=["instance_id", "id"], name="instance_sort_instance_id"),
            models.Index(fields=["name", "id"], name="instance_sort_name"),
            models.Index(Coalesce("hop_limit", 0), F("id"), name="instance_sort_hop_limit"),
            models.Index(Coalesce("v1_calls", -1), F("id"), name="instance_sort_v1_calls"),
            models.Index(fields=["last_seen", "id"], name="instance_sort_last_seen"),
            models.Index(fields=["instance_type", "id"], name="instance_sort_instance_type"),
            models.Index(Coalesce("launch_time", NEVER), F("id"), name="instance_sort_launch_time"),
            # The VPC and subnet filters (a VPC holds a few hundred of a million instances).
            models.Index(fields=["vpc_id"], name="instance_vpc"),
            models.Index(fields=["subnet_id"], name="instance_subnet"),
        ]

    def __str__(self):
        return self.instance_id

    def get_absolute_url(self):
        return reverse("fleet:instance_detail", args=[self.instance_id])

    @property
    def counted(self):
        """Part of the posture: present, and neither terminated nor shutting down."""
        return self.gone_at is None and self.instance_state not in NOT_COUNTED_STATES

    @property
    def enforced(self):
        """Prowler's ec2_instance_imdsv2_enabled for this row (``ENFORCED``)."""
        return (
            self.http_endpoint == Toggle.ENABLED and self.http_tokens == HttpTokens.REQUIRED
        ) or self.http_endpoint == Toggle.DISABLED

    @property
    def config_non_compliant(self):
        """AWS Config's ec2-imdsv2-check for this row (``CONFIG_NON_COMPLIANT``)."""
        return self.http_tokens == HttpTokens.OPTIONAL

    @property
    def options(self):
        """The five metadata options under the names a change uses."""
        return {field: getattr(self, field) for field in INSTANCE_OPTION_FIELDS}


INSTANCE_OPTION_FIELDS = ("http_tokens", "hop_limit", "http_endpoint", "http_protocol_ipv6", "instance_metadata_tags")
DEFAULTS_FIELDS = ("http_tokens", "hop_limit", "http_endpoint", "instance_metadata_tags")


class MetadataDefaults(models.Model):
    """Account-level IMDS defaults for one region. NULL means "no preference": the setting is
    absent from GetInstanceMetadataDefaults' ``AccountLevel``."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="defaults")
    region = models.CharField(max_length=32)
    status = models.CharField(max_length=8, choices=DefaultsStatus.choices, default=DefaultsStatus.UNKNOWN)
    http_tokens = models.CharField(max_length=16, choices=DefaultsHttpTokens.choices, null=True, blank=True)  # noqa: DJ001
    hop_limit = models.PositiveSmallIntegerField(null=True, blank=True)
    http_endpoint = models.CharField(max_length=16, choices=DefaultsToggle.choices, null=True, blank=True)  # noqa: DJ001
    instance_metadata_tags = models.CharField(max_length=16, choices=DefaultsToggle.choices, null=True, blank=True)  # noqa: DJ001
    http_tokens_enforced = models.CharField(max_length=16, choices=DefaultsEnforced.choices, null=True, blank=True)  # noqa: DJ001
    managed_by = models.CharField(max_length=24, choices=ManagedBy.choices, blank=True)
    managed_exception_message = models.TextField(blank=True)
    error = models.TextField(blank=True)
    synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["account__name", "region"]
        verbose_name_plural = "metadata defaults"
        constraints = [models.UniqueConstraint(fields=["account", "region"], name="uniq_defaults")]

    def __str__(self):
        return f"{self.account.account_id}/{self.region} defaults"

    @property
    def policy_managed(self):
        return self.managed_by == ManagedBy.DECLARATIVE_POLICY

    @property
    def values(self):
        """The four settings, with AWS's words for "no preference"."""
        return {
            "http_tokens": self.http_tokens or DefaultsHttpTokens.NO_PREFERENCE,
            "hop_limit": self.hop_limit if self.hop_limit is not None else -1,
            "http_endpoint": self.http_endpoint or DefaultsToggle.NO_PREFERENCE,
            "instance_metadata_tags": self.instance_metadata_tags or DefaultsToggle.NO_PREFERENCE,
        }


class UsageReading(models.Model):
    """The IMDSv1 usage stage's latest attempt for one account/region: when it was last read,
    the error that stopped the last attempt, and when a user asked for a reading now."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="usage_readings")
    region = models.CharField(max_length=32)
    requested_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True, help_text="Last successful reading.")
    attempted_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["account_id", "region"]
        constraints = [models.UniqueConstraint(fields=["account", "region"], name="uniq_usage_reading")]

    def __str__(self):
        return f"usage {self.account_id}/{self.region}"

    @property
    def in_progress(self):
        """A reading was asked for and has not finished (successfully or not) since."""
        return bool(self.requested_at) and (self.attempted_at is None or self.attempted_at < self.requested_at)


class SyncRun(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="sync_runs")
    region = models.CharField(max_length=32)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=SyncStatus.choices, default=SyncStatus.RUNNING)
    seen = models.PositiveIntegerField(default=0)
    new = models.PositiveIntegerField(default=0)
    changed = models.PositiveIntegerField(default=0)
    gone = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            # The guard against two syncs of one account/region at once lives in the database,
            # so it holds across workers, hosts and the management command.
            models.UniqueConstraint(
                fields=["account", "region"],
                condition=Q(status="running"),
                name="one_running_sync_per_region",
            ),
        ]
        indexes = [models.Index(fields=["account", "region", "-started_at"])]

    def __str__(self):
        return f"sync {self.account.account_id}/{self.region} {self.started_at:%Y-%m-%d %H:%M} {self.status}"

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        RegionSync.record(self)

    @property
    def duration(self):
        if self.finished_at:
            return self.finished_at - self.started_at
        return None


class RegionSync(models.Model):
    """The latest sync run and the last success of one account/region, kept by ``SyncRun.save``.

    The overview's staleness verdict needs both for every configured account/region; found from
    the run history it is a GROUP BY and a correlated subquery over every run ever kept (96 a day per
    account/region), so it grew with history and with account/regions. This row makes it one join
    of two small tables (the run's status is copied here: joining the runs made the database hash
    every run kept). A run marked abandoned by the next sync's start is superseded by that sync's
    own run at once.
    """

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="+")
    region = models.CharField(max_length=32)
    last_run = models.ForeignKey(SyncRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    last_status = models.CharField(max_length=10, choices=SyncStatus.choices, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "region"], name="one_region_sync_per_region")]

    def __str__(self):
        return f"latest sync of {self.account_id}/{self.region}"

    @classmethod
    def record(cls, run):
        """Point at ``run`` unless a later-started run is recorded, and take its finish as the last
        success unless a later one is: conditional UPDATEs, so two workers saving runs of one
        account/region at once (an abandoned run and the next) cannot move either backwards."""
        cls.objects.get_or_create(account_id=run.account_id, region=run.region)
        rows = cls.objects.filter(account_id=run.account_id, region=run.region)
        rows.filter(Q(last_run__isnull=True) | Q(last_run__started_at__lte=run.started_at)).update(
            last_run=run, last_status=run.status)
        if run.status == SyncStatus.SUCCEEDED and run.finished_at:
            rows.filter(Q(last_success_at__isnull=True) | Q(last_success_at__lt=run.finished_at)).update(
                last_success_at=run.finished_at)
