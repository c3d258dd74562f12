"""One ChangeItem per selected instance, each with its state and reason decided up front by the
one rule in :mod:`fleet.changes.decision`. PostgreSQL inserts them with one INSERT ... SELECT over
that rule's query (a 100,000-instance request builds no Python object per instance,
docs/benchmarks.md P4); other databases bulk-create them from the same query's rows."""

from typing import NamedTuple

from django.db import connection
from django.db.models import F

from ..choices import ItemState
from ..models import ChangeItem
from .decision import decide

BULK_SIZE = 5000
DECIDED = ("item_instance", "item_account", "item_region", "item_previous", "item_state", "item_reason", "outcome")


class Created(NamedTuple):
    """What :func:`create_items` wrote: how many items, and the (account pk, region) pairs that
    got queued ones (they need a runner), read from the insert itself rather than by a second
    query over the batch's items."""

    count: int
    queued_regions: list


def create_items(batch, instances, desired, override_usage, now, override_owner=False, override_waivers=False,
                 pk_range=None):
    """Insert the batch's items. Returns :class:`Created`.

    ``pk_range`` (after, through): only instances with ``after < pk <= through`` (``through`` None:
    no upper bound), applied to the decision query itself so that a chunk of a large selection is
    an index range scan, not a scan of every instance (fleet.changes.expansion)."""
    decided = decide(instances, desired, override_usage=override_usage, override_owner=override_owner,
                     override_waivers=override_waivers, now=now)
    if pk_range is not None:
        after, through = pk_range
        if after is not None:
            decided = decided.filter(pk__gt=after)
        if through is not None:
            decided = decided.filter(pk__lte=through)
    decided = (
        decided.annotate(item_instance=F("pk"), item_account=F("account_id"), item_region=F("region"))
        .order_by()
        .values(*DECIDED)
    )
    if connection.vendor == "postgresql":
        return _insert_select(batch, decided, now)
    items = [
        ChangeItem(
            batch=batch,
            account_id=row["item_account"],
            region=row["item_region"],
            instance_id=row["item_instance"],
            previous=row["item_previous"],
            state=row["item_state"],
            reason=row["item_reason"],
            outcome=row["outcome"],
            finished_at=None if row["item_state"] == ItemState.QUEUED else now,
        )
        for row in decided.iterator(chunk_size=BULK_SIZE)
    ]
    ChangeItem.objects.bulk_create(items, batch_size=BULK_SIZE)
    queued = {(item.account_id, item.region) for item in items if item.state == ItemState.QUEUED}
    return Created(len(items), sorted(queued))


def _insert_select(batch, decided, now):
    selected_sql, selected_params = decided.query.sql_with_params()
    item_table = connection.ops.quote_name(ChangeItem._meta.db_table)
    sql = f"""
        WITH inserted AS (
        INSERT INTO {item_table} (batch_id, account_id, region, instance_id, desired, previous, state, reason,
                                  outcome, attempts, request_id, error_code, error_message, created_at,
                                  updated_at, finished_at, breakage_suspected)
        SELECT %s, d.item_account, d.item_region, d.item_instance, '{{}}'::jsonb, d.item_previous, d.item_state, d.item_reason,
               d.outcome, 0, '', '', '', %s, %s,
               CASE WHEN d.item_state = %s THEN NULL ELSE %s::timestamptz END, false
        FROM ({selected_sql}) AS d
        ORDER BY d.item_instance
        RETURNING account_id, region, state
        )
        SELECT account_id, region, count(*), count(*) FILTER (WHERE state = %s) FROM inserted
        GROUP BY account_id, region
    """
    params = [batch.pk, now, now, ItemState.QUEUED.value, now, *selected_params, ItemState.QUEUED.value]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return Created(sum(row[2] for row in rows), sorted((account, region) for account, region, _, queued in rows if queued))
