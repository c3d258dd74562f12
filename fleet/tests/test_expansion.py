"""Large selections expanded into items by a worker in chunks (fleet.changes.expansion): the request
writes only the batch, the chunks land in instance-id order, and a worker that dies mid-way
loses nothing (the sweeper resumes after the last chunk that committed)."""

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from fleet import changes, tasks
from fleet.changes import expansion
from fleet.choices import BatchStatus, ItemState
from fleet.models import ChangeBatch, ChangeItem, Instance
from fleet.tests.factories import AccountFactory, ChangeBatchFactory, ChangeItemFactory, InstanceFactory

pytestmark = pytest.mark.django_db

NEW = reverse("fleet:change_new")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(expansion, "INLINE_MAX", 5)
    monkeypatch.setattr(expansion, "CHUNK", 4)
    monkeypatch.setattr(tasks.apply_region, "delay", lambda *args: None)  # no broker in these tests
    yield
    cache.delete_many([f"imdsweb:expanding:{pk}" for pk in ChangeBatch.objects.values_list("pk", flat=True)])


def fleet(n=13, busy=2):
    """``n`` instances in two regions (the first ``busy`` held by another batch's queued item)."""
    account = AccountFactory()
    instances = [InstanceFactory(account=account, region=("us-east-1", "eu-west-1")[i % 2]) for i in range(n)]
    holder = ChangeBatchFactory()
    for instance in instances[:busy]:
        ChangeItemFactory(batch=holder, instance=instance, account=account, region=instance.region, state="queued")
    return account, instances


def request(account, **kwargs):
    return changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2, **kwargs)


def test_a_large_request_writes_only_the_batch_in_the_same_queries_at_any_size(django_capture_on_commit_callbacks):
    counts = []
    for n in (7, 19):
        account, _ = fleet(n)
        with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks() as callbacks:
            batch = request(account)
        counts.append(len(queries))
        assert batch.expanding and batch.expected == n and batch.expanded == 0
        assert not batch.items.exists()
        assert batch.status == BatchStatus.EXPANDING
        assert len(callbacks) == 1  # the expansion handed to a worker after commit
    assert counts[0] == counts[1]


def test_a_small_request_is_still_expanded_inline():
    account, _ = fleet(5, busy=0)
    batch = request(account)
    assert not batch.expanding and batch.expected == batch.expanded == 5
    assert batch.items.filter(state=ItemState.QUEUED).count() == 5


def test_chunks_follow_the_decision_rule_and_start_runners_as_they_land(monkeypatch,
                                                                        django_capture_on_commit_callbacks):
    account, instances = fleet(13)
    batch = request(account)
    started = []
    monkeypatch.setattr(tasks.apply_region, "delay", lambda *args: started.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        tasks.expand_batch(batch.pk)
    batch.refresh_from_db()
    assert not batch.expanding and batch.expanded == 13
    items = {item.instance_id: item for item in batch.items.all()}
    assert sorted(items) == sorted(instance.pk for instance in instances)
    for instance in instances[:2]:  # held by the other batch: skipped as busy, with its reason
        assert items[instance.pk].state == ItemState.SKIPPED
        assert items[instance.pk].outcome == changes.Outcome.BUSY
    assert all(items[instance.pk].state == ItemState.QUEUED for instance in instances[2:])
    assert {(account.pk, "us-east-1"), (account.pk, "eu-west-1")} <= set(started)
    assert len(started) >= 4, started  # 4 chunks, each starting its regions' runners


def test_a_worker_killed_mid_expansion_loses_nothing_and_the_sweeper_resumes(monkeypatch):
    account, instances = fleet(13)
    batch = request(account)
    assert expansion.expand(batch.pk, size=4, chunks=2) == 2
    batch.refresh_from_db()
    assert batch.expanded == 8 and batch.expanded_through == instances[7].pk and batch.expanding

    # The next chunk's worker dies after its INSERT, before its commit: the chunk rolls back.
    real = expansion.create_items

    def die_after_insert(*args, **kwargs):
        real(*args, **kwargs)
        raise SystemExit("worker killed")

    monkeypatch.setattr(expansion, "create_items", die_after_insert)
    expansion.claim(batch.pk)  # the dead worker's guard, left behind
    with pytest.raises(SystemExit):
        expansion.expand_chunk(batch.pk, size=4)
    monkeypatch.setattr(expansion, "create_items", real)
    assert batch.items.count() == 8
    assert expansion.stalled() == []  # its guard has not expired yet: nobody else expands it

    cache.delete(f"imdsweb:expanding:{batch.pk}")  # the guard expires
    resumed = []
    monkeypatch.setattr(tasks.expand_batch, "delay", resumed.append)
    tasks.sweep()
    assert resumed == [batch.pk]
    tasks.expand_batch(batch.pk)
    batch.refresh_from_db()
    assert not batch.expanding and batch.expanded == 13
    assert batch.items.count() == 13  # one item per instance: no chunk written twice
    assert set(batch.items.values_list("instance_id", flat=True)) == {i.pk for i in instances}
    assert expansion.stalled() == []


def test_two_expanders_take_turns_and_write_each_chunk_once():
    account, _ = fleet(13)
    batch = request(account)
    for _ in range(10):  # the sweeper's and the first worker's chunks interleaved
        expansion.expand_chunk(batch.pk, size=4)
    batch.refresh_from_db()
    assert not batch.expanding and batch.items.count() == 13
    assert expansion.expand_chunk(batch.pk) is None


def test_the_batch_page_shows_the_expansion_while_it_runs(operator):
    account, _ = fleet(13)
    batch = request(account)
    expansion.expand(batch.pk, size=4, chunks=1)
    page = operator.get(batch.get_absolute_url()).content.decode()
    assert "Expanding: 4 of 13 selected instances written as items (31%)" in page
    assert 'hx-trigger="every 2s"' in page
    progress = operator.get(reverse("fleet:change_progress", args=[batch.pk])).content.decode()
    assert "Expanding: 4 of 13" in progress


def test_the_web_request_for_a_large_filter_returns_the_batch_before_its_items(operator):
    account, _ = fleet(9, busy=0)
    response = operator.post(NEW, {"filter": f"account={account.account_id}", "http_tokens": "required"})
    assert response.status_code == 302, response.content[:500]
    batch = ChangeBatch.objects.get(expanding=True)
    assert response["Location"] == batch.get_absolute_url()
    assert batch.expected == 9
    tasks.expand_batch(batch.pk)
    assert batch.items.filter(state=ItemState.QUEUED).count() == 9


def test_cancel_stops_the_expansion_and_rollback_waits_for_it():
    account, _ = fleet(13)
    batch = request(account)
    expansion.expand(batch.pk, size=4, chunks=1)
    with pytest.raises(changes.ChangeRefused, match="still being expanded into items"):
        changes.rollback(batch, None)
    assert changes.cancel_queued(batch, None) == 2  # the first chunk: 2 busy, 2 queued
    tasks.expand_batch(batch.pk)
    batch.refresh_from_db()
    assert not batch.expanding and batch.items.count() == 4
    assert not ChangeItem.objects.filter(batch=batch, state=ItemState.QUEUED).exists()


def test_a_replayed_large_request_creates_one_batch():
    account, _ = fleet(9)
    first = request(account, request_token="big-token")
    with pytest.raises(changes.AlreadySubmitted) as refused:
        request(account, request_token="big-token")
    assert refused.value.batch == first


def test_the_api_answers_a_large_request_with_the_batch_still_expanding(client):
    from fleet.tests.test_api_changes import bearer, post

    account, _ = fleet(9, busy=0)
    _user, headers = bearer("operator")
    plan = post(client, "changes/plan/", {"filter": f"account={account.account_id}", "http_tokens": "required"},
                headers)
    assert plan.status_code == 200, plan.content
    queued = post(client, "changes/", {"plan_token": plan.json()["plan_token"]}, headers)
    assert queued.status_code == 201, queued.content
    body = queued.json()
    assert (body["status"], body["expanding"], body["expected"], body["expanded"]) == ("expanding", True, 9, 0)
    tasks.expand_batch(body["id"])
    batch = ChangeBatch.objects.get(pk=body["id"])
    assert (batch.expanding, batch.expanded, batch.counts()["queued"]) == (False, 9, 9)


def test_a_chunk_reads_exactly_its_id_range_of_the_selection():
    account, instances = fleet(9, busy=0)
    batch = request(account)
    ids = sorted(instance.pk for instance in instances)
    assert list(expansion.selected(batch, ids[2], ids[5]).values_list("pk", flat=True).order_by("pk")) == ids[3:6]
    assert list(expansion.selected(batch, after=ids[6]).values_list("pk", flat=True).order_by("pk")) == ids[7:]
    assert expansion.selected(batch).count() == 9


def test_a_selection_stored_without_its_named_column_still_expands_by_range():
    account, instances = fleet(9, busy=0)
    batch = request(account)
    query = dict(batch.selection_query, sql=batch.selection_query["sql"].replace('"selected_id"', '"pk"'))
    ChangeBatch.objects.filter(pk=batch.pk).update(selection_query=query)
    tasks.expand_batch(batch.pk)
    batch.refresh_from_db()
    assert not batch.expanding and batch.expanded == 9
    assert sorted(batch.items.values_list("instance_id", flat=True)) == sorted(i.pk for i in instances)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner statistics")
def test_the_first_chunk_refreshes_the_item_tables_statistics():
    """The batch page's poll is planned from the item table's statistics: after the first chunk
    they count the batch's items, not the table as it was before the batch."""
    account, _ = fleet(13, busy=0)
    batch = request(account)
    table = ChangeItem._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {table}")  # the table as it was: no item of this batch
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [table])
        (before,) = cursor.fetchone()
        expansion.expand(batch.pk, size=4, chunks=1)
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [table])
        (after,) = cursor.fetchone()
    assert before <= 0 and after == 4
