"""The interface every kind of change implements (see fleet.engine.targets)."""

import enum

from django.db import IntegrityError, transaction
from django.utils import timezone

from ...choices import ItemState


class Tracked(enum.Enum):
    """What a tracking round saw of a pending item (``Target.verify``)."""

    APPLIED = "applied"
    FAILED = "failed"  # with (error code, message)
    STUCK = "stuck"  # pending past the timeout on a running instance
    AWAITING_START = "awaiting_start"  # its instance is stopped: AWS applies it at the next start
    STARTED = "started"  # its instance runs again: the pending timeout starts over


class Target:
    """One kind of change.

    - ``kind``: its ``ChangeKind``;
    - ``per_instance``: whether its items are instances (usage gate, breakage watch, awaiting start);
    - ``action``: the AWS action whose token bucket paces its items (the runner takes that token
      before ``call``, without waiting for it); ``action_for(item)`` when one kind's items call
      different actions (a rollback of a launch template calls ModifyLaunchTemplate only);
    - ``refusal(item)``: ``(code, message)`` to fail the item without calling AWS, or None;
    - ``call(item, dry_run)``: the AWS call(s) of one item, its token taken; raises the project's
      AWS errors (``DryRunSucceeded`` for an accepted DryRun) or returns the answer;
    - ``record(item, result)``: writes what AWS now has and finishes the item;
    - ``verify(item, data, now, timeout)``: for a kind AWS answers ``pending``, what the tracker's
      DescribeInstances ``data`` of the item's instance (None: not found) says: ``(Tracked, error)``
      or ``(None, None)`` while nothing changed;
    - ``rollback(batch, user, comment, request_token)`` and ``rerun(batch, user, comment)``: the
      batches that undo a batch of this kind, and run a dry run of it for real.

    The default rollback (restore the previous values, fleet.changes.rollbacks) asks the kind for
    ``noun``, ``allows_imdsv1_again`` (what going back to optional means, in words),
    ``rollback_key(item)`` (what one item changes), ``current_values(items)`` ({key: the values
    there now}), ``later_changes(later, items)`` ({key: (pk, batch pk, state)} of the latest of
    ``later`` per key) and ``gone_reason(item)`` (why there is nothing left to restore, or "").
    """

    kind = None
    action = None
    noun = "item"
    # Whether its items are instances: the IMDSv1 readiness gate, the breakage watch and waiting
    # for a stopped instance to start apply to it (the batch page shows them only then).
    per_instance = False
    allows_imdsv1_again = "IMDSv1 is allowed again"

    def action_for(self, item):
        return self.action

    def refusal(self, item):
        return None

    def call(self, item, dry_run):
        raise NotImplementedError

    def record(self, item, result):
        """AWS applied it at once: the item is applied."""
        item.finish(ItemState.APPLIED, request_id=result["request_id"], submitted_at=timezone.now(),
                    error_code="", error_message="")

    def verify(self, item, data, now, timeout):
        raise NotImplementedError(f"{self.kind} items are never pending")

    def rollback(self, batch, user, comment="", request_token=None):
        """Restore each item's previous values where nothing changed them since (the rollback
        plan of fleet.changes.rollbacks)."""
        from ...changes.requests import restore_previous

        return restore_previous(batch, user, comment, request_token=request_token)

    def rerun(self, batch, user, comment):
        raise NotImplementedError

    def undo_applied(self, batch, user, comment, undo, in_progress, related=("account",)):
        """A rollback batch with one item per applied item of ``batch``, built by ``undo(item,
        new batch)``; ``in_progress`` is the refusal when one of the targets is busy again."""
        from ...changes.requests import _author, _dispatch_on_commit
        from ...changes.validation import ChangeRefused
        from ...models import ChangeBatch, ChangeItem

        applied = list(batch.items.filter(state=ItemState.APPLIED).select_related(*related))
        if not applied:
            raise ChangeRefused("Nothing in this batch was applied, so there is nothing to roll back.")
        try:
            with transaction.atomic():
                new = ChangeBatch.objects.create(
                    created_by=_author(user), kind=self.kind, desired={}, rollback_of=batch,
                    selection=f"rollback of batch #{batch.pk}", comment=comment or f"Rollback of batch #{batch.pk}",
                )
                ChangeItem.objects.bulk_create(undo(item, new) for item in applied)
                _dispatch_on_commit(new)
        except IntegrityError as exc:
            raise ChangeRefused(in_progress) from exc
        return new

    def gone_reason(self, item):
        return ""
