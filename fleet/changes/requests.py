"""Requesting changes, and what can be done to a batch afterwards (cancel, retry, roll back).

A request writes its ChangeBatch and ChangeItem rows in one transaction and hands the work to
Celery only once that transaction has committed; the rows, not the broker, are the truth.
"""

import logging

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ..choices import ChangeKind, ItemState
from ..models import ChangeBatch, ChangeItem, Instance, MetadataDefaults
from .items import BULK_SIZE, create_items_postgresql, create_items_python
from .validation import ChangeRefused, clean_defaults_desired, clean_instance_desired

log = logging.getLogger(__name__)


def _author(user):
    """The user to record on a batch; commands and tasks act as nobody."""
    return user if user and user.is_authenticated else None


def _dispatch_on_commit(batch):
    def dispatch():
        from ..tasks import dispatch_batch

        try:
            dispatch_batch.delay(batch.pk)
        except Exception as exc:  # broker down: the sweeper re-dispatches queued rows later
            log.warning("could not hand batch %s to the broker (%s); the sweeper will pick it up", batch.pk, exc)

    transaction.on_commit(dispatch)


def request_change(user, instances, desired, *, comment="", selection="", dry_run=False, override_usage=False):
    """Queue a change of instance metadata options for ``instances``. Returns the batch."""
    try:
        desired = clean_instance_desired(desired)
    except ValidationError as exc:
        raise ChangeRefused(" ".join(exc.messages)) from exc
    create_items = create_items_postgresql if connection.vendor == "postgresql" else create_items_python
    try:
        with transaction.atomic():
            batch = ChangeBatch.objects.create(
                created_by=_author(user),
                kind=ChangeKind.INSTANCE_OPTIONS,
                desired=desired,
                selection=selection[:2000],
                comment=comment,
                dry_run=dry_run,
                override_usage=override_usage,
            )
            count = create_items(batch, instances, desired, override_usage, timezone.now())
            if not count:
                raise ChangeRefused("No instances selected.")  # rolls the empty batch back
            _dispatch_on_commit(batch)
    except IntegrityError as exc:
        raise ChangeRefused("Another change for some of these instances was queued at the same moment; try again.") from exc
    log.info("batch %s queued by %s: %s on %d instance(s)", batch.pk, user, desired, count)
    return batch


def request_defaults_change(user, targets, desired, *, comment="", dry_run=False):
    """Queue a change of account-level IMDS defaults for (account, region) pairs."""
    try:
        desired = clean_defaults_desired(desired)
    except ValidationError as exc:
        raise ChangeRefused(" ".join(exc.messages)) from exc
    if not targets:
        raise ChangeRefused("No account/region selected.")
    managed = {
        (d.account_id, d.region): d.managed_exception_message
        for d in MetadataDefaults.objects.filter(managed_by="declarative-policy")
    }
    for account, region in targets:
        if region not in account.regions:
            raise ChangeRefused(f"{region} is not a region of account {account.account_id}.")
        if (account.pk, region) in managed:
            reason = managed[(account.pk, region)] or "the defaults are managed by a declarative policy"
            raise ChangeRefused(f"{account.account_id}/{region} is managed by a declarative policy: {reason}")
    current = {(d.account_id, d.region): d.values for d in MetadataDefaults.objects.filter(
        account__in=[account for account, _ in targets])}
    try:
        with transaction.atomic():
            batch = ChangeBatch.objects.create(
                created_by=_author(user),
                kind=ChangeKind.ACCOUNT_DEFAULTS,
                desired=desired,
                selection=", ".join(f"{account.account_id}/{region}" for account, region in targets)[:2000],
                comment=comment,
                dry_run=dry_run,
            )
            previous_of = {
                key: {name: values[name] for name in desired} for key, values in current.items()
            }
            ChangeItem.objects.bulk_create(
                ChangeItem(
                    batch=batch,
                    account=account,
                    region=region,
                    previous=previous_of.get((account.pk, region), {}),
                )
                for account, region in targets
            )
            _dispatch_on_commit(batch)
    except IntegrityError as exc:
        raise ChangeRefused("A defaults change for one of these account/regions is already in progress.") from exc
    return batch


def cancel_queued(batch, user):
    """Cancel the items no worker has claimed yet. Items already sent go on."""
    who = getattr(user, "username", None) or "system"
    return batch.items.filter(state=ItemState.QUEUED).update(
        state=ItemState.CANCELLED, reason=f"cancelled by {who}", finished_at=timezone.now()
    )


def retry_failed(batch, user):
    """Queue failed and stuck items again (except where the instance has another active item)."""
    busy = ChangeItem.objects.filter(state__in=ItemState.active(), instance__isnull=False).values("instance_id")
    retry = batch.items.filter(state__in=[ItemState.FAILED, ItemState.STUCK]).exclude(instance_id__in=busy)
    with transaction.atomic():
        count = retry.update(
            state=ItemState.QUEUED, error_code="", error_message="", reason="", finished_at=None, claimed_at=None
        )
        if count:
            _dispatch_on_commit(batch)
    return count


def rollback(batch, user, comment=""):
    """A new batch that restores each applied item's previous values."""
    from ..targets import target_for

    target = target_for(batch.kind)  # a kind written as a target object rolls itself back
    if target is not None:
        return target().rollback(batch, user, comment)
    applied = list(batch.items.filter(state=ItemState.APPLIED).select_related("account", "instance"))
    if not applied:
        raise ChangeRefused("Nothing in this batch was applied, so there is nothing to roll back.")
    with transaction.atomic():
        rollback_batch = ChangeBatch.objects.create(
            created_by=_author(user),
            kind=batch.kind,
            desired={},
            selection=f"rollback of batch #{batch.pk}",
            comment=comment or f"Rollback of batch #{batch.pk}",
            rollback_of=batch,
        )
        busy = set(
            ChangeItem.objects.filter(
                state__in=ItemState.active(), instance__in=batch.items.filter(state=ItemState.APPLIED).values("instance")
            ).values_list("instance_id", flat=True)
        )
        items = []
        for item in applied:
            restore = {name: value for name, value in item.previous.items() if value is not None}
            state, reason = ItemState.QUEUED, ""
            if item.instance_id in busy:
                state, reason = ItemState.SKIPPED, "another change is in progress"
            elif not restore:
                state, reason = ItemState.SKIPPED, "no previous values recorded"
            current = item.instance.options if item.instance else {}
            items.append(
                ChangeItem(
                    batch=rollback_batch,
                    account=item.account,
                    region=item.region,
                    instance=item.instance,
                    desired=restore,
                    previous={name: current.get(name) for name in restore} if item.instance else item.target_values,
                    state=state,
                    reason=reason,
                )
            )
        ChangeItem.objects.bulk_create(items, batch_size=BULK_SIZE)
        _dispatch_on_commit(rollback_batch)
    return rollback_batch


def instances_for(account_id=None, region=None):
    """Present instances, narrowed like the command line and the bulk button narrow them."""
    qs = Instance.objects.present()
    if account_id:
        qs = qs.filter(account__account_id=account_id)
    if region:
        qs = qs.filter(region=region)
    return qs
