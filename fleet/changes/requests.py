"""Requesting changes, and what can be done to a batch afterwards (cancel, retry, roll back).

A request writes its ChangeBatch and ChangeItem rows in one transaction and hands the work to
Celery only once that transaction has committed; the rows, not the broker, are the truth.
"""

import logging

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from ..choices import BatchStatus, ChangeKind, ItemState, ManagedBy
from ..engine.targets import target_for
from ..models import ChangeBatch, ChangeItem, Instance, MetadataDefaults
from . import expansion
from .items import BULK_SIZE, create_items
from .validation import AlreadySubmitted, ChangeRefused, clean_defaults_desired, clean_instance_desired

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


def _holder_of(instance_pks):
    """The batch with an active item for one of these instances, or None."""
    item = (
        ChangeItem.objects.filter(state__in=ItemState.active(), instance__in=instance_pks)
        .order_by("batch_id").only("batch_id").first()
    )
    return ChangeBatch.objects.filter(pk=item.batch_id).first() if item else None


def _in_progress(instance_pks, default="Another change for some of these instances was queued at the same moment."):
    """The refusal for a request that lost a race on ``one_active_item_per_instance``."""
    holder = _holder_of(instance_pks)
    if holder is None:
        return ChangeRefused(f"{default} Try again.")
    return ChangeRefused(f"These instances are already in progress in batch #{holder.pk}.", batch=holder)


def _refuse_replay(request_token, what="confirmation"):
    """Raise AlreadySubmitted when a form with this one-time token already created a batch (before
    the request, and again when its INSERT lost the race on the token's unique index)."""
    replayed = ChangeBatch.objects.filter(request_token=request_token).first() if request_token else None
    if replayed is not None:
        raise AlreadySubmitted(f"This {what} was already submitted: batch #{replayed.pk}.", batch=replayed)


def _nothing_to_queue(batch):
    """Why a request would queue nothing: the batch's items counted by outcome, in words."""
    from .decision import Outcome

    order = {code: index for index, code in enumerate(Outcome.values)}
    rows = sorted(batch.items.values("outcome").annotate(n=Count("id")).order_by(),
                  key=lambda row: order.get(row["outcome"], len(order)))
    parts = [f"{row['n']:,} {Outcome(row['outcome']).label}" for row in rows if row["outcome"]]
    message = "Nothing to queue: " + ", ".join(parts) + "."
    if any(row["outcome"] in Outcome.held() for row in rows):
        message += " Held instances are queued only with the override ticked."
    if any(row["outcome"] == Outcome.WAIVED for row in rows):
        message += " Waived instances are queued only with the waiver override ticked."
    busy = batch.items.filter(outcome=Outcome.BUSY).values("instance_id")[:1000]
    holder = _holder_of(busy) if busy.exists() else None
    if holder is not None:
        message += f" The busy ones are already in progress in batch #{holder.pk}."
    return ChangeRefused(message, batch=holder)


def request_change(user, instances, desired, *, comment="", selection="", dry_run=False, override_usage=False,
                   override_owner=False, request_token=None, override_waivers=False, rollout=None):
    """Queue a change of instance metadata options for ``instances``. Returns the batch.

    ``rollout`` (fleet.changes.rollout.RolloutOptions): waves, soak, schedule and window; the
    four-eyes rule of the settings applies either way.

    Refused (ChangeRefused) when nothing would be queued — no batch is created then — and when a
    confirmation form is replayed (``request_token`` already used: the refusal carries the batch).
    """
    try:
        desired = clean_instance_desired(desired)
    except ValidationError as exc:
        raise ChangeRefused(" ".join(exc.messages)) from exc
    _refuse_replay(request_token)
    selected = instances.count()
    if not selected:
        raise ChangeRefused("No instances selected.")
    from . import rollout as rollouts

    rollout = rollout or rollouts.RolloutOptions()
    # A staged, scheduled or approval-gated change expands inline: its waves and its approval rule
    # are decided on its items, which must exist before any of them may be claimed.
    gated = rollout.gated or rollouts.approval_configured()
    query = expansion.selection_query(instances) if selected > expansion.INLINE_MAX and not gated else None
    if query is not None:
        return _request_expansion(user, desired, query, selected, comment=comment, selection=selection,
                                  dry_run=dry_run, override_usage=override_usage, override_owner=override_owner,
                                  override_waivers=override_waivers, request_token=request_token)
    try:
        with transaction.atomic():
            batch = ChangeBatch.objects.create(
                created_by=_author(user),
                expected=selected,
                expanded=selected,
                kind=ChangeKind.INSTANCE_OPTIONS,
                desired=desired,
                selection=selection[:2000],
                comment=comment,
                dry_run=dry_run,
                override_usage=override_usage,
                override_owner=override_owner,
                override_waivers=override_waivers,
                request_token=request_token or None,
            )
            count = create_items(batch, instances, desired, override_usage, timezone.now(), override_owner,
                                 override_waivers=override_waivers).count
            if not count:
                raise ChangeRefused("No instances selected.")  # rolls the empty batch back
            if not batch.items.filter(state=ItemState.QUEUED).exists():
                raise _nothing_to_queue(batch)  # rolls the batch back too
            rollouts.prepare(batch, rollout, _author(user), timezone.now())
            _dispatch_on_commit(batch)
    except IntegrityError as exc:
        _refuse_replay(request_token)
        raise _in_progress(instances.order_by().values("pk")) from exc
    log.info("batch %s queued by %s: %s on %d instance(s)", batch.pk, user, desired, count)
    return batch


def _request_expansion(user, desired, query, selected, *, comment, selection, dry_run, override_usage,
                       override_owner, override_waivers, request_token):
    """The batch of a large selection, written in constant queries; a worker expands its items
    (:mod:`fleet.changes.expansion`)."""
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
                override_owner=override_owner,
                override_waivers=override_waivers,
                request_token=request_token or None,
                expanding=True,
                selection_query=query,
                expected=selected,
            )
            transaction.on_commit(lambda: _expand_later(batch.pk))
    except IntegrityError as exc:  # only the one-time token's unique index can refuse this insert
        _refuse_replay(request_token)
        raise ChangeRefused("This confirmation was submitted twice at the same moment; try again.") from exc
    log.info("batch %s requested by %s: %s on %d instance(s), expanding in a worker", batch.pk, user, desired,
             selected)
    return batch


def _expand_later(batch_pk):
    from ..tasks import expand_batch

    try:
        expand_batch.delay(batch_pk)
    except Exception as exc:  # broker down: the sweeper resumes batches left expanding
        log.warning("could not hand batch %s's expansion to the broker (%s); the sweeper will", batch_pk, exc)


def request_defaults_change(user, targets, desired, *, comment="", dry_run=False, request_token=None):
    """Queue a change of account-level IMDS defaults for (account, region) pairs."""
    try:
        desired = clean_defaults_desired(desired)
    except ValidationError as exc:
        raise ChangeRefused(" ".join(exc.messages)) from exc
    _refuse_replay(request_token)
    if not targets:
        raise ChangeRefused("No account/region selected.")
    managed = {
        (d.account_id, d.region): d.managed_exception_message
        for d in MetadataDefaults.objects.filter(managed_by=ManagedBy.DECLARATIVE_POLICY)
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
                request_token=request_token or None,
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
        _refuse_replay(request_token)
        holder = _defaults_holder(targets)
        if holder is None:
            raise ChangeRefused("A defaults change for one of these account/regions was queued at the same "
                                "moment; try again.") from exc
        raise ChangeRefused(f"A defaults change for one of these account/regions is already in progress in "
                            f"batch #{holder.pk}.", batch=holder) from exc
    return batch


def _defaults_holder(targets):
    active = Q(pk__in=[])
    for account, region in targets:
        active |= Q(account=account, region=region)
    item = ChangeItem.objects.filter(active, state__in=ItemState.active(), instance__isnull=True).first()
    return item.batch if item else None


def cancel_queued(batch, user):
    """Cancel the items no worker has claimed yet. Items already sent go on."""
    who = getattr(user, "username", None) or "system"
    # Stop a running expansion first: it takes the batch row's lock chunk by chunk, so the next
    # chunk sees this and writes nothing; the items already written are cancelled below.
    ChangeBatch.objects.filter(pk=batch.pk, expanding=True).update(expanding=False)
    return batch.items.filter(state=ItemState.QUEUED).update(
        state=ItemState.CANCELLED, reason=f"cancelled by {who}", finished_at=timezone.now()
    )


def retry_failed(batch, user):
    """Queue failed and stuck items again (except where the instance has another active item)."""
    busy = ChangeItem.objects.filter(state__in=ItemState.active(), instance__isnull=False).values("instance_id")
    retry = batch.items.filter(state__in=[ItemState.FAILED, ItemState.STUCK]).exclude(instance_id__in=busy)
    try:
        with transaction.atomic():
            count = retry.update(
                state=ItemState.QUEUED, error_code="", error_message="", reason="", finished_at=None,
                claimed_at=None, updated_at=timezone.now(),  # the batch page's "Updated" for a queued item
            )
            if count:
                _dispatch_on_commit(batch)
    except IntegrityError as exc:  # someone queued these instances at the same moment
        raise _in_progress(batch.items.filter(state__in=[ItemState.FAILED, ItemState.STUCK]).values("instance_id"),
                           default="Another change for some of these items was queued at the same moment.") from exc
    return count


# A dry run can be run for real once it has finished.
RERUNNABLE = {BatchStatus.DONE, BatchStatus.DONE_WITH_ERRORS, BatchStatus.CANCELLED}


def rerun(batch, user):
    """The same change on the same targets, for real: the next step after a clean dry run."""
    if not batch.dry_run:
        raise ChangeRefused("Only a dry run can be run again for real.")
    if batch.status not in RERUNNABLE:
        raise ChangeRefused("The dry run has not finished yet; run it for real once it has.")
    comment = batch.comment or f"Run for real after dry run #{batch.pk}"
    return target_for(batch.kind).rerun(batch, user, comment)


def rollback(batch, user, comment="", request_token=None, wave=None):
    """A new batch that undoes ``batch``: what its kind's target does (``Target.rollback``); with
    ``wave``, only what that wave of a staged rollout changed (its rollout stops)."""
    if wave is not None:
        return restore_previous(batch, user, comment, request_token=request_token, wave=wave)
    return target_for(batch.kind).rollback(batch, user, comment, request_token=request_token)


def restore_previous(batch, user, comment="", request_token=None, wave=None):
    """A new batch that restores what ``batch`` changed, where nothing has changed it since
    (only what its wave ``wave`` changed, when given: a staged rollout's wave; its rollout stops).

    See :func:`fleet.changes.rollbacks.plan_rollback` for what is restored and what is skipped.
    The batch row is locked for the decision, so two rollbacks of one batch cannot both go ahead.
    """
    from .rollbacks import plan_rollback

    _refuse_replay(request_token, "rollback")
    try:
        with transaction.atomic():
            locked = ChangeBatch.objects.select_for_update().get(pk=batch.pk)
            if locked.expanding:
                raise ChangeRefused(f"Batch #{batch.pk} is still being expanded into items "
                                    f"({locked.expanded:,} of {locked.expected or 0:,}); cancel it or wait, then roll back.")
            plan = plan_rollback(locked, wave=wave)
            plan.raise_if_refused()
            rollback_batch = ChangeBatch.objects.create(
                created_by=_author(user),
                kind=batch.kind,
                desired={},
                selection=f"rollback of batch #{batch.pk}" + (f", wave {wave + 1}" if wave is not None else ""),
                comment=comment or f"Rollback of batch #{batch.pk}" + (f", wave {wave + 1}" if wave is not None else ""),
                rollback_of=batch,
                request_token=request_token or None,
            )
            now = timezone.now()
            batch.items.filter(state=ItemState.QUEUED).update(
                state=ItemState.CANCELLED, reason=f"cancelled by rollback batch #{rollback_batch.pk}", finished_at=now
            )
            batch.items.filter(pk__in=[entry.item.pk for entry in plan.restore if entry.item.state == ItemState.PENDING]
                               ).update(state=ItemState.CANCELLED, finished_at=now,
                                        reason=f"rolled back by batch #{rollback_batch.pk} before AWS applied it")
            ChangeItem.objects.bulk_create(
                (
                    ChangeItem(
                        batch=rollback_batch, account=entry.item.account, region=entry.item.region,
                        instance=entry.item.instance, desired=entry.restore, previous=entry.current,
                        state=entry.state, reason=entry.reason, finished_at=None if entry.queued else now,
                    )
                    for entry in plan.entries
                ),
                batch_size=BULK_SIZE,
            )
            from .rollout import stopped_by_rollback

            stopped_by_rollback(locked, _author(user), rollback_batch)
            _dispatch_on_commit(rollback_batch)
    except IntegrityError as exc:
        _refuse_replay(request_token, "rollback")
        raise _in_progress(batch.items.values("instance_id")) from exc
    return rollback_batch


def instances_for(account_id=None, region=None):
    """Present instances, narrowed like the command line and the bulk button narrow them."""
    qs = Instance.objects.present()
    if account_id:
        qs = qs.filter(account__account_id=account_id)
    if region:
        qs = qs.filter(region=region)
    return qs
