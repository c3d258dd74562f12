"""The overview's figures: the fleet's IMDS posture.

Instance counts come from the maintained :class:`RegionPosture` rows (one per account/region),
which :func:`refresh_region` recomputes with one GROUP BY over that account/region's instances
whenever a sync, the usage stage or the change engine has written them. The overview then reads a
few dozen rows, whatever the fleet's size. Nothing loops over accounts with a query each.

The fleet's posture is its present instances that are neither terminated nor shutting down
("counted"): Prowler's ``ec2_instance_imdsv2_enabled`` and AWS Config's ``ec2-imdsv2-check`` do not
evaluate the others, so no figure includes them and the overview shows them apart. The rules
themselves are the expressions in :mod:`fleet.models.inventory`.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    BooleanField,
    Case,
    CharField,
    Count,
    ExpressionWrapper,
    F,
    IntegerField,
    Q,
    Sum,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from .choices import (
    DefaultsHttpTokens,
    DefaultsStatus,
    HttpTokens,
    InstanceState,
    ItemState,
    ManagedBy,
    MetadataState,
    Risk,
    SyncStatus,
    Toggle,
)
from .models import (
    Account,
    ChangeBatch,
    ChangeItem,
    HopLimitCount,
    Instance,
    MetadataDefaults,
    RegionPosture,
    RegionSync,
    SyncRun,
)
from .models.inventory import (
    CONFIG_NON_COMPLIANT,
    ENFORCED,
    ENFORCED_AND_APPLIED,
    NOT_COUNTED,
    RISK,
    V1_USAGE,
    WAIVED,
)
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


# How a scope of the instance list (its ``posture`` filter) narrows the present instances.
SCOPES = {
    "counted": ~NOT_COUNTED,
    "enforced": ~NOT_COUNTED & ENFORCED,
    # Not enforced splits in two: waived (an active waiver: muted, counted apart) and the rest.
    "not_enforced": ~NOT_COUNTED & ~ENFORCED & Q(waiver__isnull=True),
    "waived": ~NOT_COUNTED & WAIVED,
    "not_counted": NOT_COUNTED,
}
# The fields whose every value the summary counts for the instance list, and their values; an
# absent (NULL) value is counted under NULL_KEY, the value django-filter's null choice sends.
NULL_KEY = "null"
FIELD_VALUES = {
    "http_tokens": HttpTokens.values,
    "http_endpoint": Toggle.values,
    "instance_metadata_tags": Toggle.values,
    "metadata_state": MetadataState.values,
    "instance_state": InstanceState.values,
}
NULLABLE_FIELDS = ("http_tokens", "http_endpoint", "instance_metadata_tags", "metadata_state")


def _value_keys():
    """(field, its values) of every field ``value_counts`` counts, NULL_KEY included where AWS
    may leave the member out."""
    for name, values in FIELD_VALUES.items():
        yield name, [*values, NULL_KEY] if name in NULLABLE_FIELDS else list(values)
    yield "v1_usage", list(V1_USAGE)
    yield "risk", Risk.values  # enforced instances have none (NULL), which the list does not filter by


def _flag(condition):
    return ExpressionWrapper(condition, output_field=BooleanField())


# One GROUP BY over the present instances of an account/region: every field the list filters by,
# and the rules as database expressions (a NULL rule result, from an absent member, is False).
GROUP_FIELDS = (*FIELD_VALUES, "hop_limit")
GROUP_FLAGS = {
    "not_counted": NOT_COUNTED,
    "enforced": ENFORCED,
    "enforced_applied": ENFORCED_AND_APPLIED,
    "config_non_compliant": CONFIG_NON_COMPLIANT,
    "has_waiver": Q(waiver__isnull=False),  # counted as waived only when not enforced (inventory.WAIVED)
}


def _groups(instances):
    v1_usage = Case(*(When(q, then=Value(key)) for key, q in V1_USAGE.items()), output_field=CharField())
    annotations = {name: _flag(q) for name, q in GROUP_FLAGS.items()} | {"v1_usage": v1_usage, "risk": RISK}
    return instances.annotate(**annotations).values(*GROUP_FIELDS, *annotations).annotate(n=Count("id")).order_by()


def summarise(groups):
    """Every RegionPosture counter and ``value_counts`` from the groups (no query): the headline
    counters are cells of ``value_counts`` where one field decides, and sums over the rule flags."""
    value_counts = {"counted": {}, "not_counted": {}}
    counts = dict.fromkeys(COUNTERS, 0)
    for group in groups:
        n, counted = group["n"], not group["not_counted"]
        cells = value_counts["counted" if counted else "not_counted"]
        for name in (*GROUP_FIELDS, "v1_usage", "risk"):
            key = NULL_KEY if group[name] is None else str(group[name])
            cells.setdefault(name, {}).setdefault(key, 0)
            cells[name][key] += n
        if counted:
            counts["total"] += n
            counts["enforced"] += n * bool(group["enforced"])
            counts["enforced_applied"] += n * bool(group["enforced_applied"])
            counts["tokens_optional"] += n * bool(group["config_non_compliant"])
            if not group["enforced"]:
                counter = "waived" if group["has_waiver"] else NOT_ENFORCED_BY_USAGE[group["v1_usage"]]
                counts[counter] += n

    def cell(group, name, value):
        return value_counts[group].get(name, {}).get(str(value), 0)

    counted_hops = value_counts["counted"].get("hop_limit", {})
    counts |= {
        "tokens_required": cell("counted", "http_tokens", HttpTokens.REQUIRED),
        "pending": cell("counted", "metadata_state", MetadataState.PENDING),
        "endpoint_disabled": cell("counted", "http_endpoint", Toggle.DISABLED),
        "tags_enabled": cell("counted", "instance_metadata_tags", Toggle.ENABLED),
        "stopped": cell("counted", "instance_state", InstanceState.STOPPED),
        "hop_limit_over_1": sum(n for key, n in counted_hops.items() if key != NULL_KEY and int(key) > 1),
        "v1_in_use": cell("counted", "v1_usage", "yes"),
        "risk_role_public": cell("counted", "risk", Risk.ROLE_PUBLIC),
        "v1_measured": counts["total"] - cell("counted", "v1_usage", "unknown"),
        "terminated": cell("not_counted", "instance_state", InstanceState.TERMINATED),
        "shutting_down": cell("not_counted", "instance_state", InstanceState.SHUTTING_DOWN),
    }
    hops = {("none" if key == NULL_KEY else key): n for key, n in counted_hops.items()}
    return counts, hops, value_counts


NOT_ENFORCED_BY_USAGE = {"no": "safe_to_enforce", "yes": "not_enforced_in_use", "unknown": "not_enforced_unmeasured"}


def refresh_region(account_pk, region):
    """Recompute one account/region's summary: one GROUP BY over its present instances."""
    instances = Instance.objects.present().filter(account_id=account_pk, region=region)
    counts, hops, value_counts = summarise(_groups(instances))
    # One transaction: update_or_create's row lock then serialises two refreshes of one
    # account/region until their hop-limit rows are replaced.
    with transaction.atomic():
        row, _ = RegionPosture.objects.update_or_create(
            account_id=account_pk, region=region,
            defaults={**counts, "hop_limits": hops, "value_counts": value_counts, "refreshed_at": timezone.now()},
        )
        HopLimitCount.objects.filter(posture=row).delete()
        HopLimitCount.objects.bulk_create(HopLimitCount(posture=row, hop_limit=None if key == "none" else int(key), n=n)
                                          for key, n in hops.items() if n)
    from . import teams  # posture by team (it imports this module's percent)

    teams.refresh_region(account_pk, region)


def refresh_all():
    """Recompute every summary row (the periodic safety net, and after bulk loads)."""
    pairs = set(Instance.objects.values_list("account_id", "region").distinct().order_by())
    pairs |= set(RegionPosture.objects.values_list("account_id", "region"))
    for account_pk, region in sorted(pairs):
        refresh_region(account_pk, region)
    return len(pairs)


def fleet_totals():
    """Counts over the counted instances (and the not counted apart), summed from the summary rows
    by the database (one query: at 3,400 account/regions, reading every row cost more than the
    page's budget)."""
    sums = RegionPosture.objects.aggregate(**{key: Sum(key) for key in COUNTERS})
    totals = {key: sums[key] or 0 for key in COUNTERS}
    totals["not_enforced"] = NOT_ENFORCED.of(totals)
    totals["not_counted"] = totals["terminated"] + totals["shutting_down"]
    totals["config_compliant"] = totals["total"] - totals["tokens_optional"]
    totals["config_compliant_pct"] = percent(totals["config_compliant"], totals["total"])
    totals["config_compliant_level"] = posture_level(totals["config_compliant_pct"])
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
    """Account x region counts of counted instances, from the summary rows (one query)."""
    rows = (
        RegionPosture.objects.filter(total__gt=0)
        .values("account__account_id", "account__name", "region", "total", "enforced", "enforced_applied",
                "terminated", "shutting_down")
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
            "not_counted": row["terminated"] + row["shutting_down"],
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


def hop_limit_distribution():
    """[(hop_limit or None, count)] over counted instances, summed by the database (one query)."""
    sums = HopLimitCount.objects.values("hop_limit").annotate(total=Sum("n")).order_by().values_list("hop_limit", "total")
    return sorted(((hop, n) for hop, n in sums if n), key=lambda pair: (pair[0] is None, pair[0] or 0))


# Filter combinations besides account and region whose count is a headline counter: each tile of
# the overview links to one of these (or to a single field value below), so the list it opens
# shows the tile's exact number at any size.
class Columns:
    """A counter that is a sum of a summary row's columns (``-name`` subtracts): called on a row,
    or summed by the database over many (``expression``)."""

    def __init__(self, *names):
        self.names = names

    def __call__(self, row):
        return self.of({n.lstrip("-"): getattr(row, n.lstrip("-")) for n in self.names})

    def of(self, sums):
        """The same sum over a mapping of the columns' totals (``{"total": 12, ...}``)."""
        return sum(-sums[n[1:]] if n.startswith("-") else sums[n] for n in self.names)

    @property
    def expression(self):
        terms = [F(n[1:]) * -1 if n.startswith("-") else F(n) for n in self.names]
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return total


# Neither enforced nor waived: what still needs fixing (waived instances are counted apart).
NOT_ENFORCED = Columns("total", "-enforced", "-waived")

COMBINED_COUNTS = {
    frozenset({("posture", "counted")}): Columns("total"),
    frozenset({("posture", "not_counted")}): Columns("terminated", "shutting_down"),
    frozenset({("posture", "enforced")}): Columns("enforced"),
    frozenset({("posture", "not_enforced")}): NOT_ENFORCED,
    frozenset({("posture", "waived")}): Columns("waived"),
    frozenset({("posture", "enforced"), ("metadata_state", MetadataState.APPLIED)}): Columns("enforced_applied"),
    frozenset({("posture", "not_enforced"), ("v1_usage", "no")}): Columns("safe_to_enforce"),
    frozenset({("posture", "not_enforced"), ("v1_usage", "yes")}): Columns("not_enforced_in_use"),
    frozenset({("posture", "not_enforced"), ("v1_usage", "unknown")}): Columns("not_enforced_unmeasured"),
    frozenset({("posture", "counted"), ("hop_limit_min", "2")}): Columns("hop_limit_over_1"),
}
# The groups of ``value_counts`` a ``posture`` scope (or none) covers.
SCOPE_GROUPS = {None: ("counted", "not_counted"), "counted": ("counted",), "not_counted": ("not_counted",)}


def summary_counter(filters):
    """How a summary row counts the present instances matching ``filters`` ({name: value}, besides
    account and region), or None when it cannot: a headline combination, else at most one field
    value in a ``posture`` scope of counted, not counted, or both."""
    filters = {name: str(value) for name, value in filters.items()}
    combined = COMBINED_COUNTS.get(frozenset(filters.items()))
    if combined is not None:
        return combined
    groups = SCOPE_GROUPS.get(filters.pop("posture", None))
    if groups is None or len(filters) > 1:
        return None
    if not filters:
        return Columns(*(("total",) if "counted" in groups else ()),
                       *(("terminated", "shutting_down") if "not_counted" in groups else ()))
    ((name, value),) = filters.items()
    if name != "hop_limit" and value not in dict(_value_keys()).get(name, ()):
        return None

    return FieldValue(groups, name, value)


class FieldValue:
    """A counter that is one field value's cell of ``value_counts`` in some groups: called on a
    row, or summed by PostgreSQL over many (``aggregates``)."""

    def __init__(self, groups, name, value):
        self.groups, self.name, self.value = groups, name, value

    def __call__(self, row):
        # A row from before value_counts (or this field) existed, until its next refresh: every
        # counted group adds a cell to every field, so a field missing there was never counted.
        if row.total and self.name not in row.value_counts.get("counted", {}):
            raise NotSummarised
        return sum(row.value_counts.get(group, {}).get(self.name, {}).get(self.value, 0) for group in self.groups)

    def aggregates(self):
        """{n: the sum, unsummarised: rows that cannot tell}, for ``aggregate``."""
        cells = [
            Coalesce(Cast(KeyTextTransform(self.value, KeyTransform(self.name, KeyTransform(group, "value_counts"))),
                          IntegerField()), 0)
            for group in self.groups
        ]
        total = cells[0]
        for cell in cells[1:]:
            total = total + cell
        unsummarised = Q(total__gt=0) & (Q(value_counts__counted__isnull=True)
                                         | ~Q(value_counts__counted__has_key=self.name))
        return {"n": Coalesce(Sum(total), 0), "unsummarised": Count("pk", filter=unsummarised)}


class NotSummarised(Exception):
    """A summary row cannot answer (yet): the caller counts another way."""


def summary_filters(hop_limits=(1, 2)):
    """Every filter combination besides account and region whose count the summary knows (the
    tests walk them all against counting the rows)."""
    yield from (dict(key) for key in COMBINED_COUNTS)
    for scope in SCOPE_GROUPS:
        for name, values in [*_value_keys(), ("hop_limit", hop_limits)]:
            for value in values:
                yield {**({"posture": scope} if scope else {}), name: value}


def present_count(account_pks=None, regions=None, counter=None):
    """How many present instances match, from the summary rows: account and region, and the rest
    through ``counter`` (from :func:`summary_counter`; all present instances without one). None
    when a row cannot tell yet."""
    rows = RegionPosture.objects.order_by()
    if account_pks:
        rows = rows.filter(account_id__in=account_pks)
    if regions:
        rows = rows.filter(region__in=regions)
    counter = counter or summary_counter({})
    if isinstance(counter, Columns):  # summed by the database: one row back, at any size
        return rows.aggregate(n=Coalesce(Sum(counter.expression), 0))["n"]
    if isinstance(counter, FieldValue) and connection.vendor == "postgresql":
        sums = rows.aggregate(**counter.aggregates())
        return None if sums["unsummarised"] else sums["n"]
    try:
        return sum(counter(row) for row in rows.only(*COUNTERS, "value_counts"))
    except NotSummarised:
        return None


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


# The staleness verdict of a configured account/region, decided once by the database (one CASE
# over the configured account/regions joined to their RegionSync row and its run); each code's
# (stale, reason) is below. Configured means an enabled account and a region in its list.
FRESH, NEVER_SYNCED, LAST_FAILED, NO_SUCCESS_YET, FIRST_RUNNING, TOO_OLD = range(6)
STALE_CODES = (NEVER_SYNCED, LAST_FAILED, NO_SUCCESS_YET, TOO_OLD)


def _verdict_texts():
    minutes = 2 * settings.IMDSWEB_SYNC_INTERVAL_MINUTES
    return {FRESH: "", NEVER_SYNCED: "never synced", LAST_FAILED: "last sync failed",
            NO_SUCCESS_YET: "no successful sync yet", FIRST_RUNNING: "no successful sync yet",
            TOO_OLD: f"no successful sync for over {minutes} minutes"}


def _configured_sql(now):
    """(SQL, parameters) of every configured account/region with its verdict code."""
    max_age = timedelta(minutes=2 * settings.IMDSWEB_SYNC_INTERVAL_MINUTES)
    q = connection.ops.quote_name
    account, region_sync = q(Account._meta.db_table), q(RegionSync._meta.db_table)
    if connection.vendor == "postgresql":
        regions = "jsonb_array_elements_text(a.regions) WITH ORDINALITY AS r(region, n)"
    else:
        regions = "json_each(a.regions) AS r"  # SQLite: value, key (the position)
    region, position = ("r.region", "r.n") if connection.vendor == "postgresql" else ("r.value", "r.key")
    since = connection.ops.adapt_datetimefield_value(now - max_age)
    return [SyncStatus.FAILED, SyncStatus.RUNNING, since, True], f"""
        SELECT a.id AS account_pk, {region} AS region, {position} AS position, a.name AS name,
               a.account_id AS account_id, s.last_run_id AS last_run_id, s.last_success_at AS last_success_at,
               CASE WHEN s.last_run_id IS NULL THEN {NEVER_SYNCED}
                    WHEN s.last_status = %s THEN {LAST_FAILED}
                    WHEN s.last_success_at IS NULL AND s.last_status = %s THEN {FIRST_RUNNING}
                    WHEN s.last_success_at IS NULL THEN {NO_SUCCESS_YET}
                    WHEN s.last_success_at < %s THEN {TOO_OLD}
                    ELSE {FRESH} END AS code
        FROM {account} a CROSS JOIN {regions}
        LEFT JOIN {region_sync} s ON s.account_id = a.id AND s.region = {region}
        WHERE a.enabled = %s"""


def _configured(now, select, tail="", extra=()):
    """``SELECT select FROM`` the configured rows ``tail``; ``extra``: the tail's parameters."""
    params, sql = _configured_sql(now)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {select} FROM ({sql}) AS configured {tail}", [*params, *extra])
        columns = [column[0] for column in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _states(rows):
    """SyncState objects for the given configured rows: their accounts and runs (two queries)."""
    accounts = Account.objects.in_bulk({row["account_pk"] for row in rows})
    runs = SyncRun.objects.in_bulk([row["last_run_id"] for row in rows if row["last_run_id"]])
    texts = _verdict_texts()
    states = []
    for row in rows:
        last_success = row["last_success_at"]
        if isinstance(last_success, str):  # SQLite hands a raw column back as text
            last_success = datetime.fromisoformat(last_success)
        if last_success is not None and timezone.is_naive(last_success):
            last_success = timezone.make_aware(last_success, UTC)
        states.append(SyncState(accounts[row["account_pk"]], row["region"], runs.get(row["last_run_id"]),
                                last_success, row["code"] in STALE_CODES, texts[row["code"]]))
    return states


ORDER = "ORDER BY name, account_id, position"


def sync_states(now=None):
    """The latest sync of every configured account/region, with a staleness verdict. Three queries."""
    return _states(_configured(now or timezone.now(), "*", ORDER))


def sync_summary(limit, now=None):
    """(up to ``limit`` states, stale ones first; how many are stale; how many in all). Four
    queries, the verdicts counted and ordered by the database whatever the number of account/regions."""
    now = now or timezone.now()
    is_stale = f"CASE WHEN code IN ({', '.join(str(code) for code in STALE_CODES)}) THEN 1 ELSE 0 END"
    rows = _configured(now, "*", f"ORDER BY {is_stale} DESC, {ORDER.removeprefix('ORDER BY ')} LIMIT %s", (limit,))
    (counts,) = _configured(now, f"COUNT(*) AS n, SUM({is_stale}) AS stale")
    return _states(rows), counts["stale"] or 0, counts["n"]


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
    that OU or under it. Grouped by OU: the accounts of one OU together (those under the root, or
    registered by hand, first), by name within it.
    """
    from .filters import within_ou

    accounts = within_ou(Account.objects.all(), ou) if ou else Account.objects.all()
    accounts = accounts.order_by("ou_path", "name", "account_id")
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
