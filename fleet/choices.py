"""Every enumeration imdsweb stores, as ``TextChoices`` whose values are AWS's own words."""

from django.db import models


class HttpTokens(models.TextChoices):
    OPTIONAL = "optional", "optional (IMDSv1 allowed)"
    REQUIRED = "required", "required (IMDSv2 only)"


class Toggle(models.TextChoices):
    """HttpEndpoint, HttpProtocolIpv6 and InstanceMetadataTags all take these two values."""

    ENABLED = "enabled", "enabled"
    DISABLED = "disabled", "disabled"


class MetadataState(models.TextChoices):
    PENDING = "pending", "pending"
    APPLIED = "applied", "applied"


class Risk(models.TextChoices):
    """How much an instance that allows IMDSv1 hands an SSRF, highest first (fleet.models.inventory.RISKS)."""

    ROLE_PUBLIC = "role_public", "IAM role + public IP"
    ROLE = "role", "IAM role"
    NO_ROLE = "no_role", "no role"


class InstanceState(models.TextChoices):
    PENDING = "pending", "pending"
    RUNNING = "running", "running"
    SHUTTING_DOWN = "shutting-down", "shutting-down"
    TERMINATED = "terminated", "terminated"
    STOPPING = "stopping", "stopping"
    STOPPED = "stopped", "stopped"


class DefaultsHttpTokens(models.TextChoices):
    """Account-level HttpTokens; ``no-preference`` is what an absent setting means."""

    NO_PREFERENCE = "no-preference", "no preference"
    OPTIONAL = "optional", "optional"
    REQUIRED = "required", "required"


class DefaultsToggle(models.TextChoices):
    NO_PREFERENCE = "no-preference", "no preference"
    ENABLED = "enabled", "enabled"
    DISABLED = "disabled", "disabled"


class ManagedBy(models.TextChoices):
    ACCOUNT = "account", "account"
    DECLARATIVE_POLICY = "declarative-policy", "declarative policy"


class DefaultsStatus(models.TextChoices):
    KNOWN = "known", "known"
    UNKNOWN = "unknown", "unknown (endpoint did not answer)"


class SyncStatus(models.TextChoices):
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"


class ChangeKind(models.TextChoices):
    INSTANCE_OPTIONS = "instance_options", "instance metadata options"
    ACCOUNT_DEFAULTS = "account_defaults", "account defaults"
    LAUNCH_TEMPLATE = "launch_template", "require IMDSv2 at the source (launch template)"
    ENFORCEMENT = "enforcement", "IMDSv2 enforcement (account level)"


class ItemState(models.TextChoices):
    QUEUED = "queued", "queued"
    SUBMITTING = "submitting", "submitting"
    PENDING = "pending", "pending"
    APPLIED = "applied", "applied"
    FAILED = "failed", "failed"
    SKIPPED = "skipped", "skipped"
    HELD = "held", "held (IMDSv1 in use)"
    CANCELLED = "cancelled", "cancelled"
    STUCK = "stuck", "stuck"

    @classmethod
    def active(cls):
        """States in which an item still has work ahead of it."""
        return [cls.QUEUED, cls.SUBMITTING, cls.PENDING]

    @classmethod
    def final(cls):
        return [cls.APPLIED, cls.FAILED, cls.SKIPPED, cls.HELD, cls.CANCELLED, cls.STUCK]


class BatchStatus(models.TextChoices):
    """Derived from a batch's items, never stored on its own."""

    # A large selection is still being expanded into items by a worker (items run as they land).
    EXPANDING = "expanding", "expanding"
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    PENDING = "pending", "waiting for AWS"
    # Only items on stopped instances are left: AWS applies them when each instance next starts.
    AWAITING_START = "awaiting_start", "done for now"
    DONE = "done", "done"
    DONE_WITH_ERRORS = "done_with_errors", "done with errors"
    CANCELLED = "cancelled", "cancelled"

    @classmethod
    def settled(cls):
        """Statuses in which nothing moves until something outside imdsweb happens (an instance
        starts, an operator retries)."""
        return [cls.AWAITING_START, cls.DONE, cls.DONE_WITH_ERRORS, cls.CANCELLED]


class DriftKind(models.TextChoices):
    """What a sync saw change on its own, outside imdsweb."""

    NEW_V1 = "new_v1", "new instance allowing IMDSv1"
    REGRESSED = "regressed", "back to IMDSv1 allowed"


class EventKind(models.TextChoices):
    """What a notification rule can be about."""

    NEW_V1 = "new_v1", "new instance allowing IMDSv1"
    REGRESSED = "regressed", "instance back to IMDSv1 allowed (changed outside imdsweb)"
    BREAKAGE = "breakage", "likely breakage after enforcement (MetadataNoTokenRejected)"
    BATCH_FINISHED = "batch_finished", "change batch finished"
    BATCH_FAILED = "batch_failed", "change batch finished with errors"
    ACCOUNT_UNREADABLE = "account_unreadable", "account can no longer be read"
    SYNC_FAILING = "sync_failing", "sync failing"
    WAIVER_EXPIRED = "waiver_expired", "waiver expired (its instances count as non-compliant again)"


class DeliveryStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    SENT = "sent", "sent"
    FAILED = "failed", "failed"


class OrgAccountStatus(models.TextChoices):
    """An account's status in AWS Organizations (``ListAccounts``), plus ``DEPARTED`` for one that
    is no longer listed (removed from or left the organization)."""

    ACTIVE = "ACTIVE", "active"
    SUSPENDED = "SUSPENDED", "suspended"
    PENDING_CLOSURE = "PENDING_CLOSURE", "pending closure"
    DEPARTED = "DEPARTED", "left the organization"


class DiscoveryChange(models.TextChoices):
    ADDED = "added", "added"
    DISABLED = "disabled", "disabled"
    REENABLED = "re-enabled", "enabled again"
    MOVED = "moved", "moved to another OU"
    REGIONS = "regions", "regions changed"
    RENAMED = "renamed", "renamed"
    ERROR = "error", "could not be read"


class HealthCheck(models.TextChoices):
    """What imdsweb needs in each account, in the order the health page shows it."""

    ASSUME_ROLE = "sts:AssumeRole", "assume the role"
    DESCRIBE_INSTANCES = "ec2:DescribeInstances", "read instances"
    GET_DEFAULTS = "ec2:GetInstanceMetadataDefaults", "read account defaults"
    GET_METRIC_DATA = "cloudwatch:GetMetricData", "read IMDSv1 usage"
    DESCRIBE_LAUNCH_TEMPLATES = "ec2:DescribeLaunchTemplates", "read launch templates"
    DESCRIBE_AUTO_SCALING_GROUPS = "autoscaling:DescribeAutoScalingGroups", "read Auto Scaling groups"
    MODIFY_OPTIONS = "ec2:ModifyInstanceMetadataOptions", "change instances (DryRun)"
    MODIFY_DEFAULTS = "ec2:ModifyInstanceMetadataDefaults", "change account defaults (DryRun)"

class DefaultsEnforced(models.TextChoices):
    """Account-level HttpTokensEnforced; ``no-preference`` is what an absent setting means."""

    NO_PREFERENCE = "no-preference", "no preference"
    ENABLED = "enabled", "enabled (launches must require IMDSv2)"
    DISABLED = "disabled", "disabled"


class SourceKind(models.TextChoices):
    LAUNCH_TEMPLATE = "launch_template", "launch template"
    AUTO_SCALING_GROUP = "auto_scaling_group", "Auto Scaling group"
    LAUNCH_CONFIGURATION = "launch_configuration", "launch configuration"


class ManagedOwner(models.TextChoices):
    """A managed service that owns a source or an instance (from AWS's own tags)."""

    EKS = "eks", "Amazon EKS"
    ELASTIC_BEANSTALK = "elasticbeanstalk", "Elastic Beanstalk"
    EMR = "emr", "Amazon EMR"
    CLOUDFORMATION = "cloudformation", "CloudFormation"


class LaunchVerdict(models.TextChoices):
    """What the next launch from a source gets (fleet.resolver)."""

    IMDSV2 = "imdsv2", "IMDSv2 only"
    IMDSV1 = "imdsv1", "IMDSv1 allowed"
    REFUSED = "refused", "launch refused (enforcement)"
    UNKNOWN = "unknown", "unknown"


class WaiverScope(models.TextChoices):
    """What a waiver exempts (fleet.models.waivers)."""

    INSTANCE = "instance", "one instance"
    TAG = "tag", "a tag selector (key=value)"
    SOURCE = "source", "a launch source"
    ACCOUNT = "account", "an account (one region or all)"


class WaiverAction(models.TextChoices):
    """What happened to a waiver, in its audit trail."""

    CREATED = "created", "created"
    EXTENDED = "extended", "extended"
    REVOKED = "revoked", "revoked"
    EXPIRED = "expired", "expired"


class RolloutState(models.TextChoices):
    """Where a batch in waves stands (blank: a batch of one wave, which just runs)."""

    RUNNING = "running", "wave running"
    SOAKING = "soaking", "soaking"
    PAUSED = "paused", "paused"
    ABORTED = "aborted", "aborted"
    COMPLETE = "complete", "all waves released"


class WaveMode(models.TextChoices):
    """How the confirmation page splits a batch into waves."""

    NONE = "none", "all at once"
    COUNT = "count", "canary: N instances per account/region"
    PERCENT = "percent", "canary: a percentage per account/region"
    TAG = "tag", "canary: instances with a tag"
    ACCOUNTS = "accounts", "accounts or OUs, one wave per line"


class ApprovalState(models.TextChoices):
    """Four-eyes approval of a batch (blank: none needed)."""

    AWAITING = "awaiting", "awaiting approval"
    APPROVED = "approved", "approved"
    REFUSED = "refused", "refused"
    EXPIRED = "expired", "approval request expired"


class BatchEventKind(models.TextChoices):
    APPROVAL_REQUESTED = "approval_requested", "approval requested"
    APPROVED = "approved", "approved"
    REFUSED = "refused", "refused"
    APPROVAL_EXPIRED = "approval_expired", "approval request expired"
    WAVE_RELEASED = "wave_released", "wave released"
    SOAK_STARTED = "soak_started", "soak started"
    PAUSED = "paused", "paused"
    PROMOTED = "promoted", "promoted by an operator"
    ABORTED = "aborted", "aborted"
    COMPLETED = "completed", "all waves released"


# The metadata options under the names AWS writes them (ModifyInstanceMetadataOptions and
# ModifyInstanceMetadataDefaults), for every page that shows a change: one vocabulary.
AWS_OPTION_NAMES = {
    "http_tokens": "HttpTokens",
    "hop_limit": "HttpPutResponseHopLimit",
    "http_endpoint": "HttpEndpoint",
    "http_protocol_ipv6": "HttpProtocolIpv6",
    "instance_metadata_tags": "InstanceMetadataTags",
    "http_tokens_enforced": "HttpTokensEnforced",
}


def aws_options(values):
    """``{"http_tokens": "required"}`` as ``HttpTokens=required`` (several joined by ", ")."""
    return ", ".join(f"{AWS_OPTION_NAMES.get(name, name)}={value}" for name, value in (values or {}).items())
