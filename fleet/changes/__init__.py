"""The change service: plan, request, cancel, retry and roll back metadata changes.

The UI, the admin, the management commands and the tests all go through these functions.

An instance never has two active items: a request skips instances that already have one
(state ``skipped``, with the batch that holds them as the reason), and the database refuses a
second active item even if two requests race.
"""

from .decision import Outcome, decide
from .planning import Plan, container_hosts_hop_one, estimate_seconds, outcome_group, plan_change
from .requests import (
    cancel_queued,
    instances_for,
    request_change,
    request_defaults_change,
    rerun,
    retry_failed,
    rollback,
)
from .rollbacks import RollbackPlan, plan_rollback
from .validation import (
    REQUIRE_IMDSV2,
    AlreadySubmitted,
    ChangeRefused,
    clean_defaults_desired,
    clean_instance_desired,
)

__all__ = [
    "REQUIRE_IMDSV2",
    "AlreadySubmitted",
    "ChangeRefused",
    "Outcome",
    "Plan",
    "RollbackPlan",
    "cancel_queued",
    "clean_defaults_desired",
    "clean_instance_desired",
    "container_hosts_hop_one",
    "decide",
    "estimate_seconds",
    "instances_for",
    "outcome_group",
    "plan_change",
    "plan_rollback",
    "request_change",
    "request_defaults_change",
    "rerun",
    "retry_failed",
    "rollback",
]
