"""Keyset ("seek") pagination and bounded counts, for lists too long for OFFSET and COUNT(*).

Django's Paginator (and so django-tables2's) pages with OFFSET, which reads and throws away every
row before the page: page 9,899 of a million instances took 1.8 s. Here a page starts after (or
ends before) a given row, and the database seeks to it with one row-value comparison,
``(k1, k2, id) > (v1, v2, v3)``, which a B-tree index on the same keys answers directly at any
depth. django-cursor-pagination expands that comparison into ORs so that it can handle NULLs, and
PostgreSQL cannot seek an index with the ORs; so here keys are never NULL (a nullable column sorts
through ``Coalesce``) and all go in one direction, the last one unique.

A cursor is the primary key of the row a page starts after or ends before: nothing to decode or
sign, and a row that has gone since makes a stale link, which shows the first page and says so.
"""

from dataclasses import dataclass

from django.db.models import BooleanField, F, Func, Subquery, Value
from django_tables2.data import TableListData


class _Row(Func):
    template = "(%(expressions)s)"


class _RowCompare(Func):
    """``(lhs, ...) <op> (rhs, ...)``: a condition ``QuerySet.filter()`` takes."""

    template = "%(expressions)s"
    output_field = BooleanField()

    def __init__(self, lhs, op, rhs):
        super().__init__(_Row(*lhs), _Row(*rhs))
        self.arg_joiner = f" {op} "


@dataclass(frozen=True)
class Ordering:
    """Keys (field names or expressions), all ascending or all descending, the last one unique."""

    keys: tuple
    descending: bool = False

    def reversed(self):
        return Ordering(self.keys, not self.descending)


@dataclass
class KeysetPage:
    rows: list
    has_previous: bool
    has_next: bool
    # The cursor named a row that no longer exists: this is the first page instead.
    stale_cursor: bool = False

    @property
    def first_pk(self):
        return self.rows[0].pk if self.rows else None

    @property
    def last_pk(self):
        return self.rows[-1].pk if self.rows else None


def parse_cursor(value):
    """A cursor from the query string: a positive integer, else None (and the caller says so)."""
    if value is None or value == "":
        return None
    return int(value) if value.isdigit() and len(value) < 19 else False


def _aliases(ordering):
    return {f"_key{i}": F(key) if isinstance(key, str) else key for i, key in enumerate(ordering.keys)}


def ordered(queryset, ordering):
    aliases = _aliases(ordering)
    order = [F(name).desc() if ordering.descending else F(name).asc() for name in aliases]
    return queryset.alias(**aliases).order_by(*order), list(aliases)


def _position(queryset, ordering, pk):
    """The key values of row ``pk`` (in the whole table: the row may be outside the filter)."""
    aliases = _aliases(ordering)
    return queryset.model._default_manager.filter(pk=pk).annotate(**aliases).values_list(*aliases).first()


def _beyond(queryset, ordering, position):
    """Rows that come after ``position`` in ``ordering``."""
    rows, names = ordered(queryset, ordering)
    if position is None:
        return rows
    op = "<" if ordering.descending else ">"
    return rows.filter(_RowCompare([F(name) for name in names], op, [Value(v) for v in position]))


def page(queryset, ordering, per_page, after=None, before=None, last=False, last_rows=None):
    """One page of ``queryset`` in ``ordering``: after row ``after``, else before row ``before``,
    else the last page if ``last`` (its last ``last_rows`` rows: what a known count leaves for the
    last page, so that numbered pages counted back from it line up with those from the first),
    else the first. One query, plus one to find a cursor's row."""
    if last and not (after or before) and last_rows:
        rows = list(_beyond(queryset, ordering.reversed(), None)[: last_rows + 1])
        return KeysetPage(rows[:last_rows][::-1], has_previous=len(rows) > last_rows, has_next=False)
    before = None if after else before
    cursor = after or before
    position = _position(queryset, ordering, cursor) if cursor else None
    if cursor and position is None:
        first = page(queryset, ordering, per_page)
        first.stale_cursor = True
        return first
    if before or (last and not cursor):
        rows = list(_beyond(queryset, ordering.reversed(), position)[: per_page + 1])
        more = len(rows) > per_page
        rows = rows[:per_page][::-1]
        if before and len(rows) < per_page:
            return page(queryset, ordering, per_page)  # fewer than a page before it: the first page
        return KeysetPage(rows, has_previous=more, has_next=bool(before))
    rows = list(_beyond(queryset, ordering, position)[: per_page + 1])
    return KeysetPage(rows[:per_page], has_previous=bool(after), has_next=len(rows) > per_page)


def numbered_page(queryset, ordering, per_page, number):
    """Page ``number`` (from 1) by OFFSET: only for the first few pages (fleet.views.instances
    offers numbers up to MAX_NUMBERED_PAGE), where the rows skipped are a short index walk."""
    rows, _ = ordered(queryset, ordering)
    start = (number - 1) * per_page
    rows = list(rows[start:start + per_page + 1])
    return KeysetPage(rows[:per_page], has_previous=number > 1, has_next=len(rows) > per_page)


def row_beyond(queryset, ordering, pk, rows):
    """The primary key of the row ``rows`` rows after row ``pk`` in ``ordering`` (pass
    ``ordering.reversed()`` for before it), or None: the cursor of a page a page away from the one
    on screen, for the pager's page numbers. One query (the cursor's keys are subqueries); the rows
    skipped are at most a page of an index."""
    aliases = _aliases(ordering)
    keys = queryset.model._default_manager.filter(pk=pk).annotate(**aliases)
    position = [Subquery(keys.values(name)[:1]) for name in aliases]
    beyond, names = ordered(queryset, ordering)
    op = "<" if ordering.descending else ">"
    beyond = beyond.filter(_RowCompare([F(name) for name in names], op, position))
    found = list(beyond.values_list("pk", flat=True)[rows - 1:rows])
    return found[0] if found else None


def page_window(current, count, first_numbered, around=2):
    """The page numbers a pager shows, in order, with None for a gap ("…"): every page when there
    are at most ``first_numbered``, else the first, the ``around`` pages either side of
    ``current`` and the last (the first ``first_numbered`` when ``current`` is not known)."""
    if count <= first_numbered:
        return list(range(1, count + 1))
    if current is None:
        shown = {*range(1, first_numbered + 1), count}
    else:
        shown = {1, count, *range(max(current - around, 1), min(current + around, count) + 1)}
    window, previous = [], 0
    for number in sorted(shown):
        if number > previous + 1:
            window.append(None)
        window.append(number)
        previous = number
    return window


def bounded_count(queryset, bound):
    """COUNT(*) that stops at ``bound`` rows: exact below it, ``bound`` means "at least"."""
    return queryset.order_by().values("pk")[:bound].count()


class PageData(TableListData):
    """A page already ordered by the database: django-tables2 shows which column it is sorted by
    but must not sort the rows again in Python (its order for strings is not the database's)."""

    def order_by(self, aliases):
        pass
