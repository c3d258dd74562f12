"""A batch's page while it runs and after: live items, held and stopped items, the breakage flag,
and running a dry run for real."""

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet.choices import ChangeKind
from fleet.models import ChangeBatch, ChangeItem
from fleet.tests.factories import (
    AccountFactory,
    ChangeBatchFactory,
    ChangeItemFactory,
    InstanceFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def client_for(role):
    client = Client()
    if role:
        client.force_login(UserFactory(role=role))
    return client


@pytest.fixture
def operator():
    return client_for("operator")


@pytest.fixture
def viewer():
    return client_for("viewer")


def poll(client, batch, query=""):
    return client.get(reverse("fleet:change_progress", args=[batch.pk]) + query, HTTP_HX_REQUEST="true")


# ---------------------------------------------------------------- the items table follows the run


def test_poll_refreshes_the_items_table_and_the_buttons(operator):
    batch = ChangeBatchFactory()
    first, second = ChangeItemFactory.create_batch(2, batch=batch, state="queued")
    html = poll(operator, batch).content.decode()
    assert "Cancel 2 queued" in html
    assert '<div id="items-table" class="scroll" hx-swap-oob="true">' in html
    assert html.count("item-queued") == 2

    ChangeItem.objects.filter(pk=first.pk).update(state="pending")
    html = poll(operator, batch).content.decode()
    assert "Cancel 1 queued" in html
    assert html.count("item-queued") == 1 and html.count("item-pending") == 1
    assert 'hx-trigger="every 2s"' in html


def test_poll_keeps_the_page_filter_and_passes_it_on(operator):
    batch = ChangeBatchFactory()
    failed = ChangeItemFactory(batch=batch, state="failed")
    ChangeItemFactory(batch=batch, state="queued")
    response = poll(operator, batch, "?state=failed")
    table = response.context["table"]
    assert [row.record.pk for row in table.paginated_rows] == [failed.pk]
    url = reverse("fleet:change_progress", args=[batch.pk])
    assert f'hx-get="{url}?state=failed"' in response.content.decode()
    page = operator.get(batch.get_absolute_url() + "?state=failed").content.decode()
    assert f'hx-get="{url}?state=failed"' in page
    assert '<div id="items-table" class="scroll">' in page


def test_full_page_has_no_out_of_band_copy(operator):
    batch = ChangeBatchFactory()
    ChangeItemFactory(batch=batch, state="queued")
    html = operator.get(batch.get_absolute_url()).content.decode()
    assert "hx-swap-oob" not in html
    assert html.count('id="items-table"') == 1


# ---------------------------------------------------------------- held and stopped items


def test_held_items_are_counted_linked_and_filterable(operator):
    batch = ChangeBatchFactory()
    held = ChangeItemFactory(batch=batch, state="held", reason="40 IMDSv1 call(s) in the last 14 days")
    ChangeItemFactory(batch=batch, state="applied")
    response = operator.get(batch.get_absolute_url())
    html = response.content.decode()
    assert 'data-state="held"' in html and "held (IMDSv1 in use) <strong>1</strong>" in html
    assert '<a href="?state=held&amp;outcome=held_calls" data-count="1">1 held</a>' in html
    assert "40 IMDSv1 call(s)" in html
    rows = operator.get(batch.get_absolute_url() + "?state=held").context["table"].paginated_rows
    assert [row.record.pk for row in rows] == [held.pk]


def test_stopped_instances_pending_until_start(operator):
    batch = ChangeBatchFactory()
    stopped = InstanceFactory(instance_state="stopped")
    waiting = ChangeItemFactory(batch=batch, instance=stopped, state="pending", awaiting_start=True)
    ChangeItemFactory(batch=batch, state="applied")
    response = poll(operator, batch)
    html = response.content.decode()
    # Only a stopped instance is left: the batch is done for now, not "waiting for AWS".
    assert "done for now" in html and "waiting for AWS" not in html
    assert '<a href="?awaiting_start=true" id="awaiting-start" data-count="1">1 will apply when started</a>' in html
    assert "1 pending until their instance starts" in html
    assert "pending: applies when the instance starts" in html  # its row in the items table
    # Nothing will move until someone starts the instance: keep watching, but rarely, and do not
    # reload the page as for a finished batch.
    assert 'hx-trigger="every 30s"' in html
    assert "HX-Refresh" not in response
    rows = operator.get(batch.get_absolute_url() + "?awaiting_start=true").context["table"].paginated_rows
    assert [row.record.pk for row in rows] == [waiting.pk]

    ChangeItemFactory(batch=batch, state="pending")  # a running one still on its way
    html = poll(operator, batch).content.decode()
    assert 'hx-trigger="every 2s"' in html and "waiting for AWS" in html


def test_batch_left_with_stopped_instances_is_done_for_now_in_the_list(operator):
    batch = ChangeBatchFactory()
    for _ in range(3):
        ChangeItemFactory(batch=batch, instance=InstanceFactory(instance_state="stopped"), state="pending",
                          awaiting_start=True)
    ChangeItemFactory.create_batch(2, batch=batch, state="applied")
    html = operator.get(reverse("fleet:change_list")).content.decode()
    assert "done for now" in html and "3 will apply when started" in html
    assert "waiting for AWS" not in html
    overview = operator.get(reverse("fleet:overview")).content.decode()
    assert "done for now" in overview and "waiting for AWS" not in overview


# ---------------------------------------------------------------- the breakage flag


@pytest.fixture
def broken():
    batch = ChangeBatchFactory(breakage_flagged_at=timezone.now())
    instance = InstanceFactory(instance_id="i-00000000000000b0e", http_tokens="required", v1_rejected=17)
    ChangeItemFactory(batch=batch, instance=instance, state="applied", breakage_suspected=True,
                      previous={"http_tokens": "optional"})
    ChangeItemFactory.create_batch(2, batch=batch, state="applied", previous={"http_tokens": "optional"})
    return batch, instance


def test_breakage_warning_with_rollback_right_there(operator, broken):
    batch, _instance = broken
    html = operator.get(batch.get_absolute_url()).content.decode()
    assert "1 instance</a> is refusing IMDSv1 calls since this change — likely breakage" in html
    warning = html[html.index('id="breakage"'):html.index('<div class="grid-2">')]
    assert reverse("fleet:change_rollback", args=[batch.pk]) in warning
    assert "Roll back 3 applied" in warning
    assert html.count("Roll back 3 applied") == 1  # the button moved into the warning
    rows = operator.get(batch.get_absolute_url() + "?breakage=true").context["table"].paginated_rows
    assert [row.record.breakage_suspected for row in rows] == [True]


def test_viewer_sees_the_breakage_but_no_rollback(viewer, broken):
    batch, _instance = broken
    html = viewer.get(batch.get_absolute_url()).content.decode()
    assert "likely breakage" in html
    assert "Roll back" not in html
    assert "Rolling back needs the operator role" in html


def test_no_warning_without_a_flag(operator):
    batch = ChangeBatchFactory()
    ChangeItemFactory(batch=batch, state="applied")
    html = operator.get(batch.get_absolute_url()).content.decode()
    assert "likely breakage" not in html
    assert "Roll back 1 applied" in html


def test_breakage_badge_on_change_list_and_instance_page(operator, broken):
    batch, instance = broken
    calm = ChangeBatchFactory()
    html = operator.get(reverse("fleet:change_list")).content.decode()
    assert html.count("likely breakage</span>") == 1
    row = html[html.index(f'href="{batch.get_absolute_url()}"'):]
    assert "likely breakage" in row[:row.index("</tr>")]
    assert f'href="{calm.get_absolute_url()}"' in html
    page = operator.get(instance.get_absolute_url()).content.decode()
    assert f"likely breakage since batch #{batch.pk}" in page
    assert "17 refused calls" in page
    other = InstanceFactory()
    ChangeItemFactory(batch=batch, instance=other, state="applied")
    assert "likely breakage" not in operator.get(other.get_absolute_url()).content.decode()
    overview = operator.get(reverse("fleet:overview")).content.decode()
    assert overview.count("likely breakage</span>") == 1


# ---------------------------------------------------------------- run a dry run for real


@pytest.fixture
def dry_run():
    account = AccountFactory(account_id="111111111111")
    batch = ChangeBatchFactory(dry_run=True, comment="CIS 5.6", selection="filter: region=us-east-1")
    open_ = InstanceFactory(account=account, v1_calls=0)
    calling = InstanceFactory(account=account, v1_calls=12)
    ChangeItemFactory(batch=batch, instance=open_, state="skipped", reason="dry run: AWS would accept this change")
    ChangeItemFactory(batch=batch, instance=calling, state="held", reason="12 IMDSv1 call(s)")
    InstanceFactory(account=account)  # not in the dry run: must stay out
    return batch, {open_.pk, calling.pk}


def test_rerun_queues_the_same_change_for_real(operator, dry_run):
    batch, instance_pks = dry_run
    html = operator.get(batch.get_absolute_url()).content.decode()
    assert "Run it for real" in html and reverse("fleet:change_rerun", args=[batch.pk]) in html
    response = operator.post(reverse("fleet:change_rerun", args=[batch.pk]), follow=True)
    real = ChangeBatch.objects.exclude(pk=batch.pk).get()
    assert response.redirect_chain == [(real.get_absolute_url(), 302)]
    assert f"Dry run #{batch.pk} queued for real as batch #{real.pk}." in response.content.decode()
    assert not real.dry_run and real.desired == batch.desired and real.comment == "CIS 5.6"
    assert set(real.items.values_list("instance", flat=True)) == instance_pks
    assert real.counts()["queued"] == 1 and real.counts()["held"] == 1  # the rules apply again
    assert real.created_by.has_perm("fleet.queue_change")


def test_rerun_of_account_defaults(operator):
    account = AccountFactory(regions=["us-east-1", "eu-west-1"])
    batch = ChangeBatchFactory(kind=ChangeKind.ACCOUNT_DEFAULTS, dry_run=True, desired={"http_tokens": "required"})
    for region in account.regions:
        ChangeItem.objects.create(batch=batch, account=account, region=region, state="skipped")
    operator.post(reverse("fleet:change_rerun", args=[batch.pk]))
    real = ChangeBatch.objects.exclude(pk=batch.pk).get()
    assert real.kind == ChangeKind.ACCOUNT_DEFAULTS and not real.dry_run
    assert set(real.items.values_list("account", "region")) == {(account.pk, "us-east-1"), (account.pk, "eu-west-1")}


def test_rerun_refused_for_a_real_or_unfinished_batch(operator, dry_run):
    real = ChangeBatchFactory()
    ChangeItemFactory(batch=real, state="applied")
    response = operator.post(reverse("fleet:change_rerun", args=[real.pk]), follow=True)
    assert b"Only a dry run can be run again" in response.content
    assert b"Run it for real" not in operator.get(real.get_absolute_url()).content
    running = ChangeBatchFactory(dry_run=True)
    ChangeItemFactory(batch=running, state="queued")
    assert b"Run it for real" not in operator.get(running.get_absolute_url()).content
    response = operator.post(reverse("fleet:change_rerun", args=[running.pk]), follow=True)
    assert b"has not finished yet" in response.content
    assert ChangeBatch.objects.count() == 3


def test_rerun_roles(viewer, dry_run):
    batch, _ = dry_run
    url = reverse("fleet:change_rerun", args=[batch.pk])
    page = viewer.get(batch.get_absolute_url()).content.decode()
    assert "Run it for real" not in page and "need the operator role" in page
    response = viewer.post(url)
    assert response.status_code == 403 and b"Not allowed" in response.content
    outsider = Client().post(url)
    assert outsider.status_code == 302 and outsider["Location"].startswith(reverse("login"))
    assert client_for("operator").get(url).status_code == 405
    assert client_for("operator").post(reverse("fleet:change_rerun", args=[987654])).status_code == 404
    assert ChangeBatch.objects.count() == 1
