"""What the API returns: the model fields under their own names, AWS's values."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..choices import BatchStatus, ItemState, Risk
from ..models import ChangeBatch, ChangeItem, DriftEvent, Instance, MetadataDefaults, RegionPosture, Waiver


class InstanceSerializer(serializers.ModelSerializer):
    account_id = serializers.CharField(source="account.account_id")
    account_name = serializers.CharField(source="account.name")
    enforced = serializers.BooleanField(help_text="Tokens required or the endpoint disabled (Prowler's rule).")
    risk = serializers.ChoiceField(
        choices=Risk.choices, allow_null=True, read_only=True,
        help_text="IMDSv1 risk: IAM role + public IP, IAM role or no role; null when IMDSv2 is enforced.",
    )

    class Meta:
        model = Instance
        fields = [
            "instance_id", "name", "account_id", "account_name", "region", "instance_state", "instance_type",
            "image_id", "launch_time", "tags", "http_tokens", "hop_limit", "http_endpoint", "http_protocol_ipv6",
            "instance_metadata_tags", "metadata_state", "enforced", "iam_instance_profile_arn", "public_ip", "risk", "v1_calls", "v1_rejected", "v1_last_seen",
            "usage_synced_at", "first_seen", "last_seen", "gone_at",
        ]


class RegionPostureSerializer(serializers.ModelSerializer):
    account_id = serializers.CharField(source="account.account_id")
    account_name = serializers.CharField(source="account.name")

    class Meta:
        model = RegionPosture
        exclude = ["id", "account"]


class PostureTotalsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    enforced = serializers.IntegerField()
    enforced_applied = serializers.IntegerField()
    not_enforced = serializers.IntegerField(help_text="Neither enforced nor waived.")
    waived = serializers.IntegerField(help_text="Allow IMDSv1 under an active waiver: counted apart.")
    pending = serializers.IntegerField()
    v1_in_use = serializers.IntegerField()
    safe_to_enforce = serializers.IntegerField()
    not_enforced_in_use = serializers.IntegerField()
    not_enforced_unmeasured = serializers.IntegerField()
    risk_role_public = serializers.IntegerField(help_text="Allow IMDSv1 with an IAM role and a public IP.")
    enforced_pct = serializers.FloatField(allow_null=True)
    enforced_applied_pct = serializers.FloatField(allow_null=True)


class PostureSerializer(serializers.Serializer):
    totals = PostureTotalsSerializer()
    regions = RegionPostureSerializer(many=True)


class HistoryPointSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    total = serializers.IntegerField()
    enforced = serializers.IntegerField()
    allowing_v1 = serializers.IntegerField()
    enforced_pct = serializers.FloatField(allow_null=True)


class HistoryMarkerSerializer(serializers.Serializer):
    batch = serializers.IntegerField(source="pk")
    created_at = serializers.DateTimeField()


class HistorySerializer(serializers.Serializer):
    days = serializers.IntegerField()
    account_id = serializers.CharField(allow_null=True)
    region = serializers.CharField(allow_null=True)
    points = HistoryPointSerializer(many=True)
    batches = HistoryMarkerSerializer(many=True)


class MetadataDefaultsSerializer(serializers.ModelSerializer):
    account_id = serializers.CharField(source="account.account_id")

    class Meta:
        model = MetadataDefaults
        fields = ["account_id", "region", "status", "http_tokens", "hop_limit", "http_endpoint",
                  "instance_metadata_tags", "managed_by", "managed_exception_message", "error", "synced_at"]


class DriftEventSerializer(serializers.ModelSerializer):
    instance_id = serializers.CharField(source="instance.instance_id")
    account_id = serializers.CharField(source="account.account_id")

    class Meta:
        model = DriftEvent
        fields = ["id", "kind", "instance_id", "account_id", "region", "detected_at", "sync_run"]


# Items per state, and their total.
CountsSerializer = type(
    "CountsSerializer", (serializers.Serializer,),
    {name: serializers.IntegerField() for name in [*ItemState.values, "total"]},
)


class ChangeBatchSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", allow_null=True, default=None)
    approved_by = serializers.CharField(source="approved_by.username", allow_null=True, default=None)
    status = serializers.SerializerMethodField()
    counts = serializers.SerializerMethodField()

    class Meta:
        model = ChangeBatch
        fields = ["id", "created_at", "created_by", "kind", "desired", "selection", "comment", "dry_run",
                  "override_usage", "override_owner", "override_waivers", "rollback_of", "breakage_flagged_at", "status", "counts",
                  "waves", "released_wave", "wave_labels", "soak_seconds", "rollout_state", "soak_until",
                  "rollout_note", "start_at", "window", "run_from", "run_until", "approval", "approval_reason",
                  "approval_expires_at", "approved_by", "approved_at", "expanding",
                  "expected", "expanded"]
        extra_kwargs = {
            "expanding": {"help_text": "A worker is still writing this batch's items (a large selection)."},
            "expected": {"help_text": "Instances the selection held when the change was requested."},
            "expanded": {"help_text": "Instances written as items so far."},
        }

    def get_status(self, batch) -> str:
        if batch.expanding:
            return BatchStatus.EXPANDING.value
        return batch.status_from_counts(batch.counts()).value

    @extend_schema_field(CountsSerializer)
    def get_counts(self, batch):
        return batch.counts()


class ChangeItemSerializer(serializers.ModelSerializer):
    instance_id = serializers.CharField(source="instance.instance_id", allow_null=True, default=None)
    account_id = serializers.CharField(source="account.account_id")

    class Meta:
        model = ChangeItem
        fields = ["id", "batch", "instance_id", "account_id", "region", "desired", "previous", "state", "reason",
                  "attempts", "request_id", "error_code", "error_message", "created_at", "claimed_at",
                  "submitted_at", "finished_at", "breakage_suspected", "wave"]


class WaiverSerializer(serializers.ModelSerializer):
    scope_text = serializers.CharField(read_only=True)
    instance_id = serializers.CharField(source="instance.instance_id", allow_null=True, default=None)
    account_id = serializers.CharField(source="account.account_id", allow_null=True, default=None)
    source = serializers.PrimaryKeyRelatedField(read_only=True)
    created_by = serializers.StringRelatedField()
    status = serializers.ChoiceField(choices=["active", "expired", "revoked"], read_only=True)
    instances = serializers.IntegerField(source="n_instances", read_only=True,
                                         help_text="Present instances it covers now.")

    class Meta:
        model = Waiver
        fields = ["id", "scope", "scope_text", "instance_id", "tag_key", "tag_value", "source", "account_id", "region",
                  "owner", "reason", "expires_on", "status", "instances", "created_by", "created_at", "updated_at",
                  "revoked_at", "expired_at"]
