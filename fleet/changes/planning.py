"""What a change would do, before anything is queued: the confirmation page's figures."""

import math
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Q

from .. import ratelimit
from ..choices import HttpTokens, InstanceState, ItemState, Toggle
from ..models import ChangeItem
from .validation import clean_instance_desired

# Name patterns of hosts that usually run containers; hop limit 1 breaks their pods' IMDSv2.
CONTAINER_HOST_PATTERN = r"(eks|ecs|k8s|kube|docker|container|nomad)"


def _at_target(desired):
    return Q(**desired)


def _not_actionable():
    """Instances a change cannot reach: gone from AWS, or terminated."""
    return Q(gone_at__isnull=False) | Q(instance_state__in=[InstanceState.TERMINATED, InstanceState.SHUTTING_DOWN])


def _busy():
    return Q(change_items__state__in=ItemState.active())


def _held(desired, override_usage):
    """IMDSv1 calls seen in the window make enforcing tokens risky: hold those instances."""
    if override_usage or desired.get("http_tokens") != HttpTokens.REQUIRED:
        return Q(pk__in=[])
    return Q(v1_calls__gt=0)


def estimate_seconds(per_region_counts):
    """Time to submit, from AWS's bucket for ModifyInstanceMetadataOptions: account/regions run
    in parallel, each spends its burst at once and then the refill rate."""
    capacity, rate = ratelimit.limits_for("ModifyInstanceMetadataOptions")
    worst = 0.0
    for count in per_region_counts:
        worst = max(worst, max(0, count - capacity) / rate)
    return math.ceil(worst + (1 if per_region_counts else 0))


@dataclass
class Plan:
    total: int = 0
    to_change: int = 0
    already: int = 0
    busy: int = 0
    held: int = 0
    unreachable: int = 0
    stopped: int = 0
    hop_limit_one_containers: int = 0
    per_region: list = field(default_factory=list)
    estimated_seconds: int = 0
    warnings: list = field(default_factory=list)


def plan_change(instances, desired, override_usage=False):
    """What a change would do to ``instances``, in a fixed handful of queries."""
    desired = clean_instance_desired(desired)
    already = _at_target(desired) & ~_not_actionable()
    unreachable = _not_actionable()
    actionable = ~already & ~unreachable
    busy_ids = ChangeItem.objects.filter(state__in=ItemState.active(), instance__in=instances).values("instance_id")
    busy = Q(pk__in=busy_ids) & actionable
    held = _held(desired, override_usage) & actionable & ~Q(pk__in=busy_ids)
    queued = actionable & ~Q(pk__in=busy_ids) & ~_held(desired, override_usage)
    totals = instances.aggregate(
        total=Count("pk"),
        already=Count("pk", filter=already),
        unreachable=Count("pk", filter=unreachable),
        busy=Count("pk", filter=busy),
        held=Count("pk", filter=held),
        to_change=Count("pk", filter=queued),
        stopped=Count("pk", filter=queued & Q(instance_state__in=[InstanceState.STOPPED, InstanceState.STOPPING])),
        hop_one=Count(
            "pk",
            filter=queued
            & Q(hop_limit=1)
            & Q(name__iregex=CONTAINER_HOST_PATTERN)
            & ~Q(http_tokens=HttpTokens.REQUIRED)
            & Q(http_endpoint=Toggle.ENABLED),
        ),
    )
    rows = (
        instances.values("account__account_id", "account__name", "region")
        .annotate(to_change=Count("pk", filter=queued), already=Count("pk", filter=already))
        .order_by("account__account_id", "region")
    )
    plan = Plan(
        total=totals["total"],
        to_change=totals["to_change"],
        already=totals["already"],
        busy=totals["busy"],
        held=totals["held"],
        unreachable=totals["unreachable"],
        stopped=totals["stopped"],
        hop_limit_one_containers=totals["hop_one"] if desired.get("hop_limit", 1) == 1 else 0,
        per_region=[
            {
                "account_id": row["account__account_id"],
                "account_name": row["account__name"],
                "region": row["region"],
                "to_change": row["to_change"],
                "already": row["already"],
            }
            for row in rows
        ],
    )
    plan.estimated_seconds = estimate_seconds([row["to_change"] for row in plan.per_region])
    if plan.stopped:
        plan.warnings.append(
            f"{plan.stopped} stopped instance(s) accept the change now but apply it only when next started; "
            "they stay pending until then."
        )
    if plan.hop_limit_one_containers:
        plan.warnings.append(
            f"{plan.hop_limit_one_containers} instance(s) look like container hosts and have hop limit 1: "
            "with IMDSv2 required, containers behind a bridge need hop limit 2 (some CNIs 3)."
        )
    if plan.held:
        plan.warnings.append(
            f"{plan.held} instance(s) made IMDSv1 calls in the last {settings.IMDSWEB_USAGE_WINDOW_DAYS} days "
            "and will be held back unless you override."
        )
    if plan.busy:
        plan.warnings.append(f"{plan.busy} instance(s) already have a change in progress and will be skipped.")
    return plan
