"""One ChangeItem per selected instance, each with its state decided up front: queued, or skipped
or held with the reason. PostgreSQL decides in one INSERT ... SELECT; SQLite in Python, by the
same rules in the same order and words."""

from django.conf import settings
from django.db import connection

from ..choices import HttpTokens, InstanceState, ItemState
from ..models import ChangeItem, Instance

BULK_SIZE = 5000


def _skip_reason(row, desired, busy_batches, override_usage):
    if row["gone_at"] is not None:
        return ItemState.SKIPPED, "instance no longer exists in AWS"
    if row["instance_state"] in (InstanceState.TERMINATED, InstanceState.SHUTTING_DOWN):
        return ItemState.SKIPPED, f"instance is {row['instance_state']}"
    if all(row[name] == value for name, value in desired.items()):
        return ItemState.SKIPPED, "already " + ", ".join(f"{name}={value}" for name, value in desired.items())
    if row["pk"] in busy_batches:
        return ItemState.SKIPPED, f"another change is in progress (batch #{busy_batches[row['pk']]})"
    if (
        not override_usage
        and desired.get("http_tokens") == HttpTokens.REQUIRED
        and row["v1_calls"]
        and row["v1_calls"] > 0
    ):
        return ItemState.HELD, (
            f"{row['v1_calls']} IMDSv1 call(s) in the last {settings.IMDSWEB_USAGE_WINDOW_DAYS} days; "
            "enforcing IMDSv2 would break the caller"
        )
    return ItemState.QUEUED, ""


def create_items_python(batch, instances, desired, override_usage, now):
    fields = ["pk", "account_id", "region", "gone_at", "instance_state", "v1_calls", *desired]
    rows = list(instances.order_by().values(*fields))
    busy_batches = dict(
        ChangeItem.objects.filter(state__in=ItemState.active(), instance__in=instances.values("pk"))
        .values_list("instance_id", "batch_id")
        .iterator()
    )
    items = []
    for row in rows:
        state, reason = _skip_reason(row, desired, busy_batches, override_usage)
        items.append(
            ChangeItem(
                batch=batch,
                account_id=row["account_id"],
                region=row["region"],
                instance_id=row["pk"],
                previous={name: row[name] for name in desired},
                state=state,
                reason=reason,
                finished_at=None if state == ItemState.QUEUED else now,
            )
        )
    ChangeItem.objects.bulk_create(items, batch_size=BULK_SIZE)
    return len(items)


def create_items_postgresql(batch, instances, desired, override_usage, now):
    """The same rules as ``_skip_reason``, decided by the database in one INSERT ... SELECT: a
    100,000-instance request builds no Python object per instance (docs/benchmarks.md, P4)."""
    quote = connection.ops.quote_name
    instance_table, item_table = quote(Instance._meta.db_table), quote(ChangeItem._meta.db_table)

    def col(name):
        return "i." + quote(Instance._meta.get_field(name).column)

    held = not override_usage and desired.get("http_tokens") == HttpTokens.REQUIRED
    days = settings.IMDSWEB_USAGE_WINDOW_DAYS
    # (condition, its params, state, reason SQL, its params), tried in order like _skip_reason.
    rules = [
        (f"{col('gone_at')} IS NOT NULL", [], ItemState.SKIPPED, "%s", ["instance no longer exists in AWS"]),
        (f"{col('instance_state')} = ANY(%s)", [[InstanceState.TERMINATED.value, InstanceState.SHUTTING_DOWN.value]],
         ItemState.SKIPPED, f"'instance is ' || {col('instance_state')}", []),
        (" AND ".join(f"{col(name)} = %s" for name in desired), list(desired.values()), ItemState.SKIPPED, "%s",
         ["already " + ", ".join(f"{name}={value}" for name, value in desired.items())]),
        ("busy.id IS NOT NULL", [], ItemState.SKIPPED,
         "'another change is in progress (batch #' || busy.batch_id || ')'", []),
        (f"%s AND {col('v1_calls')} > 0", [held], ItemState.HELD, f"{col('v1_calls')}::text || %s",
         [f" IMDSv1 call(s) in the last {days} days; enforcing IMDSv2 would break the caller"]),
    ]
    state_sql = "CASE " + " ".join(f"WHEN {condition} THEN %s" for condition, *_ in rules) + " ELSE %s END"
    state_params = [p for condition, params, state, *_ in rules for p in (*params, state.value)]
    state_params.append(ItemState.QUEUED.value)
    reason_sql = "CASE " + " ".join(f"WHEN {condition} THEN {reason}" for condition, _, _, reason, _ in rules)
    reason_sql += " ELSE '' END"
    reason_params = [p for _, params, _, _, reason_params in rules for p in (*params, *reason_params)]
    previous_sql = ", ".join(f"%s, {col(name)}" for name in desired)
    selected_sql, selected_params = instances.order_by().values("pk").query.sql_with_params()
    sql = f"""
        INSERT INTO {item_table} (batch_id, account_id, region, instance_id, desired, previous, state, reason,
                                  attempts, request_id, error_code, error_message, created_at, updated_at,
                                  finished_at, breakage_suspected)
        SELECT %s, account_id, region, id, '{{}}'::jsonb, previous, state, reason, 0, '', '', '', %s, %s,
               CASE WHEN state = %s THEN NULL ELSE %s::timestamptz END, false
        FROM (
            SELECT i.id, {col("account")} AS account_id, {col("region")} AS region,
                   jsonb_build_object({previous_sql}) AS previous, {state_sql} AS state, {reason_sql} AS reason
            FROM {instance_table} i
            LEFT JOIN {item_table} busy ON busy.instance_id = i.id AND busy.state = ANY(%s)
            WHERE i.id IN ({selected_sql})
        ) AS decided
        ORDER BY id
    """
    params = [
        batch.pk, now, now, ItemState.QUEUED.value, now,
        *desired, *state_params, *reason_params,
        [state.value for state in ItemState.active()],
        *selected_params,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount
