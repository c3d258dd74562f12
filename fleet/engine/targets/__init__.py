"""One target per kind of change: what the runner, the tracker, rollback and rerun ask instead of
branching on ``ChangeBatch.kind``.

The interface is ``base.Target``. The kinds:

- ``instances.InstanceOptionsTarget``: ModifyInstanceMetadataOptions on one instance;
- ``defaults.AccountDefaultsTarget``: ModifyInstanceMetadataDefaults of one account/region;
- ``fleet.source_changes.LaunchTemplateTarget``: "require IMDSv2 at the source" on a launch template;
- ``fleet.enforcement.EnforcementTarget``: account-level ``HttpTokensEnforced``.

A new kind is a new ``Target`` subclass and one line in ``_registry``.
"""

from functools import cache


@cache
def _registry():
    # Imported on first use: the launch-template and enforcement kinds live with their request
    # code, which imports the change service, which asks this registry for rollbacks.
    from ...enforcement import EnforcementTarget
    from ...source_changes import LaunchTemplateTarget
    from .defaults import AccountDefaultsTarget
    from .instances import InstanceOptionsTarget

    kinds = (InstanceOptionsTarget, AccountDefaultsTarget, LaunchTemplateTarget, EnforcementTarget)
    return {target.kind: target() for target in kinds}


def target_for(kind):
    """The target of a batch kind (a ``ChangeKind``)."""
    return _registry()[kind]


def target_of(item):
    """The target of an item (its batch's kind)."""
    return target_for(item.batch.kind)


def with_batches(items):
    """Give each item its batch, reading the items' few batches once each rather than a copy of
    each (and of its JSON) joined to every item: the runner's chunks and the tracker's rounds."""
    from ...models import ChangeBatch

    batches = ChangeBatch.objects.in_bulk({item.batch_id for item in items})
    for item in items:
        item.batch = batches[item.batch_id]
    return items
