"""Account-level IMDSv2 enforcement (``HttpTokensEnforced``) as a change kind, held while launch
sources would stop launching.

With enforcement enabled EC2 refuses every launch whose HttpTokens does not resolve to
``required`` (docs/launch-precedence.md). So a request to enable it holds each account/region
where a present launch source's next launch does not resolve to required — naming those sources
— or where the sources were never read or could not be read (fail closed), unless the user
overrides. Rows first like every change; the runner calls ``EnforcementTarget``, this kind's
target (fleet.engine.targets).
"""

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import aws, sources
from .changes import ChangeRefused
from .changes.requests import _author, _dispatch_on_commit
from .choices import ChangeKind, DefaultsEnforced, ItemState, ManagedBy
from .engine.targets.base import Target
from .models import ChangeBatch, ChangeItem, MetadataDefaults, SourceSyncState

ENABLED = DefaultsEnforced.ENABLED
SHOWN_BLOCKERS = 10


def hold_reasons(targets):
    """{(account pk, region): reason} for the targets enabling enforcement would break."""
    pairs = {(account.pk, region) for account, region in targets}
    blockers = sources.enforcement_blockers(pairs)
    states = {
        (s.account_id, s.region): s
        for s in SourceSyncState.objects.filter(account__in={account for account, _ in targets})
    }
    reasons = {}
    for account, region in targets:
        key = (account.pk, region)
        state = states.get(key)
        if state is None or state.synced_at is None:
            reasons[key] = "the launch sources of this account/region have never been read: sync first"
        elif state.error:
            reasons[key] = f"the launch sources could not be read ({state.error}): fix the permission, then sync"
        elif blockers.get(key):
            found = blockers[key]
            named = ", ".join(f"{s.name} ({s.get_verdict_display()})" for s in found[:SHOWN_BLOCKERS])
            more = f" and {len(found) - SHOWN_BLOCKERS} more" if len(found) > SHOWN_BLOCKERS else ""
            reasons[key] = f"{len(found)} launch source(s) would stop launching: {named}{more}"
    return reasons


def request_enforcement(user, targets, *, enable=True, override_held=False, comment="", dry_run=False):
    """Queue HttpTokensEnforced enabled (or disabled) for (account, region) pairs."""
    if not targets:
        raise ChangeRefused("No account/region selected.")
    rows = {(d.account_id, d.region): d for d in MetadataDefaults.objects.filter(account__in={a for a, _ in targets})}
    for account, region in targets:
        if region not in account.regions:
            raise ChangeRefused(f"{region} is not a region of account {account.account_id}.")
        row = rows.get((account.pk, region))
        if row is not None and row.managed_by == ManagedBy.DECLARATIVE_POLICY:
            raise ChangeRefused(
                f"{account.account_id}/{region} is managed by a declarative policy: "
                f"{row.managed_exception_message or 'the defaults cannot be changed in the account'}"
            )
    value = ENABLED if enable else DefaultsEnforced.DISABLED
    held = hold_reasons(targets) if enable and not override_held else {}
    try:
        with transaction.atomic():
            batch = ChangeBatch.objects.create(
                created_by=_author(user), kind=ChangeKind.ENFORCEMENT, desired={"http_tokens_enforced": value},
                selection=", ".join(f"{a.account_id}/{r}" for a, r in targets)[:2000], comment=comment,
                dry_run=dry_run, override_usage=override_held,
            )
            ChangeItem.objects.bulk_create(
                ChangeItem(
                    batch=batch, account=account, region=region,
                    previous={"http_tokens_enforced": (
                        getattr(rows.get((account.pk, region)), "http_tokens_enforced", "") or DefaultsEnforced.NO_PREFERENCE
                    )},
                    state=ItemState.HELD if (account.pk, region) in held else ItemState.QUEUED,
                    reason=held.get((account.pk, region), ""),
                    finished_at=timezone.now() if (account.pk, region) in held else None,
                )
                for account, region in targets
            )
            _dispatch_on_commit(batch)
    except IntegrityError as exc:
        raise ChangeRefused("A defaults change for one of these account/regions is already in progress.") from exc
    return batch


class EnforcementTarget(Target):
    """ModifyInstanceMetadataDefaults with HttpTokensEnforced, paced by that action's bucket."""

    kind = ChangeKind.ENFORCEMENT
    action = "ModifyInstanceMetadataDefaults"

    def call(self, item, dry_run):
        return {"request_id": aws.modify_instance_metadata_defaults(
            item.account, item.region, item.target_values, dry_run=dry_run, token_taken=True)}

    def record(self, item, result):
        from .sync import sync_defaults

        sync_defaults(item.account, item.region)
        sources.refresh_verdicts(item.account, item.region)
        super().record(item, result)

    def rollback(self, batch, user, comment="", request_token=None):
        """Each applied account/region back to its previous HttpTokensEnforced."""
        return self.undo_applied(
            batch, user, comment,
            lambda item, new: ChangeItem(batch=new, account=item.account, region=item.region, desired=item.previous,
                                         previous=item.target_values),
            "A defaults change for one of these account/regions is in progress.",
        )

    def rerun(self, batch, user, comment):
        targets = [(item.account, item.region) for item in batch.items.select_related("account")]
        return request_enforcement(
            user, targets, enable=batch.desired.get("http_tokens_enforced") == ENABLED,
            override_held=batch.override_usage, comment=comment,
        )
