"""The instance-options kind: ModifyInstanceMetadataOptions on one instance. AWS answers
``pending`` or ``applied``; pending items are followed by the tracker (fleet.engine.tracking)."""

from django.utils import timezone

from ... import aws
from ...choices import ChangeKind, InstanceState, ItemState, MetadataState
from ...models import ChangeItem, Instance
from ...models.inventory import INSTANCE_OPTION_FIELDS
from .base import Target, Tracked


class InstanceOptionsTarget(Target):
    kind = ChangeKind.INSTANCE_OPTIONS
    per_instance = True
    action = "ModifyInstanceMetadataOptions"
    noun = "instance"
    allows_imdsv1_again = "they will allow IMDSv1 again"

    def call(self, item, dry_run):
        return aws.modify_instance_metadata_options(
            item.account, item.region, item.instance.instance_id, item.target_values, dry_run=dry_run,
            token_taken=True,
        )

    def record(self, item, result):
        """The answer on the instance and the item, in one commit (one statement on PostgreSQL); the
        item keeps its own request id and time of answer."""
        values = {name: result[name] for name in INSTANCE_OPTION_FIELDS if result.get(name) is not None}
        state = ItemState.APPLIED if result["metadata_state"] == MetadataState.APPLIED else ItemState.PENDING
        ChangeItem.objects.finish_with_instance(
            state, item, result["request_id"], timezone.now(),
            {"metadata_state": result["metadata_state"] or MetadataState.PENDING, **values})

    def verify(self, item, data, now, timeout):
        """Applied with the values we set: applied; with others: failed (changed elsewhere); the
        instance gone, terminated or shutting down: failed; stopped or stopping: awaiting its start
        (by design, AWS applies it then); running again after that: the timeout starts over;
        running and pending since before ``timeout``: stuck."""
        if data is None:
            return Tracked.FAILED, ("InvalidInstanceID.NotFound", "the instance no longer exists in AWS")
        options = aws.ec2.options_from_aws(data.get("MetadataOptions", {}))
        instance_state = data.get("State", {}).get("Name")
        if options["metadata_state"] == MetadataState.APPLIED:
            wrong = {k: options[k] for k, v in item.target_values.items() if options[k] != v}
            if wrong:
                return Tracked.FAILED, ("Overwritten", f"AWS reports applied but with {wrong}: changed elsewhere")
            return Tracked.APPLIED, None
        if instance_state in (InstanceState.TERMINATED, InstanceState.SHUTTING_DOWN):
            return Tracked.FAILED, ("InstanceTerminated", f"the instance is {instance_state}: the change can never apply")
        if instance_state in (InstanceState.STOPPED, InstanceState.STOPPING):
            return (None if item.awaiting_start else Tracked.AWAITING_START), None
        if item.awaiting_start:
            return Tracked.STARTED, None
        if (item.pending_since or item.submitted_at or now) < timeout:
            return Tracked.STUCK, None
        return None, None

    def rerun(self, batch, user, comment):
        from ...changes import request_change

        return request_change(
            user, Instance.objects.filter(pk__in=batch.items.values("instance")), batch.desired,
            comment=comment, selection=f"as dry run #{batch.pk}: {batch.selection}", override_usage=batch.override_usage,
            override_owner=batch.override_owner,
        )

    # ---- the default rollback (restore previous values) keys items by instance

    def rollback_key(self, item):
        return item.instance_id

    def current_values(self, items):
        return {item.instance_id: item.instance.options for item in items if item.instance}

    def later_changes(self, later, items):
        later = later.filter(instance_id__in=[item.instance_id for item in items])
        rows = later.values_list("pk", "instance_id", "batch_id", "state").order_by("pk").iterator(chunk_size=5000)
        return {instance_pk: (pk, batch, state) for pk, instance_pk, batch, state in rows}

    def gone_reason(self, item):
        instance = item.instance
        if instance is None or instance.gone_at or instance.instance_state in (
                InstanceState.TERMINATED, InstanceState.SHUTTING_DOWN):
            return "instance no longer exists in AWS (or is terminated)"
        return ""
