"""What rolling a batch back would do: the rollback's confirmation page and the rollback itself.

A rollback never undoes someone else's work. For each item of batch N that reached AWS (applied,
pending or stuck), the previous values are restored only if the target (instance, or account/
region for defaults) still has the values batch N set, per the latest sync or tracking, and no
later batch has changed those options since; anything else is skipped with a reason naming what
changed it. Pending items (stopped instances waiting for their next start) are rolled back too:
their item is cancelled and the previous values are sent, so the instance does not turn IMDSv2-only
when it starts. Queued items of batch N are cancelled (nothing was sent). A batch is rolled back
once: to redo its change, roll back the rollback.
"""

from collections import Counter
from dataclasses import dataclass, field

from ..choices import HttpTokens, ItemState, aws_options
from ..engine.targets import target_for
from ..models import ChangeItem
from .validation import ChangeRefused

# Items whose change AWS accepted: what a rollback restores.
REACHED_AWS = [ItemState.APPLIED, ItemState.PENDING, ItemState.STUCK]


@dataclass
class Entry:
    item: ChangeItem
    restore: dict
    current: dict
    reason: str = ""

    @property
    def queued(self):
        return not self.reason

    @property
    def state(self):
        return ItemState.QUEUED if self.queued else ItemState.SKIPPED


@dataclass
class RollbackPlan:
    batch: object
    entries: list = field(default_factory=list)
    cancelled_queued: int = 0
    refusal: str = ""
    wave: int | None = None

    @property
    def restore(self):
        return [entry for entry in self.entries if entry.queued]

    @property
    def skipped(self):
        return [entry for entry in self.entries if not entry.queued]

    def skipped_by_reason(self):
        return Counter(entry.reason for entry in self.skipped).most_common()

    def summary(self):
        """What goes back to which values, in words: ["716 instances go back to HttpTokens=optional
        (they will allow IMDSv1 again)"]."""
        target = target_for(self.batch.kind)
        noun = target.noun
        groups = Counter(tuple(sorted(entry.restore.items())) for entry in self.restore)
        lines = []
        for values, count in groups.most_common():
            text = aws_options(dict(values))
            line = f"{count:,} {noun}{'s' if count != 1 else ''} go back to {text}"
            if dict(values).get("http_tokens") == HttpTokens.OPTIONAL:
                line += f" ({target.allows_imdsv1_again})"
            lines.append(line)
        return lines

    def raise_if_refused(self):
        if self.refusal:
            raise ChangeRefused(self.refusal, batch=self.batch.rollbacks.first())
        if not self.restore:
            reasons = "; ".join(f"{count:,} {reason}" for reason, count in self.skipped_by_reason()[:5])
            raise ChangeRefused("Nothing to roll back" + (f": {reasons}." if reasons else "."))


def _later_changes(items, target):
    """{target key: (pk, batch pk, state) of the latest later item} of changes that reached AWS
    (or are on their way) after these items."""
    if not items:
        return {}
    first = min(item.pk for item in items)
    later = ChangeItem.objects.filter(pk__gt=first, state__in=[*REACHED_AWS, ItemState.QUEUED, ItemState.SUBMITTING])
    return target.later_changes(later.exclude(batch_id=items[0].batch_id), items)


def plan_rollback(batch, wave=None):
    """What rolling ``batch`` back would restore and skip, and why (a few queries). ``wave``:
    only that wave's items of a staged rollout (its queued items are cancelled all the same)."""
    plan = RollbackPlan(batch=batch, wave=wave)
    rolled_back = batch.rollbacks.order_by("pk").first()
    if rolled_back is not None:
        plan.refusal = (f"Batch #{batch.pk} was already rolled back by batch #{rolled_back.pk}. To redo its "
                        f"change, roll back batch #{rolled_back.pk} instead.")
        return plan
    submitting = batch.items.filter(state=ItemState.SUBMITTING).count()
    if submitting:
        plan.refusal = (f"{submitting:,} item(s) are being sent to AWS right now; roll back once they have an "
                        "answer (in a few seconds).")
        return plan
    plan.cancelled_queued = batch.items.filter(state=ItemState.QUEUED).count()
    reached = batch.items.filter(state__in=REACHED_AWS)
    if wave is not None:
        reached = reached.filter(wave=wave)
    items = list(reached.select_related("account", "instance", "batch"))
    target = target_for(batch.kind)
    later = _later_changes(items, target)
    current_of = target.current_values(items)
    for item in items:
        restore = {name: value for name, value in item.previous.items() if value is not None}
        key = target.rollback_key(item)
        current_all = current_of.get(key, {})
        current = {name: current_all.get(name) for name in restore}
        entry = Entry(item=item, restore=restore, current=current)
        set_by_batch = item.target_values
        changed = {name: current_all.get(name) for name, value in set_by_batch.items()
                   if current_all.get(name) != value}
        newer = later.get(key)
        if not restore:
            entry.reason = "no previous values recorded"
        elif gone := target.gone_reason(item):
            entry.reason = gone
        elif newer and newer[2] in ItemState.active():
            entry.reason = f"another change is in progress (batch #{newer[1]})"
        elif newer:
            entry.reason = f"changed since by batch #{newer[1]}"
        elif changed:
            now = ", ".join(f"{name}={value}" for name, value in changed.items())
            entry.reason = f"changed outside imdsweb since (now {now})"
        plan.entries.append(entry)
    return plan
