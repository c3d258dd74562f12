"""The organization in the dashboard: OU filters and groups, the accounts (health) page, the admin."""

import csv
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from fleet import heatmap, posture
from fleet.choices import HealthCheck
from fleet.models import AccountHealth, ChangeBatch, DiscoveryRun, OrganizationSource
from fleet.tests.factories import (
    AccountFactory,
    InstanceFactory,
    LaunchSourceFactory,
    MetadataDefaultsFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
OVERVIEW = reverse("fleet:overview")
ACCOUNTS = reverse("fleet:account_health")
INSTANCES = reverse("fleet:instance_list")


@pytest.fixture
def org():
    prod = AccountFactory(account_id="500000000001", name="prod-a", ou_path="Workloads/Prod")
    dev = AccountFactory(account_id="500000000002", name="dev-a", ou_path="Workloads/NonProd/Dev")
    sec = AccountFactory(account_id="500000000003", name="sec-a", ou_path="Security")
    root = AccountFactory(account_id="500000000004", name="mgmt", ou_path="")
    InstanceFactory.create_batch(2, account=prod, http_tokens="required")
    InstanceFactory(account=prod, region="eu-west-1")
    InstanceFactory.create_batch(3, account=dev)
    InstanceFactory(account=sec, http_tokens="required", region="eu-west-1")
    InstanceFactory(account=root)
    for account in (prod, dev, sec, root):
        MetadataDefaultsFactory(account=account, region="us-east-1")
    posture.refresh_all()
    return {"prod": prod, "dev": dev, "sec": sec, "root": root}


def test_heat_map_groups_by_ou_and_drills_down(org):
    top = heatmap.scoped_heat_map("")
    assert [(r["kind"], r["name"], r["accounts"], r["total"], r["enforced"]) for r in top.rows] == [
        ("ou", "Security", 1, 1, 1),
        ("ou", "Workloads", 2, 6, 2),
        ("account", "mgmt", 1, 1, 0),
    ]
    assert top.regions == ["eu-west-1", "us-east-1"]
    workloads = next(r for r in top.rows if r["name"] == "Workloads")
    assert [c["total"] if c else None for c in workloads["cells"]] == [1, 5]

    inner = heatmap.scoped_heat_map("Workloads")
    assert [(r["kind"], r["ou_path"]) for r in inner.rows] == [("ou", "Workloads/NonProd"), ("ou", "Workloads/Prod")]
    leaf = heatmap.scoped_heat_map("Workloads/Prod")
    assert [(r["kind"], r["account_id"]) for r in leaf.rows] == [("account", "500000000001")]
    assert leaf.breadcrumb == [("Workloads", "Workloads"), ("Prod", "Workloads/Prod")]
    assert heatmap.scoped_heat_map("Nope").rows == []


def test_overview_page_shows_ous_links_and_drill_down(viewer, org):
    html = viewer.get(OVERVIEW).content.decode()
    assert f"{OVERVIEW}?ou=Workloads#heat-map" in html
    assert f"{INSTANCES}?ou=Workloads&amp;region=us-east-1" in html
    assert f"{INSTANCES}?account=500000000004&amp;region=us-east-1" in html
    html = viewer.get(OVERVIEW, {"ou": "Workloads/NonProd/Dev"}).content.decode()
    assert f"{INSTANCES}?account=500000000002&amp;region=us-east-1" in html
    assert "500000000001" not in html.split('id="heat-map"')[1].split("</section>")[0]
    assert viewer.get(OVERVIEW, {"ou": "No/Such", "page": "x"}).status_code == 200


def test_heat_map_pages_accounts_and_keeps_query_count_constant(viewer):
    def queries(n):
        for _ in range(n):
            InstanceFactory(account=AccountFactory(ou_path=""))
        posture.refresh_all()
        with CaptureQueriesContext(connection) as ctx:
            response = viewer.get(OVERVIEW)
        return len(ctx.captured_queries), response

    few, _ = queries(3)
    many, response = queries(heatmap.ACCOUNTS_PER_PAGE + 10)
    assert few == many
    page = response.context["heat_map"].page
    assert len(page) == heatmap.ACCOUNTS_PER_PAGE and page.paginator.count == heatmap.ACCOUNTS_PER_PAGE + 13
    second = viewer.get(OVERVIEW, {"page": 2}).context["heat_map"]
    assert len(second.account_rows) == 13


def test_instance_list_filters_by_ou_with_exact_summary_count(viewer, org):
    response = viewer.get(INSTANCES, {"ou": "Workloads"})
    ids = {i.instance_id for i in response.context["filter"].qs}
    assert ids == set(org["prod"].instances.values_list("instance_id", flat=True)) | set(
        org["dev"].instances.values_list("instance_id", flat=True))
    filterset = response.context["filter"]
    assert filterset.summary_count() == 6
    assert "Workloads/Prod" in response.content.decode()  # the OU shown next to the account
    assert viewer.get(INSTANCES, {"ou": "Workloads", "http_tokens": "required"}).context["filter"].summary_count() == 2
    bad = viewer.get(INSTANCES, {"ou": "Not/An/OU"})
    assert "ou" in bad.context["filter"].errors


def test_csv_has_the_ou_path(viewer, org):
    response = viewer.get(reverse("fleet:instance_export"), {"ou": "Security"})
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["ou_path"] for row in rows] == ["Security"]


def test_bulk_change_targets_an_ou(operator, org):
    response = operator.post(reverse("fleet:change_new"), {"filter": "ou=Workloads/NonProd", "http_tokens": "required",
                                                          "override_usage": "on"})
    assert response.status_code == 302
    batch = ChangeBatch.objects.get()
    assert batch.counts()["total"] == 3
    assert set(batch.items.values_list("account__account_id", flat=True)) == {"500000000002"}


def test_defaults_page_filters_and_groups_by_ou(viewer, org):
    cells = viewer.get(reverse("fleet:defaults"), {"ou": "Workloads"}).context["cells"]
    assert {c.account.account_id for c in cells} == {"500000000001", "500000000002"}
    # Every account's cells, the accounts of one OU together: root first, then by OU path.
    everything = viewer.get(reverse("fleet:defaults")).context["cells"]
    paths = [c.account.ou_path for c in everything]
    assert paths == sorted(paths) and paths[0] == "" and len({c.account.pk for c in everything}) == 4


def test_sources_page_filters_and_groups_by_ou(viewer, org):
    sources = {key: LaunchSourceFactory(account=account, name=f"lt-of-{key}") for key, account in org.items()}
    url = reverse("fleet:source_list")
    listed = viewer.get(url, {"ou": "Workloads"}).context["filter"].qs
    assert set(listed) == {sources["prod"], sources["dev"]}
    html = viewer.get(url, {"ou": "Workloads"}).content.decode()
    assert "Workloads/NonProd/Dev" in html and "lt-of-sec" not in html  # the OU shown next to the account
    by_account = viewer.get(url, {"sort": "account"}).context["table"]
    assert [row.record.account.ou_path for row in by_account.rows] == [
        "", "Security", "Workloads/NonProd/Dev", "Workloads/Prod"]
    bad = viewer.get(url, {"ou": "Not/An/OU"})
    assert bad.status_code == 200 and "ou" in bad.context["filter"].errors


def _health(account, readable, healthy, error=""):
    checks = {c.value: {"ok": True, "error": ""} for c in HealthCheck}
    if not readable:
        checks = {c.value: {"ok": None, "error": ""} for c in HealthCheck}
        checks[HealthCheck.ASSUME_ROLE] = {"ok": False, "error": error}
    elif not healthy:
        checks[HealthCheck.MODIFY_OPTIONS] = {"ok": False, "error": error}
    return AccountHealth.objects.create(account=account, checked_at=timezone.now(), region="us-east-1",
                                        readable=readable, healthy=healthy, checks=checks)


def test_accounts_page_lists_failing_accounts_first_with_aws_error(viewer, org):
    _health(org["prod"], True, True)
    _health(org["dev"], False, False, "AccessDenied: User: x is not authorized to perform: sts:AssumeRole")
    _health(org["sec"], True, False, "UnauthorizedOperation: You are not authorized to perform this operation.")
    response = viewer.get(ACCOUNTS)
    assert response.status_code == 200
    order = [a.account_id for a in response.context["page"]]
    assert order == ["500000000002", "500000000003", "500000000004", "500000000001"]
    html = response.content.decode()
    assert "is not authorized to perform: sts:AssumeRole" in html and "UnauthorizedOperation" in html
    assert response.context["summary"] == {"unreadable": 1, "failing": 2, "unchecked": 1}
    only = viewer.get(ACCOUNTS, {"ou": "Workloads"})
    assert [a.account_id for a in only.context["page"]] == ["500000000002", "500000000001"]
    overview = viewer.get(OVERVIEW).content.decode()
    assert "1 account cannot be read" in overview and ACCOUNTS in overview


def test_accounts_page_shows_the_latest_discovery(viewer, org):
    source = OrganizationSource.objects.create()
    DiscoveryRun.objects.create(source=source, started_at=timezone.now(), status="succeeded", accounts_seen=4,
                                changes=[{"account_id": "500000000009", "name": "<b>new</b>", "change": "added",
                                          "detail": "OU Sandbox"}])
    html = viewer.get(ACCOUNTS).content.decode()
    assert "Latest discovery of organization" in html and "OU Sandbox" in html
    assert "&lt;b&gt;new&lt;/b&gt;" in html


def test_accounts_page_needs_login(client):
    response = client.get(ACCOUNTS)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(role="admin"))
    return client


def test_admin_discover_now_queues_the_discovery(admin_client, monkeypatch, django_capture_on_commit_callbacks):
    from fleet import tasks

    queued = []
    monkeypatch.setattr(tasks.discover_source, "delay", queued.append)
    source = OrganizationSource.objects.create(external_id="secret-ext-id")
    page = admin_client.get(f"/admin/fleet/organizationsource/{source.pk}/change/")
    assert page.status_code == 200 and b"secret-ext-id" not in page.content
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post("/admin/fleet/organizationsource/",
                                     {"action": "discover_now", "_selected_action": [source.pk]}, follow=True)
    assert queued == [source.pk]
    assert b"Discovery queued" in response.content


def test_admin_shows_what_a_discovery_changed(admin_client):
    source = OrganizationSource.objects.create()
    run = DiscoveryRun.objects.create(source=source, started_at=timezone.now(), status="succeeded",
                                      changes=[{"account_id": "500000000009", "name": "x", "change": "moved",
                                                "detail": "Sandbox → Security"}])
    assert b"1 moved" in admin_client.get("/admin/fleet/discoveryrun/").content
    assert "Sandbox → Security" in admin_client.get(f"/admin/fleet/discoveryrun/{run.pk}/change/").content.decode()
    assert admin_client.get("/admin/fleet/accounthealth/").status_code == 200
