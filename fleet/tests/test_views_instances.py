"""The instance list (filters, bulk selection, CSV export), one instance's page and its form."""

import csv
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from fleet.tests.factories import AccountFactory, ChangeItemFactory, InstanceFactory

pytestmark = pytest.mark.django_db
LIST = reverse("fleet:instance_list")
EXPORT = reverse("fleet:instance_export")


def listed(response):
    return {row.record.instance_id for row in response.context["table"].paginated_rows}


@pytest.fixture
def mixed():
    prod, dev = AccountFactory(account_id="111111111111", name="prod"), AccountFactory(account_id="222222222222", name="dev")
    return {
        "v1": InstanceFactory(account=prod, instance_id="i-00000000000000001", name="legacy-app", v1_calls=12),
        "v2": InstanceFactory(account=prod, instance_id="i-00000000000000002", name="web", http_tokens="required",
                              v1_calls=0),
        "off": InstanceFactory(account=dev, region="eu-west-1", instance_id="i-00000000000000003", name="batch",
                               http_endpoint="disabled", hop_limit=2, instance_metadata_tags="enabled",
                               v1_calls=None, usage_synced_at=None),
        "pending": InstanceFactory(account=dev, instance_id="i-00000000000000004", name="eks-node",
                                   metadata_state="pending", instance_state="stopped", http_tokens="required",
                                   v1_calls=None, usage_synced_at=None),
        "gone": InstanceFactory(account=dev, instance_id="i-00000000000000005", name="old", gone_at=timezone.now()),
    }


@pytest.mark.parametrize(
    "query, expected",
    [
        ("", {"v1", "v2", "off", "pending"}),
        ("gone=gone", {"gone"}),
        ("gone=all", {"v1", "v2", "off", "pending", "gone"}),
        ("account=111111111111", {"v1", "v2"}),
        ("region=eu-west-1", {"off"}),
        ("http_tokens=optional", {"v1", "off"}),
        ("http_tokens=optional&http_endpoint=enabled", {"v1"}),
        ("http_endpoint=disabled", {"off"}),
        ("hop_limit=2", {"off"}),
        ("metadata_state=pending", {"pending"}),
        ("instance_state=stopped", {"pending"}),
        ("instance_metadata_tags=enabled", {"off"}),
        ("v1_usage=yes", {"v1"}),
        ("v1_usage=no", {"v2"}),
        ("v1_usage=unknown", {"off", "pending"}),
        ("q=EKS", {"pending"}),
        ("q=i-0000000000000000", {"v1", "v2", "off", "pending"}),
        ("q=00000000000000001", set()),  # ids match by prefix, names by substring
        ("q=legacy", {"v1"}),
    ],
)
def test_filters(viewer, mixed, query, expected):
    response = viewer.get(f"{LIST}?{query}")
    assert response.status_code == 200
    assert listed(response) == {mixed[key].instance_id for key in expected}


@pytest.mark.parametrize(
    "query",
    ["hop_limit=0", "hop_limit=65", "hop_limit=abc", "hop_limit=1.5", "http_tokens=bogus", "account=999",
     "account=abc", "region=mars-1", "gone=maybe", "v1_usage=perhaps", "q=" + "x" * 5000, "instance_state=%00", "q=%00",
     "page=abc", "page=999999", "per_page=-5", "per_page=100000000", "sort=nonsense", "hop_limit=99999999999999999999"],
)
def test_bad_filter_values_are_form_errors_not_500(viewer, mixed, query):
    response = viewer.get(f"{LIST}?{query}")
    assert response.status_code == 200
    if query.split("=")[0] not in ("page", "per_page", "sort"):
        assert response.context["filter"].errors
        assert listed(response) == set()
        assert b"The filter is not valid" in response.content
    assert viewer.get(f"{EXPORT}?{query}").status_code in (200, 400)


def test_pagination_is_50_per_page(viewer):
    InstanceFactory.create_batch(120, account=AccountFactory())
    response = viewer.get(LIST)
    assert len(listed(response)) == 50
    assert response.context["total"] == 120
    assert len(listed(viewer.get(f"{LIST}?per_page=100000"))) == 120  # clamped to 200 at most
    assert len(listed(viewer.get(f"{LIST}?per_page=-5"))) == 1


def test_sorting(viewer, mixed):
    response = viewer.get(f"{LIST}?sort=-instance_id")
    ids = [row.record.instance_id for row in response.context["table"].paginated_rows]
    assert ids == sorted(ids, reverse=True)


def list_queries(client, n):
    InstanceFactory.create_batch(n, account=AccountFactory())
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(f"{LIST}?per_page=200").status_code == 200
    return len(ctx.captured_queries)


def test_list_query_count_does_not_grow_with_rows(operator):
    small = list_queries(operator, 10)
    large = list_queries(operator, 190)  # 200 instances now, over several accounts
    assert small == large, "the instance list makes a query per row"


def test_htmx_request_gets_the_partial(viewer, mixed):
    response = viewer.get(f"{LIST}?http_tokens=optional", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html
    assert mixed["v1"].instance_id in html
    assert mixed["v2"].instance_id not in html
    assert "HX-Request" in response["Vary"]
    restore = viewer.get(f"{LIST}?http_tokens=optional", HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true")
    assert "<html" in restore.content.decode()


def test_bulk_buttons_carry_the_filter(operator, mixed):
    html = operator.get(f"{LIST}?account=111111111111&page=1").content.decode()
    assert 'name="ids" value="i-00000000000000001"' in html
    assert "filter=account%3D111111111111%26gone%3Dpresent&amp;http_tokens=required" in html
    assert "Require IMDSv2 for all 2 matching" in html


def test_name_tag_with_script_is_escaped(viewer):
    instance = InstanceFactory(name="<script>alert(1)</script>", tags={"Name": "<script>alert(1)</script>",
                                                                       "<b>k</b>": "<img src=x onerror=alert(1)>"})
    for url in (LIST, instance.get_absolute_url()):
        html = viewer.get(url).content.decode()
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "<img src=x" not in html


def test_csv_export_streams_the_filtered_set(viewer, mixed):
    response = viewer.get(f"{EXPORT}?account=222222222222")
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {row["instance_id"] for row in rows} == {mixed["off"].instance_id, mixed["pending"].instance_id}
    off = next(row for row in rows if row["instance_id"] == mixed["off"].instance_id)
    assert off["imdsv2_enforced"] == "yes"
    assert off["hop_limit"] == "2"


@pytest.mark.parametrize("evil", ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"])
def test_csv_export_neutralises_formulas(viewer, evil):
    InstanceFactory(name=evil, account=AccountFactory(name=evil))
    response = viewer.get(EXPORT)
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode(), newline="")))
    assert rows[0]["name"] == "'" + evil
    assert rows[0]["account_name"] == "'" + evil


def test_csv_export_rejects_a_bad_filter(viewer):
    response = viewer.get(f"{EXPORT}?hop_limit=abc")
    assert response.status_code == 400
    assert b"hop_limit" in response.content


def test_detail_shows_options_evidence_and_history(viewer):
    instance = InstanceFactory(v1_calls=7, v1_rejected=0, tags={"Name": "web", "team": "payments"})
    item = ChangeItemFactory(instance=instance, state="failed", error_code="UnauthorizedOperation",
                             error_message="not allowed")
    html = viewer.get(instance.get_absolute_url()).content.decode()
    assert instance.instance_id in html
    assert "payments" in html
    assert "IMDSv1 allowed" in html
    assert reverse("fleet:change_detail", args=[item.batch.pk]) in html
    assert "UnauthorizedOperation" in html


@pytest.mark.parametrize("instance_id", ["i-123", "not-an-id", "i-0123456789abcdef0", "I-0123456789ABCDEF0"])
def test_detail_404_for_malformed_or_unknown_ids(viewer, instance_id):
    response = viewer.get(reverse("fleet:instance_detail", args=[instance_id]))
    assert response.status_code == 404
    assert b"Not found" in response.content


def test_detail_form_sends_only_changed_options(operator):
    instance = InstanceFactory(hop_limit=1)
    form = {"http_tokens": "required", "hop_limit": 2, "http_endpoint": "enabled", "http_protocol_ipv6": "disabled",
            "instance_metadata_tags": "disabled"}
    response = operator.post(instance.get_absolute_url(), form)
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith(reverse("fleet:change_new") + "?")
    assert f"ids={instance.instance_id}" in location
    assert "http_tokens=required" in location and "hop_limit=2" in location
    assert "http_endpoint" not in location and "instance_metadata_tags" not in location


@pytest.mark.parametrize(
    "change", [{}, {"hop_limit": 0}, {"hop_limit": 65}, {"hop_limit": "abc"}, {"http_tokens": "bogus"},
               {"http_endpoint": ""}],
)
def test_detail_form_rejects_bad_or_empty_changes(operator, change):
    instance = InstanceFactory()
    form = instance.options | change
    response = operator.post(instance.get_absolute_url(), form)
    assert response.status_code == 400
    assert b"field-error" in response.content or b"Nothing to change" in response.content
