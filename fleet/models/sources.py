"""Where instances come from: launch templates (with versions), Auto Scaling groups, launch
configurations, and the AMIs they name.

One ``LaunchSource`` table holds the three kinds of source (``kind``), so the Sources page is one
filtered query. What the next launch from a source gets is computed by ``fleet.resolver`` at each
sync and stored on the row (``next_*``, ``verdict``, ``chain``), so the list filters on it.
Absent values are stored one way: blank text or NULL means "not set" (AWS omitted it).
"""

from django.db import models
from django.urls import reverse

from ..choices import LaunchVerdict, ManagedOwner, SourceKind
from .inventory import Account


class MetadataOptionsFields(models.Model):
    """A MetadataOptions structure as a launch template version or launch configuration states it:
    blank / NULL = unset (falls through to the next level of precedence)."""

    http_tokens = models.CharField(max_length=8, blank=True)
    hop_limit = models.PositiveSmallIntegerField(null=True, blank=True)
    http_endpoint = models.CharField(max_length=8, blank=True)
    http_protocol_ipv6 = models.CharField(max_length=8, blank=True)
    instance_metadata_tags = models.CharField(max_length=8, blank=True)

    class Meta:
        abstract = True

    @property
    def stated_options(self):
        return {
            "http_tokens": self.http_tokens or None,
            "hop_limit": self.hop_limit,
            "http_endpoint": self.http_endpoint or None,
        }


class LaunchSource(MetadataOptionsFields):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="launch_sources")
    region = models.CharField(max_length=32)
    kind = models.CharField(max_length=24, choices=SourceKind.choices)
    # lt-… for a launch template, the name for an Auto Scaling group or a launch configuration.
    source_id = models.CharField(max_length=255)
    name = models.CharField(max_length=255)
    tags = models.JSONField(default=dict, blank=True)
    owner = models.CharField(max_length=24, choices=ManagedOwner.choices, blank=True)
    owner_detail = models.CharField(max_length=255, blank=True)

    # Launch template.
    default_version = models.PositiveIntegerField(null=True, blank=True)
    latest_version = models.PositiveIntegerField(null=True, blank=True)
    # Auto Scaling group: the template (id and version as the group states them) or the configuration.
    template = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="groups_on_template"
    )
    template_ref = models.CharField(max_length=32, blank=True)  # the lt-… id the group names
    version_spec = models.CharField(max_length=16, blank=True)  # $Default | $Latest | a number
    mixed_instances_policy = models.BooleanField(default=False)
    # Every MixedInstancesPolicy override, in priority order: {"index", "own_template", "template_id",
    # "template_name", "version", "instance_type"}, and for one with its own template what its
    # launch gets ("next_version", "next_http_tokens", "next_hop_limit", "verdict", "chain").
    override_templates = models.JSONField(default=list, blank=True)
    launch_configuration = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="groups_on_configuration"
    )
    launch_configuration_name = models.CharField(max_length=255, blank=True)
    desired_capacity = models.PositiveIntegerField(null=True, blank=True)
    # Launch configuration (its options are the MetadataOptionsFields) and its AMI.
    image_id = models.CharField(max_length=32, blank=True)

    # What the next launch gets (fleet.resolver), refreshed by every sources sync.
    next_version = models.PositiveIntegerField(null=True, blank=True)
    next_http_tokens = models.CharField(max_length=8, blank=True)
    next_hop_limit = models.PositiveSmallIntegerField(null=True, blank=True)
    verdict = models.CharField(max_length=8, choices=LaunchVerdict.choices, default=LaunchVerdict.UNKNOWN)
    chain = models.JSONField(default=list, blank=True)

    created_at = models.DateTimeField(null=True, blank=True)  # AWS's CreateTime / CreatedTime
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    gone_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["account__name", "region", "kind", "name"]
        constraints = [
            models.UniqueConstraint(fields=["account", "region", "kind", "source_id"], name="uniq_launch_source"),
        ]
        indexes = [
            models.Index(fields=["verdict", "kind"]),
            models.Index(fields=["account", "region", "kind"]),
        ]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("fleet:source_detail", args=[self.pk])

    def instance_condition(self):
        """The instances launched from this source (AWS's attribution tags), as a filter over
        Instance: the source's page and a waiver of this source both use it (its kind's answer)."""
        from ..source_kinds import kind_of

        return models.Q(account_id=self.account_id, region=self.region) & kind_of(self).condition(self)

    @property
    def read_only_reason(self):
        """Why imdsweb will not change this source in place (None when it may): its kind's answer."""
        from ..source_kinds import kind_of

        return kind_of(self).read_only_reason(self)


class LaunchTemplateVersion(MetadataOptionsFields):
    template = models.ForeignKey(LaunchSource, on_delete=models.CASCADE, related_name="versions")
    version_number = models.PositiveIntegerField()
    description = models.CharField(max_length=255, blank=True)
    image_id = models.CharField(max_length=32, blank=True)
    created_by = models.CharField(max_length=2048, blank=True)
    created_at = models.DateTimeField(null=True, blank=True)
    synced_at = models.DateTimeField()

    class Meta:
        ordering = ["template", "-version_number"]
        constraints = [
            models.UniqueConstraint(fields=["template", "version_number"], name="uniq_launch_template_version"),
        ]

    def __str__(self):
        return f"{self.template.source_id} v{self.version_number}"


class Image(models.Model):
    """An AMI a source or a live instance names. ``found`` is False when DescribeImages did not
    return it (deregistered, or no longer shared with this account)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="images")
    region = models.CharField(max_length=32)
    image_id = models.CharField(max_length=32)
    found = models.BooleanField(default=False)
    name = models.CharField(max_length=255, blank=True)
    owner_id = models.CharField(max_length=32, blank=True)
    public = models.BooleanField(null=True)
    state = models.CharField(max_length=16, blank=True)
    imds_support = models.CharField(max_length=8, blank=True)  # "v2.0" or unset
    synced_at = models.DateTimeField()

    class Meta:
        ordering = ["account__name", "region", "image_id"]
        constraints = [models.UniqueConstraint(fields=["account", "region", "image_id"], name="uniq_image")]

    def __str__(self):
        return self.image_id

    def shared_from(self, account_id):
        """Another account's AMI this account may launch (shared or public)."""
        return self.found and self.owner_id and self.owner_id != account_id


class SourceSyncState(models.Model):
    """The last sources sync of an account/region: when, and why it failed (fail closed: a
    source inventory that could not be read is shown as unknown, never as all clear)."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="source_syncs")
    region = models.CharField(max_length=32)
    synced_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["account", "region"], name="uniq_source_sync_state")]

    def __str__(self):
        return f"sources of {self.account.account_id}/{self.region}"
