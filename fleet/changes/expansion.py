"""Expanding a large selection into ChangeItems in a worker, in chunks, with the batch visible at once.

A request for more than ``INLINE_MAX`` instances writes only its batch: the selection's query
(SQL and parameters of the selected ids), how many instances it held, and an empty
keyset cursor; the web request stays at a constant, small number of queries whatever the
selection (docs/benchmarks.md P4b). A worker (``fleet.tasks.expand_batch``) then writes the items
``CHUNK`` instances at a time, in instance-id order: each chunk is one transaction that locks the
batch row, inserts the chunk's items through the one decision rule (:func:`.items.create_items`,
one INSERT ... SELECT on PostgreSQL, which also answers which account/regions got queued items)
and moves the cursor. Every chunk's account/regions get a runner as soon as it commits, so AWS
calls start while later chunks are still being written.

What a chunk costs on PostgreSQL, and why it is shaped so (docs/benchmarks.md P4b): the id range
is applied inside the stored selection too (:func:`selected`), so each chunk reads only its own
range of the instance table; the decision is evaluated in the INSERT's SELECT (no row comes back
to Python); the items' instance reference has no database constraint (migration 0023: checking
it cost a tenth of each chunk at COMMIT); the chunk's sort stays in memory; and its commit does
not wait for the WAL flush, which is safe because the cursor commits in the same transaction.
SQLite runs the same loop; its chunk bulk-creates the rule's rows.

Nothing is lost when a worker dies mid-way: the chunk in flight rolls back, the cursor still
names the last chunk that committed, and the sweeper hands any batch still ``expanding`` whose
expander's guard has expired to a new worker, which goes on after the cursor. The batch row lock
makes two expanders (a slow one and the sweeper's) take turns rather than write a chunk twice.

The guarantees of the inline path hold chunk by chunk: an instance with an active item in another
batch becomes a ``busy`` skip (the decision rule sees it), and a chunk that loses a race on
``one_active_item_per_instance`` is decided again, when the rule sees the winner.

Why a threshold: up to ``INLINE_MAX`` instances the inline INSERT ... SELECT takes well under a
second (0.34 s for 10,000 in P4), and the request can still refuse with the reason ("Nothing to
queue: ...", "already in progress in batch #n") instead of creating a batch that queues nothing.
Above it the refusal is not known without deciding every instance, so a large batch that queues
nothing says so on its page (all its items skipped or held) instead.

A staged, scheduled or approval-gated request (fleet.changes.rollout) is always expanded
inline: its waves and approval are decided on its items before any of them may be claimed.

Hand-written: the chunks are a keyset loop over the project's own decision query, resumable
from a cursor on the batch row; no library does that for a Django queryset.
"""

import datetime
import decimal
import logging
import uuid

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.db.models.expressions import RawSQL
from django.utils import timezone

from ..models import ChangeBatch, ChangeItem, Instance
from .items import create_items

log = logging.getLogger(__name__)

# Above this many selected instances the request leaves the items to a worker.
INLINE_MAX = 10_000
# Instances per chunk (None: IMDSWEB_EXPANSION_CHUNK, 20,000): a chunk's INSERT ... SELECT takes
# about a second and its transaction holds the batch row only that long.
CHUNK = None
# The expander's guard in the cache: renewed by every chunk; once expired the sweeper resumes.
GUARD_TTL = 60


# The selection's one column, named so that a chunk can restrict it to an id range.
SELECTED_ID = "selected_id"


class UnsupportedParameter(TypeError):
    """A selection parameter this module cannot store as JSON: the caller expands inline."""


def _encode(value):
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, list | tuple):
        return {"$list": [_encode(item) for item in value]}
    raise UnsupportedParameter(type(value).__name__)


def _decode(value):
    if not isinstance(value, dict):
        return value
    (tag, raw), = value.items()
    return {
        "$datetime": datetime.datetime.fromisoformat,
        "$date": datetime.date.fromisoformat,
        "$decimal": decimal.Decimal,
        "$uuid": uuid.UUID,
        "$list": lambda items: [_decode(item) for item in items],
    }[tag](raw)


def selection_query(instances):
    """The selection as JSON the worker can run again, or None when it cannot be stored."""
    sql, params = instances.order_by().annotate(**{SELECTED_ID: F("pk")}).values(SELECTED_ID).query.sql_with_params()
    try:
        return {"sql": sql, "params": [_encode(param) for param in params]}
    except UnsupportedParameter as exc:
        log.info("selection parameter of type %s cannot be stored; expanding inline", exc)
        return None


def selected(batch, after=None, through=None):
    """The batch's selection, as a queryset of instances; ``after < pk <= through`` when given.

    The id range is written inside the stored selection's subquery, not only on the outer query:
    PostgreSQL carries an equality across ``pk IN (...)`` but not a range, so without it every
    chunk scanned the whole selection (a sequential scan of a million instances) to join a range
    of 20,000 against it."""
    query = batch.selection_query
    sql, params = query["sql"], [_decode(param) for param in query["params"]]
    bounds = [(op, value) for op, value in ((">", after), ("<=", through)) if value is not None]
    # A selection stored before its column was named is only filtered outside (slower, as correct).
    named = f'AS "{SELECTED_ID}"' in sql
    if bounds and named:
        where = " AND ".join(f'selection."{SELECTED_ID}" {op} %s' for op, _ in bounds)
        sql = f'SELECT selection."{SELECTED_ID}" FROM ({sql}) AS selection WHERE {where}'
        params += [value for _, value in bounds]
    instances = Instance.objects.filter(pk__in=RawSQL(sql, params))
    if not named:
        instances = instances.filter(**{f"pk__{'gt' if op == '>' else 'lte'}": value for op, value in bounds})
    return instances


def _guard_key(batch_pk):
    return f"imdsweb:expanding:{batch_pk}"


def claim(batch_pk):
    """Take the batch's expander guard: True when the caller should expand it."""
    return cache.add(_guard_key(batch_pk), 1, GUARD_TTL)


def release(batch_pk):
    cache.delete(_guard_key(batch_pk))


def stalled():
    """Batches still expanding whose expander is gone (its guard expired): the sweeper resumes them."""
    return [pk for pk in ChangeBatch.objects.filter(expanding=True).values_list("pk", flat=True)
            if cache.get(_guard_key(pk)) is None]


def _insert_chunk(batch, chunk, pk_range, now):
    """The chunk's items (:class:`.items.Created`); decided again once if it lost a race on one
    active item per instance."""
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                return create_items(batch, chunk, batch.desired, batch.override_usage, now, batch.override_owner,
                                    override_waivers=batch.override_waivers, pk_range=pk_range)
        except IntegrityError:
            if attempt == 2:
                raise
            log.info("batch %s: a chunk raced another request; deciding it again", batch.pk)
    return None  # not reached


def _upper_bound(batch, after, size):
    """The id of the chunk's last instance: the ``size``-th selected id after ``after`` (one
    index range scan), None when fewer are left (the chunk is the last one)."""
    return selected(batch, after=after).order_by("pk").values_list("pk", flat=True)[size - 1:size].first()


def expand_chunk(batch_pk, size=None):
    """Write the next chunk of a batch's items. Returns the (account pk, region) pairs that got
    queued items (they need a runner), or None once the batch is fully expanded (or cancelled)."""
    size = size or CHUNK or settings.IMDSWEB_EXPANSION_CHUNK
    with transaction.atomic():
        batch = ChangeBatch.objects.select_for_update().filter(pk=batch_pk, expanding=True).first()
        if batch is None:
            return None
        after = batch.expanded_through
        bound = _upper_bound(batch, after, size)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # A chunk is a short indexed range: compiling it (JIT) costs more than it saves.
                cursor.execute("SET LOCAL jit = off")
                # The chunk's rows are sorted by instance id for the insert: in memory, not on disk.
                cursor.execute("SET LOCAL work_mem = '64MB'")
                # The chunk and the cursor that names it commit together, so a crash that loses
                # the last chunks' commits loses their cursor too: the sweeper writes them again.
                # Not waiting for the WAL flush saves a disk sync per chunk.
                cursor.execute("SET LOCAL synchronous_commit = off")
        created = _insert_chunk(batch, selected(batch, after, bound), (after, bound), timezone.now())
        ChangeBatch.objects.filter(pk=batch.pk).update(
            expanded=batch.expanded + created.count,
            expanded_through=bound if bound is not None else after,
            expanding=bound is not None,
        )
        _dispatch_on_commit(created.queued_regions)
    return created.queued_regions


def _dispatch_on_commit(regions):
    def dispatch():
        from ..tasks import apply_region

        for account_pk, region in regions:
            try:
                apply_region.delay(account_pk, region)
            except Exception as exc:  # broker down: the sweeper gives queued regions a runner
                log.warning("could not start a runner for %s/%s (%s); the sweeper will", account_pk, region, exc)

    if regions:
        transaction.on_commit(dispatch)


def _analyze_items():
    """Refresh the item table's statistics once the first chunk is in. Without it the planner
    still believes the new batch has no items (autovacuum analyses a minute or more later) and
    plans the batch page's first page of items by joining every item written so far before
    taking 50: seconds per poll at a million items, while the page should show progress."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {ChangeItem._meta.db_table}")


def expand(batch_pk, size=None, chunks=None):
    """Expand a batch chunk by chunk until done (or ``chunks`` chunks). Returns the chunks written;
    None when another expander holds the batch."""
    if not claim(batch_pk):
        return None
    written = 0
    try:
        while chunks is None or written < chunks:
            if expand_chunk(batch_pk, size) is None:
                break
            written += 1
            if written == 1:
                _analyze_items()
            cache.touch(_guard_key(batch_pk), GUARD_TTL)
    finally:
        release(batch_pk)
    return written
