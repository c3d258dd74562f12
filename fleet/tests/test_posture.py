"""The maintained posture summary: refreshed from the rows, and what the large list counts with."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from fleet import posture
from fleet.models import RegionPosture
from fleet.tests.factories import AccountFactory, InstanceFactory

pytestmark = pytest.mark.django_db


def test_refresh_counts_one_account_region():
    account = AccountFactory()
    InstanceFactory(account=account, http_tokens="required", hop_limit=2)
    InstanceFactory(account=account, http_tokens="optional", v1_calls=3, metadata_state="pending")
    InstanceFactory(account=account, region="eu-west-1")
    posture.refresh_region(account.pk, "us-east-1")
    row = RegionPosture.objects.get(account=account, region="us-east-1")
    assert (row.total, row.enforced, row.pending, row.v1_in_use, row.not_enforced_in_use) == (2, 1, 1, 1, 1)
    assert row.hop_limits == {"1": 1, "2": 1}
    assert not RegionPosture.objects.filter(region="eu-west-1").exists()  # only what was asked


def test_a_large_list_takes_its_count_from_the_summary(viewer, monkeypatch):
    from fleet.views.instances import InstanceListView

    monkeypatch.setattr(InstanceListView, "COUNT_BOUND", 2)
    account = AccountFactory(account_id="111111111111")
    InstanceFactory.create_batch(3, account=account, http_tokens="optional")
    posture.refresh_all()
    RegionPosture.objects.filter(account=account).update(total=25_000)  # as if a large fleet
    with CaptureQueriesContext(connection) as ctx:
        html = viewer.get(reverse("fleet:instance_list") + "?account=111111111111").content.decode()
    assert "<strong>25,000</strong> instances match" in html
    counts = [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"] and "fleet_instance" in q["sql"]]
    assert len(counts) == 1 and "LIMIT 3" in counts[0]  # one count, and it stops at the bound


def test_a_small_list_counts_exactly_whatever_the_summary_says(viewer):
    account = AccountFactory(account_id="111111111111")
    InstanceFactory.create_batch(3, account=account, http_tokens="optional")
    posture.refresh_all()
    RegionPosture.objects.filter(account=account).update(total=25_000)  # a summary not refreshed yet
    for query in ("", "?http_tokens=optional", "?account=111111111111"):
        html = viewer.get(reverse("fleet:instance_list") + query).content.decode()
        assert "25,000" not in html and "<strong>3</strong> instances match" in html


def test_terminated_and_shutting_down_instances_are_counted_apart_from_every_figure():
    """Prowler and AWS Config do not evaluate them: today's "Safe to enforce now: 12" of 12
    terminated instances must be 0, with the 12 shown apart."""
    account = AccountFactory()
    InstanceFactory.create_batch(12, account=account, instance_state="terminated", v1_calls=0, hop_limit=2,
                                 metadata_state="pending", instance_metadata_tags="enabled")
    InstanceFactory(account=account, instance_state="shutting-down", http_tokens="required", v1_calls=3)
    InstanceFactory(account=account, instance_state="stopped", v1_calls=0)
    posture.refresh_all()
    totals = posture.fleet_totals()
    assert (totals["terminated"], totals["shutting_down"], totals["not_counted"]) == (12, 1, 13)
    assert totals["total"] == totals["not_enforced"] == totals["safe_to_enforce"] == totals["stopped"] == 1
    for name in ("enforced", "pending", "hop_limit_over_1", "tags_enabled", "v1_in_use", "not_enforced_in_use"):
        assert totals[name] == 0, name
    assert posture.hop_limit_distribution() == [(1, 1)]
    [cell] = posture.compliance_by_region()
    assert (cell["total"], cell["not_counted"]) == (1, 13)


def test_absent_members_follow_the_rule_books():
    """NULL endpoint: Prowler FAIL (neither enabled nor disabled). NULL tokens: Prowler FAIL, but
    AWS Config is NON_COMPLIANT only for HttpTokens = optional."""
    account = AccountFactory()
    InstanceFactory(account=account, http_tokens="required", http_endpoint=None)
    InstanceFactory(account=account, http_tokens=None)
    InstanceFactory(account=account, http_tokens="optional", http_endpoint="disabled")
    InstanceFactory(account=account, http_tokens="required", metadata_state=None)
    posture.refresh_all()
    totals = posture.fleet_totals()
    assert (totals["total"], totals["enforced"], totals["enforced_applied"], totals["tokens_optional"]) == (4, 2, 1, 1)
    assert totals["config_compliant"] == 3
    row = RegionPosture.objects.get()
    assert row.value_counts["counted"]["http_tokens"] == {"required": 2, "optional": 1, "null": 1}
    assert row.value_counts["counted"]["metadata_state"] == {"applied": 3, "null": 1}
    assert [i.enforced for i in account.instances.order_by("pk")] == [False, False, True, True]


def test_a_tile_past_the_count_bound_links_to_its_exact_number(viewer, monkeypatch):
    """1,019 instances: the list behind each linked figure says 1,019, not "1,000+"."""
    from fleet.views.instances import InstanceListView

    monkeypatch.setattr(InstanceListView, "COUNT_BOUND", 1)
    account = AccountFactory(account_id="111111111111")
    InstanceFactory.create_batch(2, account=account, v1_calls=0)
    InstanceFactory(account=account, http_tokens=None, http_endpoint=None, metadata_state=None)
    InstanceFactory(account=account, region="eu-west-1", http_tokens="required", metadata_state="pending")
    InstanceFactory(account=account, instance_state="terminated")
    posture.refresh_all()
    RegionPosture.objects.filter(region="us-east-1").update(total=1_018)  # as if a large fleet
    html = viewer.get(reverse("fleet:overview")).content.decode()
    links = re.findall(r'<a [^>]*href="([^"]*)"[^>]*data-count="(\d+)"', html)
    assert len(links) > 15
    for href, count in links:
        response = viewer.get(href.replace("&amp;", "&"))
        assert (response.context["total"], response.context["total_at_least"]) == (int(count), False), href
    assert 'data-count="1019"' in html and "1 terminated, not counted" in html


def test_a_row_not_refreshed_since_the_upgrade_gives_no_count_rather_than_a_wrong_one(viewer, monkeypatch):
    from fleet.views.instances import InstanceListView

    monkeypatch.setattr(InstanceListView, "COUNT_BOUND", 2)
    account = AccountFactory(account_id="111111111111")
    InstanceFactory.create_batch(3, account=account, http_tokens="optional")
    posture.refresh_all()
    RegionPosture.objects.update(value_counts={})  # as migration 0012 leaves an existing row
    response = viewer.get(reverse("fleet:instance_list") + "?http_tokens=optional")
    assert (response.context["total"], response.context["total_at_least"]) == (2, True)  # "2+", never "0"
    posture.refresh_all()
    response = viewer.get(reverse("fleet:instance_list") + "?http_tokens=optional")
    assert (response.context["total"], response.context["total_at_least"]) == (3, False)
