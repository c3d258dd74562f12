"""The account-defaults kind: ModifyInstanceMetadataDefaults of one account/region, paced by that
action's own bucket (2, refilled at 2 per second). AWS applies it at once; the defaults are read
back."""

from ... import aws, ratelimit
from ...choices import ChangeKind, ManagedBy
from ...models import MetadataDefaults
from ...sync import sync_defaults
from .base import Target

GET_DEFAULTS = "GetInstanceMetadataDefaults"


class AccountDefaultsTarget(Target):
    kind = ChangeKind.ACCOUNT_DEFAULTS
    action = "ModifyInstanceMetadataDefaults"

    def refusal(self, item):
        managed = MetadataDefaults.objects.filter(
            account=item.account, region=item.region, managed_by=ManagedBy.DECLARATIVE_POLICY
        ).first()
        if managed:
            return "DeclarativePolicy", managed.managed_exception_message or "managed by a declarative policy"
        return None

    def call(self, item, dry_run):
        return {"request_id": aws.modify_instance_metadata_defaults(
            item.account, item.region, item.target_values, dry_run=dry_run, token_taken=True)}

    def record(self, item, result):
        # The read-back takes its token only if one is there now (no worker waits for it); without
        # one the next sync reads the new defaults.
        if ratelimit.try_take(item.account.account_id, item.region, GET_DEFAULTS) == 0:
            sync_defaults(item.account, item.region, token_taken=True)
        super().record(item, result)

    def rerun(self, batch, user, comment):
        from ...changes import request_defaults_change

        targets = [(item.account, item.region) for item in batch.items.select_related("account")]
        return request_defaults_change(user, targets, batch.desired, comment=comment)
