"""The overview's figures: the fleet's IMDS posture.

Instance counts come from the maintained :class:`RegionPosture` rows (one per account/region),
which :func:`refresh_region` recomputes with one aggregate over that account/region's instances
whenever a sync, the usage stage or the change engine has written them. The overview then reads a
few dozen rows, whatever the fleet's size. Nothing loops over accounts with a query each.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Case, Count, Max, OuterRef, Q, Subquery, Sum, Value, When
from django.utils import timezone

from .choices import (
    DefaultsHttpTokens,
    DefaultsStatus,
    HttpTokens,
    InstanceState,
    ItemState,
    ManagedBy,
    MetadataState,
    SyncStatus,
    Toggle,
)
from .models import Account, ChangeBatch, ChangeItem, Instance, MetadataDefaults, RegionPosture, SyncRun
from .models.inventory import ENFORCED, ENFORCED_AND_APPLIED
from .models.posture import COUNTERS


def percent(part, whole):
    """Percentage as a float, or None when there is nothing to measure."""
    return round(100.0 * part / whole, 1) if whole else None


def posture_level(pct):
    """green / amber / red, used for every posture colour on the site."""
    if pct is None:
        return "none"
    if pct >= 95:
        return "good"
    if pct >= 70:
        return "warn"
    return "bad"


def _counters():
    """The aggregate behind every RegionPosture counter."""
    not_enforced = ~ENFORCED
    return {
        "total": Count("id"),
        "enforced": Count("id", filter=ENFORCED),
        "enforced_applied": Count("id", filter=ENFORCED_AND_APPLIED),
        "tokens_required": Count("id", filter=Q(http_tokens=HttpTokens.REQUIRED)),
        "pending": Count("id", filter=Q(metadata_state=MetadataState.PENDING)),
        "endpoint_disabled": Count("id", filter=Q(http_endpoint=Toggle.DISABLED)),
        "hop_limit_over_1": Count("id", filter=Q(hop_limit__gt=1)),
        "tags_enabled": Count("id", filter=Q(instance_metadata_tags=Toggle.ENABLED)),
        "stopped": Count("id", filter=Q(instance_state=InstanceState.STOPPED)),
        "v1_in_use": Count("id", filter=Q(v1_calls__gt=0)),
        "v1_measured": Count("id", filter=Q(v1_calls__isnull=False)),
        "safe_to_enforce": Count("id", filter=not_enforced & Q(v1_calls=0)),
        "not_enforced_unmeasured": Count("id", filter=not_enforced & Q(v1_calls__isnull=True)),
        "not_enforced_in_use": Count("id", filter=not_enforced & Q(v1_calls__gt=0)),
    }


def refresh_region(account_id, region):
    """Recompute one account/region's summary (two queries over its present instances)."""
    instances = Instance.objects.present().filter(account_id=account_id, region=region)
    counts = instances.aggregate(**_counters())
    hops = {
        "none" if row["hop_limit"] is None else str(row["hop_limit"]): row["n"]
        for row in instances.values("hop_limit").annotate(n=Count("id")).order_by()
    }
    RegionPosture.objects.update_or_create(
        account_id=account_id, region=region, defaults={**counts, "hop_limits": hops, "refreshed_at": timezone.now()}
    )


def refresh_all():
    """Recompute every summary row (the periodic safety net, and after bulk loads)."""
    pairs = set(Instance.objects.values_list("account_id", "region").distinct().order_by())
    pairs |= set(RegionPosture.objects.values_list("account_id", "region"))
    for account_id, region in sorted(pairs):
        refresh_region(account_id, region)
    return len(pairs)


def fleet_totals():
    """Counts over present instances, summed from the summary rows (one query)."""
    # Summed by the database: at 3,400 account/regions, reading every row cost more than the page's budget.
    sums = RegionPosture.objects.aggregate(**{key: Sum(key) for key in COUNTERS})
    totals = {key: sums[key] or 0 for key in COUNTERS}
    totals["not_enforced"] = totals["total"] - totals["enforced"]
    totals["enforced_pct"] = percent(totals["enforced"], totals["total"])
    totals["enforced_applied_pct"] = percent(totals["enforced_applied"], totals["total"])
    totals["enforced_level"] = posture_level(totals["enforced_pct"])
    totals["enforced_applied_level"] = posture_level(totals["enforced_applied_pct"])
    return totals


@dataclass
class HeatMap:
    regions: list[str]
    # One row per account: {"account_id", "name", "cells": [cell or None per region], "total", ...}
    rows: list[dict] = field(default_factory=list)


def compliance_by_region():
    """Account x region counts of present instances, from the summary rows (one query)."""
    rows = (
        RegionPosture.objects.filter(total__gt=0)
        .values("account__account_id", "account__name", "region", "total", "enforced", "enforced_applied")
        .order_by("account__name", "account__account_id", "region")
    )
    return [
        {
            "account_id": row["account__account_id"],
            "account_name": row["account__name"],
            "region": row["region"],
            "total": row["total"],
            "enforced": row["enforced"],
            "enforced_applied": row["enforced_applied"],
            "enforced_pct": percent(row["enforced"], row["total"]),
            "level": posture_level(percent(row["enforced"], row["total"])),
        }
        for row in rows
    ]


def heat_map(region_rows):
    """Pivot the account/region rows into a matrix (no query)."""
    regions = sorted({row["region"] for row in region_rows})
    accounts = {}
    for row in region_rows:
        account = accounts.setdefault(
            row["account_id"],
            {"account_id": row["account_id"], "name": row["account_name"], "by_region": {}, "total": 0,
             "enforced": 0, "enforced_applied": 0},
        )
        account["by_region"][row["region"]] = row
        for key in ("total", "enforced", "enforced_applied"):
            account[key] += row[key]
    result = HeatMap(regions=regions)
    for account in accounts.values():
        account["cells"] = [account["by_region"].get(region) for region in regions]
        account["enforced_pct"] = percent(account["enforced"], account["total"])
        account["enforced_applied_pct"] = percent(account["enforced_applied"], account["total"])
        account["level"] = posture_level(account["enforced_pct"])
        result.rows.append(account)
    return result


def _hop_limit_sums():
    """[(hop limit key, instances)] summed over every summary row by the database (one query);
    reading 3,400 JSON objects into Python was 10-50 ms of the overview."""
    table = connection.ops.quote_name(RegionPosture._meta.db_table)
    each = "jsonb_each_text(hop_limits)" if connection.vendor == "postgresql" else "json_each(hop_limits)"
    cast = "CAST(value AS integer)"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT key, SUM({cast}) FROM {table}, {each} GROUP BY key")
        return [(key, int(total)) for key, total in cursor.fetchall()]


def hop_limit_distribution():
    """[(hop_limit or None, count)] over present instances, summed from the summary rows."""
    totals = {}
    for key, count in _hop_limit_sums():
        hop = None if key == "none" else int(key)
        totals[hop] = totals.get(hop, 0) + count
    return sorted(((hop, n) for hop, n in totals.items() if n), key=lambda pair: (pair[0] is None, pair[0] or 0))


# The one filter besides account and region whose count a summary row knows: (filter, value) ->
# the count in that row. The instance list shows these exactly at any size (fleet.filters).
SUMMARY_COUNTS = {
    ("http_tokens", HttpTokens.REQUIRED): lambda row: row.tokens_required,
    ("http_tokens", HttpTokens.OPTIONAL): lambda row: row.total - row.tokens_required,
    ("http_endpoint", Toggle.DISABLED): lambda row: row.endpoint_disabled,
    ("http_endpoint", Toggle.ENABLED): lambda row: row.total - row.endpoint_disabled,
    ("instance_metadata_tags", Toggle.ENABLED): lambda row: row.tags_enabled,
    ("instance_metadata_tags", Toggle.DISABLED): lambda row: row.total - row.tags_enabled,
    ("metadata_state", MetadataState.PENDING): lambda row: row.pending,
    ("metadata_state", MetadataState.APPLIED): lambda row: row.total - row.pending,
    ("v1_usage", "yes"): lambda row: row.v1_in_use,
    ("v1_usage", "no"): lambda row: row.v1_measured - row.v1_in_use,
    ("v1_usage", "unknown"): lambda row: row.total - row.v1_measured,
}


def summary_counter(name, value):
    """How a summary row counts the instances matching ``name=value``, or None if it cannot."""
    if name == "hop_limit":
        return lambda row: row.hop_limits.get(str(value), 0)
    return SUMMARY_COUNTS.get((name, value))


def present_count(account_ids=None, regions=None, counter=None):
    """How many present instances match, from the summary rows: account and region, and at most
    one other filter through ``counter`` (from :func:`summary_counter`)."""
    rows = RegionPosture.objects.order_by()
    if account_ids:
        rows = rows.filter(account_id__in=account_ids)
    if regions:
        rows = rows.filter(region__in=regions)
    counter = counter or (lambda row: row.total)
    return sum(counter(row) for row in rows.only(*COUNTERS, "hop_limits"))


def defaults_summary():
    """Account-level defaults: Prowler's account rule is HttpTokens = required."""
    return MetadataDefaults.objects.aggregate(
        total=Count("id"),
        tokens_required=Count("id", filter=Q(http_tokens=DefaultsHttpTokens.REQUIRED)),
        policy_managed=Count("id", filter=Q(managed_by=ManagedBy.DECLARATIVE_POLICY)),
        unknown=Count("id", filter=Q(status=DefaultsStatus.UNKNOWN)),
    )


@dataclass
class SyncState:
    account: Account
    region: str
    last_run: SyncRun | None
    last_success: datetime | None
    stale: bool
    reason: str


def _sync_verdicts(now):
    """(account, region, latest run id, last success, stale, reason) of every configured
    account/region, ordered by account. Two queries, read as tuples: at 3,400 account/regions
    building a SyncRun object each was a third of the overview's time."""
    max_age = timedelta(minutes=2 * settings.IMDSWEB_SYNC_INTERVAL_MINUTES)
    latest_ids = SyncRun.objects.values("account_id", "region").annotate(last=Max("id")).values("last")
    last_success = SyncRun.objects.filter(
        account=OuterRef("account"), region=OuterRef("region"), status=SyncStatus.SUCCEEDED
    ).order_by("-finished_at")
    # The age of the last success as a small number, compared by the database: parsing 3,400
    # timestamps was a good part of the overview at organization scale.
    success_age = Case(
        When(last_success__isnull=True, then=Value(NEVER)),
        When(last_success__lt=now - max_age, then=Value(TOO_OLD)),
        default=Value(RECENT),
    )
    runs = {
        (account_id, region): (pk, status, age)
        for pk, account_id, region, status, age in SyncRun.objects.filter(id__in=Subquery(latest_ids))
        .annotate(last_success=Subquery(last_success.values("finished_at")[:1]), success_age=success_age)
        .values_list("pk", "account_id", "region", "status", "success_age")
    }
    verdicts = []
    too_old = f"no successful sync for over {2 * settings.IMDSWEB_SYNC_INTERVAL_MINUTES} minutes"
    for account in Account.objects.filter(enabled=True).only("pk", "account_id", "name", "regions"):
        for region in account.regions:
            pk, status, age = runs.get((account.pk, region), (None, None, None))
            if pk is None:
                stale, reason = True, "never synced"
            elif status == SyncStatus.FAILED:
                stale, reason = True, "last sync failed"
            elif age == NEVER:
                stale, reason = status != SyncStatus.RUNNING, "no successful sync yet"
            elif age == TOO_OLD:
                stale, reason = True, too_old
            else:
                stale, reason = False, ""
            verdicts.append((account, region, pk, stale, reason))
    return verdicts


NEVER, TOO_OLD, RECENT = 0, 1, 2


def _states(verdicts):
    """SyncState objects for the given verdicts: their runs and last successes (two queries)."""
    pks = [pk for _, _, pk, *_ in verdicts if pk is not None]
    runs = SyncRun.objects.in_bulk(pks)
    successes = {
        (account_id, region): finished
        for account_id, region, finished in SyncRun.objects.filter(
            status=SyncStatus.SUCCEEDED, account_id__in={runs[pk].account_id for pk in pks},
            region__in={runs[pk].region for pk in pks},
        ).values("account_id", "region").annotate(last=Max("finished_at")).values_list("account_id", "region", "last")
    }
    return [SyncState(account, region, runs.get(pk), successes.get((account.pk, region)), stale, reason)
            for account, region, pk, stale, reason in verdicts]


def sync_states(now=None):
    """The latest sync of every configured account/region, with a staleness verdict. Four queries."""
    return _states(_sync_verdicts(now or timezone.now()))


def sync_summary(limit, now=None):
    """(up to ``limit`` states, stale ones first; how many are stale; how many in all)."""
    verdicts = _sync_verdicts(now or timezone.now())
    shown = sorted(verdicts, key=lambda verdict: not verdict[3])[:limit]
    return _states(shown), sum(1 for verdict in verdicts if verdict[3]), len(verdicts)


def recent_batches(limit=5):
    """The latest batches with their per-state counts: one small group-by over just their items
    (the ``(batch, state)`` index), not an aggregate over every item ever queued."""
    batches = list(ChangeBatch.objects.select_related("created_by")[:limit])
    counts = {}
    for row in (
        ChangeItem.objects.filter(batch__in=batches).values("batch_id", "state").annotate(n=Count("id")).order_by()
    ):
        counts.setdefault(row["batch_id"], {})[row["state"]] = row["n"]
    for batch in batches:
        by_state = counts.get(batch.pk, {})
        batch.n_total = sum(by_state.values())
        for state in ItemState.values:
            setattr(batch, f"n_{state}", by_state.get(state, 0))
    return batches


# The sync table lists this many account/regions, stale ones first (3,400 rows do not fit a page).
SYNC_ROWS_SHOWN = 20


def overview(ou="", page=1):
    """Everything the overview page shows; the heat map at scope ``ou``, its accounts' ``page``."""
    from .heatmap import scoped_heat_map

    syncs, stale, count = sync_summary(SYNC_ROWS_SHOWN)
    return {
        "totals": fleet_totals(),
        "heat_map": scoped_heat_map(ou, page),
        "hop_limits": hop_limit_distribution(),
        "defaults": defaults_summary(),
        "syncs": syncs,
        "sync_count": count,
        "stale_syncs": stale,
        "recent_batches": recent_batches(),
    }


@dataclass
class DefaultsCell:
    account: Account
    region: str
    defaults: MetadataDefaults | None

    @property
    def key(self):
        return f"{self.account.account_id}/{self.region}"

    @property
    def prowler_pass(self):
        """Prowler's ec2_instance_account_imdsv2_enabled."""
        return bool(self.defaults) and self.defaults.http_tokens == DefaultsHttpTokens.REQUIRED

    @property
    def editable(self):
        return not (self.defaults and self.defaults.policy_managed)


def defaults_matrix(keys=None, ou=None):
    """Every configured account/region with its defaults row (or None if never read). Two queries.

    ``keys`` ("account_id/region" strings) narrows it to those cells, ``ou`` to the accounts in
    that OU or under it.
    """
    from .filters import within_ou

    accounts = within_ou(Account.objects.all(), ou) if ou else Account.objects.all()
    by_account = {}
    for row in MetadataDefaults.objects.filter(account__in=accounts).order_by("region"):
        by_account.setdefault(row.account_id, {})[row.region] = row
    cells = []
    for account in accounts:
        rows = by_account.get(account.pk, {})
        for region in dict.fromkeys([*account.regions, *rows]):
            cell = DefaultsCell(account, region, rows.get(region))
            if keys is None or cell.key in keys:
                cells.append(cell)
    return cells
