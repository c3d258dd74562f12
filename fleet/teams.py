"""Posture by team: who owns the instances that still allow IMDSv1.

The team is the value of one tag, chosen in settings (``IMDSWEB_OWNER_TAG``, ``Team`` by
default). :func:`refresh_region` recounts an account/region's ``TeamPosture`` rows with one GROUP
BY (called by ``fleet.posture.refresh_region``, so every writer of instance rows keeps it true);
:func:`by_team` sums those rows for the overview with one query.
"""

from django.conf import settings
from django.db import transaction
from django.db.models import BooleanField, Count, ExpressionWrapper, Sum
from django.db.models.fields.json import KeyTextTransform

from .choices import Risk
from .models import Instance, TeamPosture
from .models.inventory import ENFORCED, RISKS, V1_USAGE, WAIVED
from .posture import NOT_ENFORCED, percent, posture_level


def owner_tag():
    return settings.IMDSWEB_OWNER_TAG


def team_expression():
    """The owner tag's value of an instance row (NULL without the tag)."""
    return KeyTextTransform(owner_tag(), "tags")


def _flag(q):
    return ExpressionWrapper(q, output_field=BooleanField())


def refresh_region(account_pk, region):
    groups = (
        Instance.objects.counted().filter(account_id=account_pk, region=region)
        .annotate(team=team_expression(), is_enforced=_flag(ENFORCED), is_waived=_flag(WAIVED),
                  in_use=_flag(V1_USAGE["yes"]), role_public=_flag(RISKS[Risk.ROLE_PUBLIC]))
        .values("team", "is_enforced", "is_waived", "in_use", "role_public").annotate(n=Count("id")).order_by()
    )
    rows = {}
    for group in groups:
        row = rows.setdefault(group["team"], TeamPosture(account_id=account_pk, region=region, team=group["team"]))
        row.total += group["n"]
        row.enforced += group["n"] * bool(group["is_enforced"])
        row.waived += group["n"] * bool(group["is_waived"])
        row.v1_in_use += group["n"] * bool(group["in_use"])
        row.risk_role_public += group["n"] * bool(group["role_public"])
    with transaction.atomic():
        TeamPosture.objects.filter(account_id=account_pk, region=region).delete()
        TeamPosture.objects.bulk_create(rows.values())


def by_team():
    """[{team, total, enforced, waived, not_enforced, enforced_pct, level, v1_in_use, risk_role_public}],
    worst first (most instances not enforced), the untagged last: one query over the summary rows.
    As on the tiles, not enforced = neither enforced nor waived."""
    sums = (
        TeamPosture.objects.values("team")
        .annotate(total=Sum("total"), enforced=Sum("enforced"), waived=Sum("waived"), v1_in_use=Sum("v1_in_use"),
                  risk_role_public=Sum("risk_role_public"))
        .filter(total__gt=0).order_by()
    )
    rows = []
    for row in sums:
        pct = percent(row["enforced"], row["total"])
        rows.append(row | {"not_enforced": NOT_ENFORCED.of(row), "enforced_pct": pct,
                           "level": posture_level(pct)})
    rows.sort(key=lambda row: (row["team"] is None, -row["not_enforced"], row["team"] or ""))
    return rows


# The instance-list filters whose count the team rows know (the overview block's links), besides
# account, OU and region: {frozenset of (filter, value)}: the TeamPosture column that counts them.
TEAM_COUNTS = {
    frozenset({("posture", "counted")}): "total",
    frozenset({("posture", "enforced")}): "enforced",
    frozenset({("posture", "not_enforced")}): "not_enforced",
    frozenset({("posture", "waived")}): "waived",
    frozenset({("posture", "counted"), ("v1_usage", "yes")}): "v1_in_use",
    frozenset({("posture", "counted"), ("risk", "role_public")}): "risk_role_public",
}


def team_of_filters(filters):
    """(team or None for "without the tag", the other filters) when ``filters`` name one team
    (``team=``, or ``tag=!<owner tag>``), else (False, filters)."""
    filters = dict(filters)
    if "team" in filters and "tag" not in filters:
        return filters.pop("team"), filters
    if filters.get("tag") == f"!{owner_tag()}" and "team" not in filters:
        filters.pop("tag")
        return None, filters
    return False, filters


def present_count(filters, account_pks=None, regions=None):
    """The count of a team filter from the team rows (one query), or None when they cannot tell."""
    team, others = team_of_filters(filters)
    column = TEAM_COUNTS.get(frozenset((name, str(value)) for name, value in others.items()))
    if team is False or column is None:
        return None
    rows = TeamPosture.objects.filter(team__isnull=True) if team is None else TeamPosture.objects.filter(team=team)
    if account_pks:
        rows = rows.filter(account_id__in=account_pks)
    if regions:
        rows = rows.filter(region__in=regions)
    sums = rows.aggregate(total=Sum("total"), enforced=Sum("enforced"), waived=Sum("waived"),
                          v1_in_use=Sum("v1_in_use"), risk_role_public=Sum("risk_role_public"))
    sums = {key: value or 0 for key, value in sums.items()}
    sums["not_enforced"] = NOT_ENFORCED.of(sums)
    return sums[column]
