"""Change kinds written as target objects (the runner, rollback and rerun ask the target instead
of branching on the kind): "require IMDSv2 at the source" and account-level enforcement.

A target has ``call(item, dry_run, token_taken)`` (the AWS calls of one item; raises the
project's AWS errors, or DryRunSucceeded), ``record(item, result)`` (the cache after success),
``rollback(batch, user, comment)`` and ``rerun(batch, user, comment)``.
"""

from .choices import ChangeKind


def target_for(kind):
    """The target of a batch kind, or None for the kinds the engine handles itself."""
    from .enforcement import EnforcementTarget
    from .source_changes import LaunchTemplateTarget

    return {ChangeKind.LAUNCH_TEMPLATE: LaunchTemplateTarget, ChangeKind.ENFORCEMENT: EnforcementTarget}.get(kind)
