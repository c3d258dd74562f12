"""The instance list's keyset pages and bounded count (fleet.pagination): every sort walks the
whole list both ways without gaps or repeats, stale links say so, and each sort is an index seek."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from fleet import pagination, posture
from fleet.models import Instance
from fleet.tables import InstanceTable
from fleet.tests.factories import AccountFactory, InstanceFactory
from fleet.views.instances import InstanceListView

pytestmark = pytest.mark.django_db
LIST = reverse("fleet:instance_list")
SORTS = [f"{sign}{name}" for name in InstanceTable.SORT_KEYS for sign in ("", "-")]


def ids(response):
    return [row.record.instance_id for row in response.context["table"].paginated_rows]


def link(response, rel):
    match = re.search(rf'href="([^"]*)" rel="{rel}"', response.content.decode())
    return match and LIST + match.group(1).replace("&amp;", "&")


@pytest.fixture
def fleet():
    """31 instances over two accounts and regions, with ties in every sort key and NULLs."""
    accounts = [AccountFactory(name="b-prod"), AccountFactory(name="a-dev")]
    seen = timezone.now()
    return [
        InstanceFactory(
            account=accounts[n % 2], region=("us-east-1", "eu-west-1")[n % 3 % 2], name=f"node-{n % 4}",
            hop_limit=None if n % 7 == 0 else 1 + n % 3, v1_calls=None if n % 5 == 0 else n % 3,
            last_seen=seen - timezone.timedelta(minutes=n % 6),
            # Every IMDSv1 risk class (fleet.models.inventory.RISKS) among them.
            iam_instance_profile_arn=None if n % 3 == 0 else f"arn:aws:iam::{accounts[n % 2].account_id}:instance-profile/p",
            public_ip=f"198.51.100.{n}" if n % 2 == 0 else None,
        )
        for n in range(31)
    ]


def expected_order(sort):
    _, ordering = InstanceTable.ordering_for(sort)
    queryset, _ = pagination.ordered(Instance.objects.present(), ordering)
    return list(queryset.values_list("instance_id", flat=True))


@pytest.mark.parametrize("sort", SORTS)
def test_every_sort_walks_forward_and_back_without_gaps_or_repeats(viewer, fleet, sort):
    url, pages = f"{LIST}?sort={sort}&per_page=7", []
    while url:
        response = viewer.get(url)
        assert response.status_code == 200
        pages.append(ids(response))
        url = link(response, "next")
    assert [i for page in pages for i in page] == expected_order(sort)
    assert [len(page) for page in pages] == [7, 7, 7, 7, 3]
    # And back from the last page, one page at a time.
    url, back = link(response, "prev"), []
    while url:
        response = viewer.get(url)
        back.append(ids(response))
        url = link(response, "prev")
    assert back == pages[-2::-1]


def test_last_page_and_first_page_links(viewer, fleet):
    last = viewer.get(f"{LIST}?sort=name&per_page=7&last=1")
    # Page 5 of 31 rows by 7: what is left after four full pages, as numbering from the first has it.
    assert ids(last) == expected_order("name")[28:] and last.context["table"].page_number == 5
    assert link(last, "next") is None and link(last, "prev")
    assert ids(viewer.get(link(last, "prev"))) == expected_order("name")[21:28]
    # Where the count is only a lower bound, the last page is the last full page.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(InstanceListView, "COUNT_BOUND", 5)
        assert ids(viewer.get(f"{LIST}?sort=name&per_page=7&q=node&last=1")) == expected_order("name")[-7:]
    first = viewer.get(f"{LIST}?sort=name&per_page=7")
    assert link(first, "prev") is None
    assert "« first" not in first.content.decode() and "last »" in first.content.decode()


def test_previous_from_near_the_start_shows_a_full_first_page(viewer, fleet):
    third = expected_order("")[3]
    pk = Instance.objects.get(instance_id=third).pk
    response = viewer.get(f"{LIST}?per_page=7&before={pk}")
    assert ids(response) == expected_order("")[:7]


@pytest.mark.parametrize("cursor", ["after=999999999", "before=999999999", "after=abc", "after=-3", "before=1e9",
                                    "after=" + "9" * 40])
def test_stale_or_bad_cursor_shows_the_first_page_and_says_so(viewer, fleet, cursor):
    response = viewer.get(f"{LIST}?per_page=7&{cursor}")
    assert response.status_code == 200
    assert ids(response) == expected_order("")[:7]
    assert "no longer points at a listed instance" in response.content.decode()


def test_cursor_outside_the_filter_still_places_the_page(viewer, fleet):
    # A page link made before the filter changed: the row is not listed but still orders the page.
    gone = fleet[10]
    Instance.objects.filter(pk=gone.pk).update(gone_at=timezone.now())
    response = viewer.get(f"{LIST}?sort=instance_id&after={gone.pk}")
    assert ids(response) == [i for i in expected_order("instance_id") if i > gone.instance_id]


@pytest.mark.parametrize("sort", ["http_tokens", "-region", "nonsense", "-", "account__name"])
def test_unsortable_columns_fall_back_to_the_default_order(viewer, fleet, sort):
    response = viewer.get(f"{LIST}?sort={sort}")
    assert response.status_code == 200
    assert ids(response) == expected_order("")[:50]


def test_sort_links_start_again_at_the_first_page(viewer, fleet):
    html = viewer.get(f"{LIST}?per_page=7&after={fleet[3].pk}").content.decode()
    sort_links = re.findall(r'href="([^"]*sort=[^"]*)"', html)
    assert sort_links and not any("after=" in href for href in sort_links)


def test_the_table_sorts_exactly_the_columns_that_have_keys():
    table = InstanceTable([])
    orderable = {column.name for column in table.columns if column.orderable}
    assert orderable == set(InstanceTable.SORT_KEYS)


def test_count_is_exact_below_the_bound_then_from_the_summary_or_a_lower_bound(viewer, fleet, monkeypatch):
    assert viewer.get(LIST).context["total"] == 31
    monkeypatch.setattr(InstanceListView, "COUNT_BOUND", 10)
    posture.refresh_all()
    account = fleet[0].account

    def count(query):
        response = viewer.get(f"{LIST}?{query}")
        return response.context["total"], response.context["total_at_least"]

    assert count(f"account={account.account_id}") == (16, False)  # from the summary
    assert count("http_tokens=optional") == (31, False)
    assert count(f"account={account.account_id}&region=us-east-1&http_tokens=optional") == (
        Instance.objects.filter(account=account, region="us-east-1").count(), False)
    # Two posture filters: the summary cannot tell, so the count stops at the bound.
    assert count("http_tokens=optional&http_endpoint=enabled") == (10, True)
    assert "<strong>10+</strong> instances match" in viewer.get(f"{LIST}?q=node").content.decode()


# ids in sorted key order: some filters come from frozensets, whose order changes with the hash seed
# (pytest-xdist needs every worker to collect the same ids)
@pytest.mark.parametrize("filters", list(posture.summary_filters(hop_limits=(2, 64))),
                         ids=lambda filters: str(dict(sorted(filters.items()))))
def test_every_summary_count_agrees_with_counting_the_rows(fleet, filters):
    from fleet.filters import InstanceFilterSet

    Instance.objects.filter(pk__in=[i.pk for i in fleet[:9]]).update(
        http_tokens="required", http_endpoint="disabled", instance_metadata_tags="enabled", metadata_state="pending")
    # Absent members (NULL) and instances that are not part of the posture are counted too.
    Instance.objects.filter(pk__in=[i.pk for i in fleet[5:12]]).update(
        http_tokens=None, http_endpoint=None, instance_metadata_tags=None, metadata_state=None)
    Instance.objects.filter(pk__in=[i.pk for i in fleet[10:16]]).update(instance_state="terminated")
    Instance.objects.filter(pk=fleet[16].pk).update(instance_state="shutting-down")
    posture.refresh_all()
    for account in {i.account for i in fleet}:
        data = {**filters, "account": account.account_id}
        filterset = InstanceFilterSet(data, queryset=Instance.objects.all())
        assert filterset.is_valid(), filterset.errors
        assert filterset.summary_count() == filterset.qs.count(), (filters, account)


def test_a_deep_page_costs_the_same_queries_as_the_first(viewer, fleet):
    def queries(url):
        with CaptureQueriesContext(connection) as ctx:
            assert viewer.get(url).status_code == 200
        return len(ctx.captured_queries)

    first = queries(f"{LIST}?sort=-last_seen&http_tokens=optional&per_page=7")
    deep = queries(f"{LIST}?sort=-last_seen&http_tokens=optional&per_page=7&after={fleet[20].pk}")
    assert deep == first + 1  # the cursor's row
    InstanceFactory.create_batch(40, account=fleet[0].account)
    assert queries(f"{LIST}?sort=-last_seen&http_tokens=optional&per_page=7&after={fleet[20].pk}") == deep


def plan(queryset):
    """The plan PostgreSQL would pick if a table scan and a sort cost the earth."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("SET LOCAL enable_incremental_sort = off")
        sql, params = queryset.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.mark.skipif(connection.vendor != "postgresql", reason="index plans are PostgreSQL's")
@pytest.mark.parametrize("sort", SORTS)
def test_every_sort_is_an_index_seek_at_any_depth(fleet, sort):
    _, ordering = InstanceTable.ordering_for(sort)
    anchor = pagination._position(Instance.objects, ordering, fleet[15].pk)
    deep = pagination._beyond(Instance.objects.all(), ordering, anchor)[:51]
    text = plan(deep)
    assert "Sort" not in text, text
    assert "Index" in text and "Cond" in text, text  # the row comparison is the index condition


@pytest.mark.skipif(connection.vendor != "postgresql", reason="trigram indexes are PostgreSQL's")
def test_search_uses_the_trigram_and_prefix_indexes(fleet):
    from fleet.filters import InstanceFilterSet

    text = plan(InstanceFilterSet().filter_q(Instance.objects.order_by(), "q", "ode-1"))
    assert "instance_search_name" in text and "instance_search_id" in text, text


def test_the_written_out_rows_match_the_table_columns(viewer, fleet):
    html = viewer.get(f"{LIST}?per_page=3").content.decode()
    head = html[html.index("<thead"):html.index("</thead>")]
    first_row = html[html.index("<tbody"):].split("</tr>")[0]
    assert head.count("<th ") == first_row.count("<td") == len(InstanceTable([]).columns)
    # The cells carry the same values the columns name, in the same order.
    instance = Instance.objects.present().order_by("account_id", "region", "instance_id").first()
    cells = re.findall(r"<td[^>]*>(.*?)</td>", first_row, re.S)
    assert instance.instance_id in cells[1] and instance.name == cells[2] and instance.region == cells[4]


def test_conflicting_cursors_follow_after(viewer, fleet):
    order = expected_order("")
    anchor = Instance.objects.get(instance_id=order[9])
    for query in (f"after={anchor.pk}&before={anchor.pk}", f"after={anchor.pk}&last=1"):
        assert ids(viewer.get(f"{LIST}?per_page=5&{query}")) == order[10:15]


def test_page_numbers_where_the_count_is_known(viewer, fleet):
    order = expected_order("")
    first = viewer.get(f"{LIST}?per_page=7")
    assert first.context["table"].page_numbers == [1, 2, 3, 4, 5]  # 31 rows
    assert '<span aria-current="page">1</span>' in first.content.decode()
    for number in range(1, 6):
        response = viewer.get(f"{LIST}?per_page=7&page={number}")
        assert ids(response) == order[(number - 1) * 7:number * 7]
        assert response.context["table"].page_number == number
    # From a numbered page, next continues by keyset without a gap.
    third = viewer.get(f"{LIST}?per_page=7&page=3")
    assert ids(viewer.get(link(third, "next"))) == order[21:28]


@pytest.mark.parametrize("number", ["0", "11", "x", "-2"])
def test_a_page_number_out_of_range_is_the_first_page(viewer, fleet, number):
    response = viewer.get(f"{LIST}?per_page=7&page={number}")
    assert response.status_code == 200 and ids(response) == expected_order("")[:7]


def test_no_page_numbers_when_the_count_is_only_a_lower_bound(viewer, fleet, monkeypatch):
    monkeypatch.setattr(InstanceListView, "COUNT_BOUND", 5)
    response = viewer.get(f"{LIST}?per_page=7&q=node")  # a search: the summary cannot count it
    assert response.context["total_at_least"] and response.context["table"].page_numbers == []


def number_links(response):
    return {entry["number"]: LIST + entry["href"] for entry in response.context["table"].pager["numbers"]
            if entry["number"] and entry["href"]}


@pytest.mark.parametrize("sort", ["", "-last_seen", "name"])
def test_page_numbers_beyond_the_first_pages_jump_by_keyset_and_line_up_with_offset(viewer, fleet, sort):
    """16 pages of 2: from page 1 every jump to the page two ahead lands on exactly the rows
    OFFSET would give that number, up to the last page (one row), and back down again."""
    order, per_page = expected_order(sort), 2
    pages = -(-len(order) // per_page)

    def rows_of(number):
        return order[(number - 1) * per_page:number * per_page]

    response, number = viewer.get(f"{LIST}?sort={sort}&per_page={per_page}"), 1
    while number < pages:
        links = number_links(response)
        target = max(n for n in links if number < n <= number + 2)
        response, number = viewer.get(links[target]), target
        assert response.context["table"].page_number == number
        assert ids(response) == rows_of(number), number
    assert number == pages and len(ids(response)) == 1  # the last page holds what is left
    while number > 1:
        links = number_links(response)
        target = min(n for n in links if number - 2 <= n < number)
        response, number = viewer.get(links[target]), target
        assert ids(response) == rows_of(number), number
    # Next and previous keep counting.
    deep = viewer.get(number_links(viewer.get(f"{LIST}?sort={sort}&per_page={per_page}&page=10"))[12])
    assert deep.context["table"].page_number == 12
    assert viewer.get(link(deep, "next")).context["table"].page_number == 13
    assert ids(viewer.get(link(deep, "prev"))) == rows_of(11)


def test_the_pager_shows_the_first_the_pages_around_this_one_and_the_last(viewer, fleet):
    response = viewer.get(f"{LIST}?per_page=2&page=10")
    deep = viewer.get(number_links(response)[12])
    shown = [entry["number"] for entry in deep.context["table"].pager["numbers"]]
    assert shown == [1, None, 10, 11, 12, 13, 14, None, 16]
    html = deep.content.decode()
    assert '<span aria-current="page">12</span>' in html and "…" in html
    last = viewer.get(f"{LIST}?per_page=2&last=1")
    assert last.context["table"].page_number == 16
    assert [e["number"] for e in last.context["table"].pager["numbers"]] == [1, None, 14, 15, 16]


@pytest.mark.parametrize(("current", "count", "window"), [
    (1, 5, [1, 2, 3, 4, 5]),
    (1, 40, [1, 2, 3, None, 40]),
    (12, 40, [1, None, 10, 11, 12, 13, 14, None, 40]),
    (4, 40, [1, 2, 3, 4, 5, 6, None, 40]),
    (39, 40, [1, None, 37, 38, 39, 40]),
    (None, 40, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, None, 40]),
])
def test_page_window(current, count, window):
    assert pagination.page_window(current, count, first_numbered=10) == window


def test_a_numbered_deep_page_costs_the_same_queries_at_any_depth(viewer, fleet):
    def queries(url):
        with CaptureQueriesContext(connection) as ctx:
            assert viewer.get(url).status_code == 200
        return len(ctx.captured_queries)

    twelfth = number_links(viewer.get(number_links(viewer.get(f"{LIST}?per_page=2&page=10"))[12]))
    first = queries(f"{LIST}?per_page=2")
    deep = queries(twelfth[13])  # pages 11 and 15 are two away: one query each for their cursor
    assert deep == first + 1 + 2  # + the cursor's row
    InstanceFactory.create_batch(40, account=fleet[0].account)
    assert queries(twelfth[13]) == deep
