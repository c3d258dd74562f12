"""The overview: both compliance rules, the heat map, counts, evidence, defaults, syncs, charts."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from fleet import posture
from fleet.tests.factories import (
    AccountFactory,
    ChangeBatchFactory,
    InstanceFactory,
    MetadataDefaultsFactory,
)

pytestmark = pytest.mark.django_db
OVERVIEW = reverse("fleet:overview")


@pytest.fixture
def fleet():
    prod = AccountFactory(account_id="111111111111", name="prod", regions=["us-east-1", "eu-west-1"])
    dev = AccountFactory(account_id="222222222222", name="dev", regions=["us-east-1"])
    # prod/us-east-1: 3 of 4 enforced (one pending) -> 75% enforced, 50% applied
    InstanceFactory(account=prod, http_tokens="required", v1_calls=0)
    InstanceFactory(account=prod, http_tokens="required", metadata_state="pending")
    InstanceFactory(account=prod, http_endpoint="disabled", hop_limit=2)
    InstanceFactory(account=prod, v1_calls=5, instance_metadata_tags="enabled")
    # prod/eu-west-1: 0 of 1 enforced, safe to enforce
    InstanceFactory(account=prod, region="eu-west-1", v1_calls=0, hop_limit=3)
    # dev: 1 of 1 enforced; a gone instance never counts
    InstanceFactory(account=dev, http_tokens="required")
    InstanceFactory(account=dev, gone_at=timezone.now())
    MetadataDefaultsFactory(account=prod, region="us-east-1", http_tokens="required")
    MetadataDefaultsFactory(account=prod, region="eu-west-1", managed_by="declarative-policy",
                            managed_exception_message="set by the org")
    MetadataDefaultsFactory(account=dev, region="us-east-1", status="unknown", error="AccessDenied")
    posture.refresh_all()  # what a sync does after writing instance rows
    return {"prod": prod, "dev": dev}


def test_totals_follow_both_rules(fleet):
    totals = posture.fleet_totals()
    assert totals["total"] == 6
    assert totals["enforced"] == 4  # required x3 (one pending) + endpoint disabled
    assert totals["enforced_applied"] == 3  # pending is not yet compliant
    assert totals["pending"] == 1
    assert totals["endpoint_disabled"] == 1
    assert totals["hop_limit_over_1"] == 2
    assert totals["tags_enabled"] == 1
    assert totals["v1_in_use"] == 1
    assert totals["safe_to_enforce"] == 1  # eu-west-1: not enforced, measured zero
    assert totals["not_enforced_in_use"] == 1
    assert totals["enforced_pct"] == 66.7
    assert totals["enforced_level"] == "bad"


def test_heat_map_and_bars(fleet):
    heat = posture.heat_map(posture.compliance_by_region())
    assert heat.regions == ["eu-west-1", "us-east-1"]
    by_name = {row["name"]: row for row in heat.rows}
    prod = by_name["prod"]
    assert [cell["enforced_pct"] if cell else None for cell in prod["cells"]] == [0.0, 75.0]
    assert [cell["level"] for cell in prod["cells"]] == ["bad", "warn"]
    assert by_name["dev"]["cells"][0] is None
    assert by_name["dev"]["level"] == "good"
    assert posture.hop_limit_distribution() == [(1, 4), (2, 1), (3, 1)]


def test_defaults_summary(fleet):
    assert posture.defaults_summary() == {"total": 3, "tokens_required": 1, "policy_managed": 1, "unknown": 1}


def test_sync_staleness(fleet, settings):
    settings.IMDSWEB_SYNC_INTERVAL_MINUTES = 15
    now = timezone.now()
    prod, dev = fleet["prod"], fleet["dev"]
    prod.sync_runs.create(region="us-east-1", started_at=now - timedelta(minutes=5),
                          finished_at=now - timedelta(minutes=4), status="succeeded")
    prod.sync_runs.create(region="eu-west-1", started_at=now - timedelta(hours=3),
                          finished_at=now - timedelta(hours=3), status="succeeded")
    dev.sync_runs.create(region="us-east-1", started_at=now - timedelta(minutes=20),
                         finished_at=now - timedelta(minutes=19), status="succeeded")
    dev.sync_runs.create(region="us-east-1", started_at=now - timedelta(minutes=2),
                         finished_at=now - timedelta(minutes=1), status="failed", error="AccessDenied")
    states = {(s.account.name, s.region): s for s in posture.sync_states(now)}
    assert not states[("prod", "us-east-1")].stale
    assert states[("prod", "eu-west-1")].stale  # older than 2 x 15 minutes
    assert states[("dev", "us-east-1")].stale  # the latest run failed
    assert states[("dev", "us-east-1")].last_success is not None
    assert states[("dev", "us-east-1")].reason == "last sync failed"


def test_never_synced_region_is_stale(fleet):
    assert all(state.stale and state.reason == "never synced" for state in posture.sync_states())


def test_page_renders_everything(viewer, fleet):
    batch = ChangeBatchFactory(comment="first")
    response = viewer.get(OVERVIEW)
    assert response.status_code == 200
    html = response.content.decode()
    assert "66.7%" in html and "50%" in html  # enforced, and enforced and applied (3 of 6)
    assert "heat-bad" in html and "heat-warn" in html and "heat-good" in html
    assert "<svg" in html and "fill-warn" in html
    assert batch.get_absolute_url() in html
    assert "not synced recently" in html
    assert "?account=111111111111&amp;region=eu-west-1" in html


def overview_queries(client, accounts):
    for _n in range(accounts):
        account = AccountFactory(regions=["us-east-1", "eu-west-1"])
        InstanceFactory.create_batch(3, account=account)
        InstanceFactory(account=account, region="eu-west-1")
        account.sync_runs.create(region="us-east-1", started_at=timezone.now(), status="succeeded")
        MetadataDefaultsFactory(account=account)
        ChangeBatchFactory()
    posture.refresh_all()
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(OVERVIEW).status_code == 200
    return len(ctx.captured_queries)


def test_overview_query_count_is_constant(viewer):
    assert overview_queries(viewer, 2) == overview_queries(viewer, 20)


def test_empty_fleet(viewer):
    response = viewer.get(OVERVIEW)
    assert response.status_code == 200
    assert b"No instances in the inventory yet" in response.content


def test_summary_follows_the_rows_it_is_refreshed_from(fleet):
    prod = fleet["prod"]
    prod.instances.filter(region="eu-west-1").update(http_tokens="required")
    assert posture.fleet_totals()["enforced"] == 4  # not refreshed yet: the summary is a cache
    posture.refresh_region(prod.pk, "eu-west-1")
    assert posture.fleet_totals()["enforced"] == 5
    prod.instances.filter(region="eu-west-1").update(gone_at=timezone.now())
    posture.refresh_all()
    totals = posture.fleet_totals()
    assert totals["total"] == 5 and totals["enforced"] == 4
    assert [row for row in posture.compliance_by_region() if row["region"] == "eu-west-1"] == []


def test_latest_sync_kept_per_region_whatever_order_runs_are_saved_in(fleet, settings):
    from fleet.models import RegionSync

    settings.IMDSWEB_SYNC_INTERVAL_MINUTES = 15
    now = timezone.now()
    prod = fleet["prod"]
    newest = prod.sync_runs.create(region="us-east-1", started_at=now - timedelta(minutes=3), status="running")
    # An older run saved afterwards (a slow worker finishing) moves neither the latest run nor,
    # being a failure, the last success.
    older = prod.sync_runs.create(region="us-east-1", started_at=now - timedelta(minutes=40),
                                  finished_at=now - timedelta(minutes=39), status="succeeded")
    prod.sync_runs.create(region="us-east-1", started_at=now - timedelta(minutes=20),
                          finished_at=now - timedelta(minutes=19), status="failed")
    row = RegionSync.objects.get(account=prod, region="us-east-1")
    assert (row.last_run_id, row.last_status, row.last_success_at) == (newest.pk, "running", older.finished_at)
    state = {(s.account.pk, s.region): s for s in posture.sync_states(now)}[(prod.pk, "us-east-1")]
    assert state.last_run == newest and state.stale and state.reason == "no successful sync for over 30 minutes"
    newest.status, newest.finished_at = "succeeded", now
    newest.save()
    row.refresh_from_db()
    assert (row.last_status, row.last_success_at) == ("succeeded", now)
    assert not {(s.account.pk, s.region): s for s in posture.sync_states(now)}[(prod.pk, "us-east-1")].stale


def test_sync_summary_counts_every_configured_region_and_lists_stale_first(fleet, settings):
    now = timezone.now()
    prod = fleet["prod"]
    for region in prod.regions:
        prod.sync_runs.create(region=region, started_at=now, finished_at=now, status="succeeded")
    states = posture.sync_states(now)
    shown, stale, count = posture.sync_summary(2, now)
    assert count == len(states) and stale == sum(s.stale for s in states)
    assert len(shown) == 2 and all(s.stale for s in shown[:min(2, stale)])
    assert [(s.account.pk, s.region) for s in shown] == [(s.account.pk, s.region) for s in
                                                          sorted(states, key=lambda s: not s.stale)][:2]


def test_hop_limit_counts_follow_the_instances(fleet):
    from fleet.models import HopLimitCount, Instance

    counted = Instance.objects.present().exclude(instance_state__in=["terminated", "shutting-down"])
    expected = {}
    for hop in counted.values_list("hop_limit", flat=True):
        expected[hop] = expected.get(hop, 0) + 1
    assert dict(posture.hop_limit_distribution()) == expected
    counted.filter(hop_limit=1).update(hop_limit=5)
    posture.refresh_all()
    assert HopLimitCount.objects.filter(hop_limit=1).count() == 0
    assert dict(posture.hop_limit_distribution()).get(5) == expected.get(1, 0) + expected.get(5, 0)
