"""What a change would do, before anything is queued: the confirmation page's figures.

Every figure is an aggregate of the one decision rule (:mod:`fleet.changes.decision`), so they
reconcile by construction: selected = to change + already + held (by reason) + busy + waived +
unreachable.
"""

import math
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from .. import ratelimit
from ..choices import HttpTokens, InstanceState, Risk, Toggle
from ..models.inventory import RISKS
from .decision import Outcome, decide
from .validation import clean_instance_desired

# Name patterns of hosts that usually run containers; hop limit 1 breaks their pods' IMDSv2.
CONTAINER_HOST_PATTERN = r"(eks|ecs|k8s|kube|docker|container|nomad)"
STOPPED = [InstanceState.STOPPED, InstanceState.STOPPING]


def container_hosts_hop_one():
    """Instances that look like container hosts and keep hop limit 1 under IMDSv2."""
    return (
        Q(hop_limit=1)
        & Q(name__iregex=CONTAINER_HOST_PATTERN)
        & ~Q(http_tokens=HttpTokens.REQUIRED)
        & Q(http_endpoint=Toggle.ENABLED)
    )


def outcome_group(name):
    """The decided instances (``fleet.changes.decision``) in one of the confirmation page's
    buckets: an Outcome value, or ``held`` / ``unreachable`` / ``stopped`` / ``containers``. The
    plan counts with these and the instance list's ``outcome=`` filter lists with them."""
    groups = {
        "held": Q(outcome__in=Outcome.held()),
        "unreachable": Q(outcome__in=Outcome.unreachable()),
        "stopped": Q(outcome=Outcome.QUEUED, instance_state__in=STOPPED),
        "containers": Q(outcome=Outcome.QUEUED) & container_hosts_hop_one(),
    }
    return groups.get(name, Q(outcome=name))


def submit_seconds(count):
    """Time to submit ``count`` changes in one account/region: one call after another at
    IMDSWEB_ESTIMATE_CALL_SECONDS each, and no faster than AWS's bucket for
    ModifyInstanceMetadataOptions allows (its burst at once, then the refill rate)."""
    capacity, rate = ratelimit.limits_for("ModifyInstanceMetadataOptions")
    return max(count * settings.IMDSWEB_ESTIMATE_CALL_SECONDS, max(0, count - capacity) / rate)


def estimate_seconds(per_region_counts):
    """Until the last item is recorded applied: account/regions run in parallel, so the slowest
    one's submit time, then AWS's pending -> applied (IMDSWEB_ESTIMATE_APPLY_SECONDS) and
    imdsweb's next tracking round (IMDSWEB_TRACK_FAST_SECONDS). Stopped instances apply when they
    next start and are not in it. ``estimate_assumptions`` says the same in words."""
    counts = [count for count in per_region_counts if count]
    if not counts:
        return 0
    worst = max(submit_seconds(count) for count in counts)
    return math.ceil(worst + settings.IMDSWEB_ESTIMATE_APPLY_SECONDS + settings.IMDSWEB_TRACK_FAST_SECONDS)


def estimate_assumptions(per_region_counts):
    """What ``estimate_seconds`` assumes, for the confirmation page."""
    capacity, rate = ratelimit.limits_for("ModifyInstanceMetadataOptions")
    counts = [count for count in per_region_counts if count]
    worst = max(counts, default=0)
    return (
        f"submitting {worst:,} change{'s' if worst != 1 else ''} in the busiest of {len(counts):,} account/region"
        f"{'s' if len(counts) != 1 else ''} (they run in parallel): {submit_seconds(worst):.0f} s at "
        f"{settings.IMDSWEB_ESTIMATE_CALL_SECONDS:g} s a call, no faster than AWS's {capacity:g} at once then "
        f"{rate:g} a second; then about {settings.IMDSWEB_ESTIMATE_APPLY_SECONDS:g} s for AWS to apply and up to "
        f"{settings.IMDSWEB_TRACK_FAST_SECONDS:g} s for imdsweb to see it applied. Stopped instances apply when "
        f"they next start and are not included."
    )


@dataclass
class Plan:
    total: int = 0
    to_change: int = 0
    already: int = 0
    busy: int = 0
    waived: int = 0
    held: int = 0
    unreachable: int = 0
    stopped: int = 0
    hop_limit_one_containers: int = 0
    # [(Risk, count)] of the instances to change, highest risk first, zeros included
    # (fleet.models.inventory.RISKS); those already enforced have no risk class.
    risk_split: list = field(default_factory=list)
    # {Outcome value: count} for every outcome, zeros included.
    outcomes: dict = field(default_factory=dict)
    # [(Outcome, count)] of the held outcomes with instances, for "held by reason".
    held_by_reason: list = field(default_factory=list)
    per_region: list = field(default_factory=list)
    busy_batches: list = field(default_factory=list)
    unmeasured_regions: list = field(default_factory=list)
    estimated_seconds: int = 0
    estimate_assumptions: str = ""
    warnings: list = field(default_factory=list)

    @property
    def to_change_enforced(self):
        """Instances to change that already enforce IMDSv2 (another option changes): no risk class."""
        return self.to_change - sum(n for _, n in self.risk_split)

    @property
    def reconciles(self):
        return self.total == self.to_change + self.already + self.held + self.busy + self.waived + self.unreachable


def plan_change(instances, desired, override_usage=False, override_owner=False, override_waivers=False):
    """What a change would do to ``instances``, in a fixed handful of queries."""
    desired = clean_instance_desired(desired)
    decided = decide(instances, desired, override_usage=override_usage, override_owner=override_owner,
                     override_waivers=override_waivers,
                     now=timezone.now())
    rows = list(
        decided.values("account__account_id", "account__name", "account_id", "region", "outcome")
        .annotate(n=Count("pk"))
        .order_by("account__account_id", "region")
    )
    queued = Q(outcome=Outcome.QUEUED)
    extra = decided.aggregate(
        stopped=Count("pk", filter=outcome_group("stopped")),
        hop_one=Count("pk", filter=outcome_group("containers")),
        **{f"risk_{risk}": Count("pk", filter=queued & q) for risk, q in RISKS.items()},
    )
    outcomes = dict.fromkeys(Outcome.values, 0)
    regions = {}
    for row in rows:
        outcomes[row["outcome"]] += row["n"]
        key = (row["account__account_id"], row["region"])
        region = regions.setdefault(key, {
            "account_id": row["account__account_id"], "account_name": row["account__name"],
            "account_pk": row["account_id"], "region": row["region"], "total": 0,
            **dict.fromkeys(("to_change", "already", "held", "busy", "waived", "unreachable"), 0),
        })
        region["total"] += row["n"]
        region[_bucket(row["outcome"])] += row["n"]
    plan = Plan(
        total=sum(outcomes.values()),
        to_change=outcomes[Outcome.QUEUED],
        already=outcomes[Outcome.ALREADY],
        busy=outcomes[Outcome.BUSY],
        waived=outcomes[Outcome.WAIVED],
        held=sum(outcomes[code] for code in Outcome.held()),
        unreachable=sum(outcomes[code] for code in Outcome.unreachable()),
        stopped=extra["stopped"],
        hop_limit_one_containers=extra["hop_one"] if desired.get("hop_limit", 1) == 1 else 0,
        risk_split=[(Risk(risk), extra[f"risk_{risk}"]) for risk in RISKS],
        outcomes=outcomes,
        held_by_reason=[(Outcome(code), outcomes[code]) for code in Outcome.held() if outcomes[code]],
        per_region=list(regions.values()),
    )
    if plan.busy:
        plan.busy_batches = sorted(set(
            decided.filter(outcome=Outcome.BUSY).values_list("busy_batch", flat=True).order_by()[:1000]
        ))
    if outcomes[Outcome.HELD_UNMEASURED] or outcomes[Outcome.HELD_STALE] or outcomes[Outcome.HELD_ERROR]:
        plan.unmeasured_regions = [
            (region["account_pk"], region["account_id"], region["region"])
            for region in plan.per_region if region["held"]
        ]
    plan.estimated_seconds = estimate_seconds([region["to_change"] for region in plan.per_region])
    plan.estimate_assumptions = estimate_assumptions([region["to_change"] for region in plan.per_region])
    plan.warnings = _warnings(plan)
    return plan


def _bucket(outcome):
    if outcome == Outcome.QUEUED:
        return "to_change"
    if outcome in Outcome.held():
        return "held"
    if outcome in Outcome.unreachable():
        return "unreachable"
    return outcome  # already, busy, waived


def _warnings(plan):
    """(outcome filter for the instance list, message) pairs; the page links each to its list."""
    days = settings.IMDSWEB_USAGE_WINDOW_DAYS
    warnings = []
    if plan.stopped:
        warnings.append(("stopped", f"{plan.stopped:,} stopped instance(s) accept the change now but apply it only "
                                    "when next started; they stay pending until then."))
    if plan.hop_limit_one_containers:
        warnings.append(("containers", f"{plan.hop_limit_one_containers:,} instance(s) look like container hosts "
                                       "and have hop limit 1: with IMDSv2 required, containers behind a bridge need "
                                       "hop limit 2 (some CNIs 3)."))
    messages = {
        Outcome.HELD_OWNER: "are launched from a source a managed service owns (EKS, Elastic Beanstalk, EMR or "
                            "CloudFormation; the reason per instance names it): a change made outside the owner "
                            "breaks or drifts it",
        Outcome.HELD_CALLS: "made IMDSv1 calls in the last {days} days",
        Outcome.HELD_ERROR: "have IMDSv1 use that could not be read from CloudWatch (see the reason per instance)",
        Outcome.HELD_UNMEASURED: "have IMDSv1 use never measured",
        Outcome.HELD_STALE: "have IMDSv1 use not measured for more than {hours:g} hours",
    }
    for outcome, count in plan.held_by_reason:
        text = messages[outcome].format(days=days, hours=settings.IMDSWEB_USAGE_STALE_MINUTES / 60)
        warnings.append((outcome.value, f"{count:,} instance(s) {text} and will be held back unless you override."))
    if plan.busy:
        shown = ", ".join(f"#{pk}" for pk in plan.busy_batches[:5])
        warnings.append((Outcome.BUSY.value, f"{plan.busy:,} instance(s) already have a change in progress "
                                             f"(batch {shown}) and will be skipped."))
    if plan.waived:
        warnings.append((Outcome.WAIVED.value, f"{plan.waived:,} instance(s) are covered by an active waiver and "
                                               "will be skipped (the reason names the waiver) unless you override "
                                               "waivers for this batch."))
    if plan.unreachable:
        warnings.append(("unreachable", f"{plan.unreachable:,} instance(s) are terminated or gone and will be "
                                        "skipped."))
    return warnings
