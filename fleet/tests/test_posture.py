"""The maintained posture summary: refreshed from the rows, and what the large list counts with."""

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
