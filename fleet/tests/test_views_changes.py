"""The confirmation flow, the change list, a batch's page, its live progress and its actions."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from fleet.choices import ChangeKind
from fleet.models import ChangeBatch
from fleet.tests.factories import (
    AccountFactory,
    ChangeBatchFactory,
    ChangeItemFactory,
    InstanceFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
NEW = reverse("fleet:change_new")


@pytest.fixture
def fleet():
    prod = AccountFactory(account_id="111111111111", name="prod")
    return {
        "open": InstanceFactory(account=prod, instance_id="i-00000000000000001", v1_calls=0),
        "done": InstanceFactory(account=prod, instance_id="i-00000000000000002", http_tokens="required"),
        "v1": InstanceFactory(account=prod, instance_id="i-00000000000000003", v1_calls=40),
        "stopped": InstanceFactory(account=prod, region="eu-west-1", instance_id="i-00000000000000004",
                                   instance_state="stopped"),
        "eks": InstanceFactory(account=prod, instance_id="i-00000000000000005", name="eks-node-1", hop_limit=1),
    }


def ids(*instances):
    return "&".join(f"ids={instance.instance_id}" for instance in instances)


def test_confirm_page_shows_the_plan(operator, fleet):
    response = operator.get(f"{NEW}?{ids(*fleet.values())}&http_tokens=required")
    assert response.status_code == 200
    plan = response.context["preview"]
    assert plan.total == 5
    assert plan.already == 1
    assert plan.held == 1
    html = response.content.decode()
    assert "already at the target" in html
    assert "estimated duration" in html
    assert "stopped instance" in html  # warning
    assert "container hosts" in html  # hop limit 1 on eks-node
    assert "IMDSv1 calls" in html  # held unless override
    assert "eu-west-1" in html and "us-east-1" in html  # per account/region
    assert not ChangeBatch.objects.exists()  # GET changes nothing


def test_confirm_page_from_a_filter(operator, fleet):
    response = operator.get(NEW, {"filter": "region=eu-west-1&gone=present", "http_tokens": "required"})
    assert response.status_code == 200
    assert response.context["preview"].total == 1
    assert 'name="filter" value="region=eu-west-1&amp;gone=present"' in response.content.decode()


def test_post_creates_the_batch_and_redirects(operator, fleet):
    response = operator.post(NEW, {"ids": [fleet["open"].instance_id, fleet["done"].instance_id],
                                   "http_tokens": "required", "comment": "CIS 5.6", "dry_run": "on"})
    batch = ChangeBatch.objects.get()
    assert response.status_code == 302
    assert response["Location"] == batch.get_absolute_url()
    assert batch.desired == {"http_tokens": "required"}
    assert batch.comment == "CIS 5.6" and batch.dry_run and not batch.override_usage
    assert batch.created_by.has_perm("fleet.queue_change")
    assert batch.counts()["queued"] == 1 and batch.counts()["skipped"] == 1
    assert "i-00000000000000001" in batch.selection


def test_post_with_a_filter_selection(operator, fleet):
    operator.post(NEW, {"filter": "account=111111111111", "http_tokens": "required", "override_usage": "on"})
    batch = ChangeBatch.objects.get()
    assert batch.override_usage
    assert batch.counts()["total"] == 5
    assert batch.selection.startswith("filter: account=111111111111")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"ids": "i-00000000000000001"}, "Choose at least one"),
        ({"ids": "i-00000000000000001", "hop_limit": "0"}, "greater than or equal to 1"),
        ({"ids": "i-00000000000000001", "hop_limit": "65"}, "less than or equal to 64"),
        ({"ids": "i-00000000000000001", "hop_limit": "abc"}, "whole number"),
        ({"ids": "i-00000000000000001", "http_tokens": "bogus"}, "valid choice"),
        ({"ids": "i-00000000000000001", "http_endpoint": "off"}, "valid choice"),
        ({"http_tokens": "required"}, "Select some instances"),
        ({"ids": "i-00000000000000001", "filter": "gone=all", "http_tokens": "required"}, "Select some instances"),
        ({"ids": "'; DROP TABLE x;--", "http_tokens": "required"}, "invalid value"),
        ({"ids": "i-0fffffffffffffff9", "http_tokens": "required"}, "unknown or gone"),
        ({"filter": "hop_limit=abc", "http_tokens": "required"}, "filter is not valid"),
        ({"filter": "x" * 5000, "http_tokens": "required"}, "at most 4000"),
        ({"ids": [f"i-{n:017x}" for n in range(600)], "http_tokens": "required"}, "At most 500"),
        ({"ids": [f"i-{n:017x}" for n in range(6000)], "http_tokens": "required"}, "Bad request"),
    ],
)
def test_bad_input_is_a_form_error(operator, fleet, params, message):
    for method in (operator.get, operator.post):
        response = method(NEW, params)
        assert response.status_code == 400, method
        assert message in response.content.decode()
    assert not ChangeBatch.objects.exists()


def test_gone_instances_cannot_be_selected(operator, fleet):
    from django.utils import timezone

    gone = InstanceFactory(instance_id="i-00000000000000009", gone_at=timezone.now())
    response = operator.post(NEW, {"ids": gone.instance_id, "http_tokens": "required"})
    assert response.status_code == 400
    assert not ChangeBatch.objects.exists()


def test_engine_refusal_is_shown_not_raised(operator, fleet, monkeypatch):
    from fleet import changes

    def refuse(*args, **kwargs):
        raise changes.ChangeRefused("Another change was queued at the same moment; try again.")

    monkeypatch.setattr(changes, "request_change", refuse)
    response = operator.post(NEW, {"ids": fleet["open"].instance_id, "http_tokens": "required"})
    assert response.status_code == 409
    assert b"queued at the same moment" in response.content


def test_change_list_is_one_query_for_the_rows(operator):
    def queries(n):
        for _ in range(n):
            ChangeItemFactory.create_batch(2, batch=ChangeBatchFactory(created_by=UserFactory()))
        with CaptureQueriesContext(connection) as ctx:
            assert operator.get(reverse("fleet:change_list")).status_code == 200
        return len(ctx.captured_queries)

    assert queries(2) == queries(30)


def test_change_list_shows_status_and_progress(operator):
    batch = ChangeBatchFactory(comment="<b>hi</b>")
    ChangeItemFactory(batch=batch, state="applied")
    ChangeItemFactory(batch=batch, state="failed")
    html = operator.get(reverse("fleet:change_list")).content.decode()
    assert "done with errors" in html
    assert "2 / 2 (100%)" in html
    assert "&lt;b&gt;hi&lt;/b&gt;" in html


def test_detail_shows_request_items_and_preflight(operator):
    batch = ChangeBatchFactory(
        comment="rotate", dry_run=True,
        preflight_report={"111111111111/us-east-1": {"ok": False, "error_code": "UnauthorizedOperation",
                                                     "message": "no permission"}},
    )
    ChangeItemFactory(batch=batch, state="failed", error_code="InvalidParameterValue", error_message="bad hop")
    ChangeItemFactory(batch=batch, state="held", reason="12 IMDSv1 call(s)")
    html = operator.get(batch.get_absolute_url()).content.decode()
    assert "UnauthorizedOperation" in html and "no permission" in html
    assert "InvalidParameterValue" in html and "bad hop" in html
    assert "12 IMDSv1 call(s)" in html
    assert "Retry failed" in html
    assert "Roll back" not in html  # nothing applied


def test_detail_item_filter(operator):
    batch = ChangeBatchFactory()
    failed = ChangeItemFactory(batch=batch, state="failed")
    applied = ChangeItemFactory(batch=batch, state="applied")
    response = operator.get(f"{batch.get_absolute_url()}?state=failed")
    rows = {row.record.pk for row in response.context["table"].paginated_rows}
    assert rows == {failed.pk}
    assert applied.pk not in rows
    response = operator.get(f"{batch.get_absolute_url()}?state=bogus&page=abc")
    assert response.status_code == 200
    assert not list(response.context["table"].paginated_rows)


def test_progress_partial_polls_until_final(operator):
    batch = ChangeBatchFactory()
    item = ChangeItemFactory(batch=batch, state="queued")
    url = reverse("fleet:change_progress", args=[batch.pk])
    response = operator.get(url, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert 'hx-trigger="every 2s"' in html and f'hx-get="{url}"' in html
    assert "HX-Refresh" not in response
    item.state = "applied"
    item.save()
    response = operator.get(url, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert "hx-trigger" not in html
    assert response["HX-Refresh"] == "true"
    assert "1</strong> of 1 item" in html


def test_detail_page_embeds_polling_only_while_running(operator):
    batch = ChangeBatchFactory()
    item = ChangeItemFactory(batch=batch, state="pending")
    assert b'hx-trigger="every 2s"' in operator.get(batch.get_absolute_url()).content
    item.state = "applied"
    item.save()
    assert b"hx-trigger" not in operator.get(batch.get_absolute_url()).content


def test_cancel_and_retry(operator):
    batch = ChangeBatchFactory()
    queued = ChangeItemFactory(batch=batch, state="queued")
    failed = ChangeItemFactory(batch=batch, state="failed", error_code="RequestLimitExceeded")
    response = operator.post(reverse("fleet:change_cancel", args=[batch.pk]), follow=True)
    assert b"Cancelled 1 queued item" in response.content
    queued.refresh_from_db()
    assert queued.state == "cancelled"
    response = operator.post(reverse("fleet:change_retry", args=[batch.pk]), follow=True)
    assert b"Queued 1 item(s) again" in response.content
    failed.refresh_from_db()
    assert failed.state == "queued" and failed.error_code == ""


def test_rollback_creates_a_batch(operator):
    batch = ChangeBatchFactory()
    ChangeItemFactory(batch=batch, state="applied", previous={"http_tokens": "optional"})
    response = operator.post(reverse("fleet:change_rollback", args=[batch.pk]), {"comment": "broke the app"})
    rollback = ChangeBatch.objects.get(rollback_of=batch)
    assert response.status_code == 302
    assert response["Location"] == rollback.get_absolute_url()
    assert rollback.comment == "broke the app"
    assert rollback.kind == ChangeKind.INSTANCE_OPTIONS
    page = operator.get(rollback.get_absolute_url()).content.decode()
    assert f"batch #{batch.pk}" in page


def test_rollback_with_nothing_applied_is_a_message(operator):
    batch = ChangeBatchFactory()
    ChangeItemFactory(batch=batch, state="failed")
    response = operator.post(reverse("fleet:change_rollback", args=[batch.pk]))
    assert response.status_code == 409
    assert b"Nothing to roll back" in response.content
    assert not ChangeBatch.objects.filter(rollback_of=batch).exists()


def test_actions_are_post_only_and_404_for_unknown(operator):
    batch = ChangeBatchFactory()
    assert operator.get(reverse("fleet:change_cancel", args=[batch.pk])).status_code == 405
    assert operator.post(reverse("fleet:change_cancel", args=[987654])).status_code == 404
    assert operator.get("/changes/99999999999999999999999/").status_code == 404


def test_viewer_sees_but_cannot_act(viewer):
    batch = ChangeBatchFactory()
    queued = ChangeItemFactory(batch=batch, state="queued")
    assert viewer.get(batch.get_absolute_url()).status_code == 200
    assert viewer.post(reverse("fleet:change_cancel", args=[batch.pk])).status_code == 403
    queued.refresh_from_db()
    assert queued.state == "queued"


def test_detail_query_count_does_not_grow_with_items(operator):
    batch = ChangeBatchFactory()

    def queries(n):
        ChangeItemFactory.create_batch(n, batch=batch, state="applied")
        with CaptureQueriesContext(connection) as ctx:
            assert operator.get(batch.get_absolute_url()).status_code == 200
        return len(ctx.captured_queries)

    assert queries(5) == queries(45)


def test_rollback_items_show_their_own_values(operator):
    batch = ChangeBatchFactory()
    ChangeItemFactory(batch=batch, state="applied", previous={"http_tokens": "optional"})
    operator.post(reverse("fleet:change_rollback", args=[batch.pk]))
    rollback = ChangeBatch.objects.get(rollback_of=batch)
    assert "HttpTokens=optional" in operator.get(rollback.get_absolute_url()).content.decode()


def test_rollback_is_labelled_in_the_list(operator):
    batch = ChangeBatchFactory()
    ChangeBatchFactory(desired={}, rollback_of=batch)
    assert f"rollback of #{batch.pk}" in operator.get(reverse("fleet:change_list")).content.decode()


def test_confirm_page_without_a_selection(operator):
    response = operator.get(NEW)
    assert response.status_code == 200
    assert b"Nothing selected yet" in response.content
