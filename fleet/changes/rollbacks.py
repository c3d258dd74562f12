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

from ..choices import ChangeKind, HttpTokens, InstanceState, ItemState, aws_options
from ..models import ChangeItem, MetadataDefaults
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
        noun = "account/region" if self.batch.kind == ChangeKind.ACCOUNT_DEFAULTS else "instance"
        groups = Counter(tuple(sorted(entry.restore.items())) for entry in self.restore)
        lines = []
        for values, count in groups.most_common():
            text = aws_options(dict(values))
            line = f"{count:,} {noun}{'s' if count != 1 else ''} go back to {text}"
            if dict(values).get("http_tokens") == HttpTokens.OPTIONAL:
                line += " (they will allow IMDSv1 again)" if noun == "instance" else " (new launches may allow IMDSv1)"
            lines.append(line)
        return lines

    def raise_if_refused(self):
        if self.refusal:
            raise ChangeRefused(self.refusal, batch=self.batch.rollbacks.first())
        if not self.restore:
            reasons = "; ".join(f"{count:,} {reason}" for reason, count in self.skipped_by_reason()[:5])
            raise ChangeRefused("Nothing to roll back" + (f": {reasons}." if reasons else "."))


def _later_changes(items, kind):
    """{target key: the latest later batch's pk} of changes that reached AWS after these items."""
    if not items:
        return {}
    first = min(item.pk for item in items)
    batch_pk = items[0].batch_id
    later = ChangeItem.objects.filter(pk__gt=first, state__in=[*REACHED_AWS, ItemState.QUEUED, ItemState.SUBMITTING])
    later = later.exclude(batch_id=batch_pk)
    if kind == ChangeKind.ACCOUNT_DEFAULTS:
        later = later.filter(instance__isnull=True, account_id__in={item.account_id for item in items})
        rows = later.values_list("pk", "account_id", "region", "batch_id", "state")
        return {(account_pk, region): (pk, batch, state) for pk, account_pk, region, batch, state in rows.order_by("pk")}
    later = later.filter(instance_id__in=[item.instance_id for item in items])
    rows = later.values_list("pk", "instance_id", "batch_id", "state").order_by("pk").iterator(chunk_size=5000)
    return {instance_pk: (pk, batch, state) for pk, instance_pk, batch, state in rows}


def _current_defaults(items):
    rows = MetadataDefaults.objects.filter(account_id__in={item.account_id for item in items})
    return {(row.account_id, row.region): row.values for row in rows}


def plan_rollback(batch):
    """What rolling ``batch`` back would restore and skip, and why (a few queries)."""
    plan = RollbackPlan(batch=batch)
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
    items = list(batch.items.filter(state__in=REACHED_AWS).select_related("account", "instance", "batch"))
    defaults = batch.kind == ChangeKind.ACCOUNT_DEFAULTS
    later = _later_changes(items, batch.kind)
    current_defaults = _current_defaults(items) if defaults else {}
    for item in items:
        restore = {name: value for name, value in item.previous.items() if value is not None}
        key = (item.account_id, item.region) if defaults else item.instance_id
        if defaults:
            current_all = current_defaults.get(key, {})
        else:
            current_all = item.instance.options if item.instance else {}
        current = {name: current_all.get(name) for name in restore}
        entry = Entry(item=item, restore=restore, current=current)
        set_by_batch = item.target_values
        changed = {name: current_all.get(name) for name, value in set_by_batch.items()
                   if current_all.get(name) != value}
        newer = later.get(key)
        if not restore:
            entry.reason = "no previous values recorded"
        elif not defaults and (item.instance is None or item.instance.gone_at or item.instance.instance_state in (
                InstanceState.TERMINATED, InstanceState.SHUTTING_DOWN)):
            entry.reason = "instance no longer exists in AWS (or is terminated)"
        elif newer and newer[2] in ItemState.active():
            entry.reason = f"another change is in progress (batch #{newer[1]})"
        elif newer:
            entry.reason = f"changed since by batch #{newer[1]}"
        elif changed:
            now = ", ".join(f"{name}={value}" for name, value in changed.items())
            entry.reason = f"changed outside imdsweb since (now {now})"
        plan.entries.append(entry)
    return plan
