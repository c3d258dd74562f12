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
    noun = "account/region"
    allows_imdsv1_again = "new launches may allow IMDSv1"

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

    # ---- the default rollback (restore previous values) keys items by account/region

    def rollback_key(self, item):
        return (item.account_id, item.region)

    def current_values(self, items):
        rows = MetadataDefaults.objects.filter(account_id__in={item.account_id for item in items})
        return {(row.account_id, row.region): row.values for row in rows}

    def later_changes(self, later, items):
        later = later.filter(instance__isnull=True, account_id__in={item.account_id for item in items})
        rows = later.values_list("pk", "account_id", "region", "batch_id", "state").order_by("pk")
        return {(account_pk, region): (pk, batch, state) for pk, account_pk, region, batch, state in rows}
