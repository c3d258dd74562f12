"""Posture history and drift: what a sync records, the hourly snapshot, pruning, the burndown
(series and page), the drift list and the instance list's drift filter."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from fleet import aws, history, posture, sync, tasks
from fleet.choices import DriftKind, EventKind, SyncStatus
from fleet.models import (
    DiscoveryRun,
    DriftEvent,
    FleetSnapshot,
    Instance,
    NotificationEvent,
    OrganizationSource,
    PostureSnapshot,
    RegionPosture,
    SyncRun,
)
from fleet.models.posture import COUNTERS
from fleet.tests.conftest import AMBIENT_ACCOUNT, ec2_in
from fleet.tests.factories import AccountFactory, ChangeBatchFactory, ChangeItemFactory, InstanceFactory
from imdssim.testing import launch

OVERVIEW = reverse("fleet:overview")


def snap(account, region, bucket, total, enforced):
    return PostureSnapshot.objects.create(account=account, region=region, bucket=bucket, total=total, enforced=enforced)


@pytest.mark.django_db(transaction=True)
def test_sync_records_drift_events_and_a_snapshot(moto_endpoint):
    ec2 = ec2_in(moto_endpoint, AMBIENT_ACCOUNT, "us-east-1")
    optional = launch(ec2, 3)
    required = launch(ec2, 2, HttpTokens="required")
    account = AccountFactory(account_id=AMBIENT_ACCOUNT, regions=["us-east-1"])

    sync.sync_region(account, "us-east-1")
    # The first sync is the baseline: three instances allowing IMDSv1, none of them "new".
    assert not DriftEvent.objects.exists()

    launched = launch(ec2, 2)
    launch(ec2, 1, HttpTokens="required")  # a new launch that is already enforced is not drift
    ec2.modify_instance_metadata_options(InstanceId=required[0], HttpTokens="optional")  # outside imdsweb
    run = sync.sync_region(account, "us-east-1")

    drift = {(e.kind, e.instance.instance_id) for e in DriftEvent.objects.select_related("instance")}
    assert drift == {(DriftKind.NEW_V1, launched[0]), (DriftKind.NEW_V1, launched[1]),
                     (DriftKind.REGRESSED, required[0])}
    assert all(e.sync_run_id == run.pk for e in DriftEvent.objects.all())
    events = NotificationEvent.objects.order_by("kind", "instance__instance_id")
    assert [(e.kind, e.instance.instance_id) for e in events] == sorted(
        [(EventKind.NEW_V1, launched[0]), (EventKind.NEW_V1, launched[1]), (EventKind.REGRESSED, required[0])])
    assert AMBIENT_ACCOUNT in events[0].text and "us-east-1" in events[0].text

    # A third sync finds nothing new: drift is what changed since the previous sync.
    sync.sync_region(account, "us-east-1")
    assert DriftEvent.objects.count() == 3
    assert set(optional).isdisjoint({e.instance.instance_id for e in DriftEvent.objects.all()})

    # Each sync wrote its region's bucket for this hour and the fleet row, equal to the summary.
    summary = RegionPosture.objects.values(*COUNTERS).get(account=account, region="us-east-1")
    bucket = history.bucket_of(timezone.now())
    assert PostureSnapshot.objects.values(*COUNTERS).get(account=account, region="us-east-1", bucket=bucket) == summary
    assert FleetSnapshot.objects.values(*COUNTERS).get(bucket=bucket) == summary
    assert summary["total"] == 8 and summary["enforced"] == 2


@pytest.mark.django_db(transaction=True)
def test_a_change_imdsweb_made_during_the_sync_is_not_drift(moto_endpoint):
    account = AccountFactory(account_id=AMBIENT_ACCOUNT, regions=["us-east-1"])
    instance = InstanceFactory(account=account, http_tokens="required")
    run = sync._start_run(account, "us-east-1")
    observer = history.SyncObserver(run)
    page = [{"InstanceId": instance.instance_id, "MetadataOptions": {"HttpTokens": "optional", "HttpEndpoint": "enabled"}}]
    observer.page(page)
    assert observer.regressed == {instance.pk}
    # ... but the change engine submitted a rollback of it after the run started.
    ChangeItemFactory(instance=instance, submitted_at=timezone.now(), state="applied")
    run.status = SyncStatus.SUCCEEDED
    run.save()
    observer.finish()
    assert not DriftEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_sync_failing_and_unreadable_account_are_news_once(moto_endpoint, monkeypatch):
    account = AccountFactory(account_id=AMBIENT_ACCOUNT, regions=["us-east-1"])
    assert sync.sync_region(account, "us-east-1").status == SyncStatus.SUCCEEDED

    def denied(*args, **kwargs):
        raise aws.PermanentAwsError("AccessDenied", "not authorized to perform sts:AssumeRole")

    monkeypatch.setattr(aws, "describe_instance_pages", denied)
    first = sync.sync_region(account, "us-east-1")
    sync.sync_region(account, "us-east-1")  # still failing: no second message

    events = list(NotificationEvent.objects.order_by("kind"))
    assert [(e.kind, e.key) for e in events] == [
        (EventKind.ACCOUNT_UNREADABLE, f"unreadable:{first.pk}"), (EventKind.SYNC_FAILING, f"sync:{first.pk}")]
    assert "AccessDenied" in events[0].text and AMBIENT_ACCOUNT in events[0].text


@pytest.mark.django_db
def test_snapshot_all_gives_every_region_a_point_and_is_idempotent_per_hour():
    a, b = AccountFactory(), AccountFactory()
    InstanceFactory(account=a, http_tokens="required")
    InstanceFactory(account=a, region="eu-west-1")
    InstanceFactory(account=b)
    posture.refresh_all()
    now = timezone.now().replace(minute=10)
    assert history.snapshot_all(now) == 3
    InstanceFactory(account=b, http_tokens="required")
    posture.refresh_all()
    history.snapshot_all(now.replace(minute=50))  # the same hour: overwritten, not added
    assert PostureSnapshot.objects.count() == 3
    fleet = FleetSnapshot.objects.get()
    assert (fleet.bucket, fleet.total, fleet.enforced) == (history.bucket_of(now), 4, 2)


@pytest.mark.django_db
def test_prune_keeps_the_last_bucket_of_old_days_and_drops_expired(settings):
    settings.IMDSWEB_HISTORY_RETENTION_DAYS = 400
    settings.IMDSWEB_HISTORY_HOURLY_DAYS = 7
    account = AccountFactory()
    now = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    old_day = (now - timedelta(days=9)).replace(hour=0)
    for hour in (1, 5, 23):
        snap(account, "us-east-1", old_day + timedelta(hours=hour), 10, hour)
        FleetSnapshot.objects.create(bucket=old_day + timedelta(hours=hour), total=10, enforced=hour)
    recent = [snap(account, "us-east-1", now - timedelta(days=2, hours=h), 10, 1) for h in (1, 2)]
    expired = snap(account, "us-east-1", now - timedelta(days=401), 10, 1)
    other_region = snap(account, "eu-west-1", old_day + timedelta(hours=3), 5, 5)

    history.prune(now)

    left = set(PostureSnapshot.objects.values_list("pk", flat=True))
    kept_old = PostureSnapshot.objects.get(region="us-east-1", bucket__date=old_day.date())
    assert kept_old.enforced == 23  # the day's last bucket
    assert left == {kept_old.pk, other_region.pk, *(r.pk for r in recent)}
    assert expired.pk not in left
    assert list(FleetSnapshot.objects.values_list("enforced", flat=True)) == [23]


@pytest.mark.django_db
def test_burndown_series_fleet_scoped_and_daily():
    a, b = AccountFactory(), AccountFactory()
    InstanceFactory(account=a, http_tokens="required")
    InstanceFactory(account=a)
    posture.refresh_all()
    now = timezone.now()
    current = history.bucket_of(now)
    for back, (ta, ea, tb, eb) in {3: (10, 2, 4, 0), 2: (10, 5, 4, 1), 1: (10, 8, 4, 4)}.items():
        bucket = current - timedelta(hours=back)
        snap(a, "us-east-1", bucket, ta, ea)
        snap(b, "eu-west-1", bucket, tb, eb)
        FleetSnapshot.objects.create(bucket=bucket, total=ta + tb, enforced=ea + eb)

    fleet = history.burndown(7, now=now)
    assert [(p.total, p.enforced) for p in fleet] == [(14, 2), (14, 6), (14, 12), (2, 1)]  # last = live summary
    assert fleet[-1].at == now and fleet[0].enforced_pct == 14.3 and fleet[0].allowing_v1 == 12
    by_account = history.burndown(7, account=b, now=now)
    assert [(p.total, p.enforced) for p in by_account] == [(4, 0), (4, 1), (4, 4), (0, 0)]
    by_region = history.burndown(7, region="us-east-1", now=now)
    assert [p.enforced for p in by_region] == [2, 5, 8, 1]
    # Beyond a week: one point per day, the day's last bucket.
    daily = history.burndown(30, now=now)
    days = {p.at.date() for p in daily[:-1]}
    assert len(daily[:-1]) == len(days)
    assert daily[-2].enforced == 12


@pytest.mark.django_db
def test_batch_markers_follow_the_scope():
    a, b = AccountFactory(), AccountFactory()
    in_a = ChangeItemFactory(instance=InstanceFactory(account=a)).batch
    in_b = ChangeItemFactory(instance=InstanceFactory(account=b, region="eu-west-1")).batch
    ChangeBatchFactory(dry_run=True)
    since = timezone.now() - timedelta(days=1)
    assert history.batch_markers(since) == [in_a, in_b]
    assert history.batch_markers(since, account=a) == [in_a]
    assert history.batch_markers(since, region="eu-west-1") == [in_b]


@pytest.mark.django_db
def test_overview_draws_the_burndown_with_batch_markers(viewer):
    account = AccountFactory(account_id="111111111111", name="prod")
    InstanceFactory(account=account, http_tokens="required")
    InstanceFactory(account=account)
    posture.refresh_all()
    now = timezone.now()
    for back, enforced in ((30, 0), (20, 1)):
        bucket = history.bucket_of(now) - timedelta(hours=back)
        snap(account, "us-east-1", bucket, 2, enforced)
        FleetSnapshot.objects.create(bucket=bucket, total=2, enforced=enforced)
    batch = ChangeItemFactory(instance=InstanceFactory(account=account)).batch

    page = viewer.get(OVERVIEW, {"history-days": "7", "history-account": "111111111111"})
    html = page.content.decode()
    assert page.status_code == 200
    assert 'data-series="enforced_pct"' in html and 'data-series="allowing_v1"' in html
    assert html.count("<polyline") == 2
    assert f'href="{batch.get_absolute_url()}" class="chart-marker"' in html
    assert "Burndown: prod" in html
    assert "IMDSv2 enforced 0% → <strong>50%</strong>" in html


@pytest.mark.django_db
@pytest.mark.parametrize("query", [{"history-days": "5"}, {"history-account": "999999999999"},
                                   {"history-region": "mars-1"}, {"history-days": "x' OR 1=1"}])
def test_overview_bad_burndown_scope_is_a_form_error(viewer, query):
    page = viewer.get(OVERVIEW, query)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'class="field-error"' in html
    assert "History starts here" in html and 'data-series="enforced_pct"' in html  # the fleet's 30 days instead


@pytest.mark.django_db
def test_drift_list_and_instance_filter(viewer):
    account = AccountFactory(account_id="111111111111", regions=["us-east-1"])
    new = InstanceFactory(account=account)
    back = InstanceFactory(account=account)
    old = InstanceFactory(account=account)
    fixed = InstanceFactory(account=account, http_tokens="required")
    now = timezone.now()
    for instance, kind, when in ((new, "new_v1", now), (back, "regressed", now - timedelta(days=2)),
                                 (old, "new_v1", now - timedelta(days=20)), (fixed, "new_v1", now)):
        DriftEvent.objects.create(kind=kind, account=account, region="us-east-1", instance=instance, detected_at=when)

    default = viewer.get(reverse("fleet:drift_list")).content.decode()  # a week back by default
    assert new.instance_id in default and back.instance_id in default and old.instance_id not in default
    assert "back to IMDSv1 allowed" in default
    since = (now - timedelta(days=1)).date().isoformat()
    recent = viewer.get(reverse("fleet:drift_list"), {"since": since}).content.decode()
    assert new.instance_id in recent and back.instance_id not in recent
    still = viewer.get(reverse("fleet:drift_list"), {"since": since, "still": "true"}).content.decode()
    assert new.instance_id in still and fixed.instance_id not in still
    kind = viewer.get(reverse("fleet:drift_list"), {"since": "2000-01-01", "kind": "regressed"}).content.decode()
    assert back.instance_id in kind and new.instance_id not in kind
    bad = viewer.get(reverse("fleet:drift_list"), {"since": "yesterday"})
    assert bad.status_code == 200 and b"field-error" in bad.content

    listed = viewer.get(reverse("fleet:instance_list"), {"drift_since": since}).content.decode()
    assert new.instance_id in listed and fixed.instance_id in listed
    assert back.instance_id not in listed and old.instance_id not in listed
    assert Instance.objects.count() == 4


def test_every_beat_entry_names_a_registered_task(settings):
    from imdsweb.celery import app

    app.loader.import_default_modules()
    names = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"fleet.tasks.snapshot_posture", "fleet.tasks.prune_history", "fleet.tasks.notify"} <= names
    assert names <= set(app.tasks)


def _run(account, region, status, days_ago, now):
    started = now - timedelta(days=days_ago)
    return SyncRun.objects.create(account=account, region=region, status=status, started_at=started,
                                  finished_at=None if status == SyncStatus.RUNNING else started + timedelta(minutes=1))


@pytest.mark.django_db
def test_prune_history_deletes_old_runs_but_the_latest_of_each_outcome(settings):
    settings.IMDSWEB_RUN_RETENTION_DAYS = 14
    account = AccountFactory(regions=["us-east-1", "eu-west-1", "ap-south-1"])
    now = timezone.now()
    ok, failed, running = SyncStatus.SUCCEEDED, SyncStatus.FAILED, SyncStatus.RUNNING
    east = {name: _run(account, "us-east-1", status, days, now) for name, status, days in (
        ("old_ok", ok, 30), ("old_failed", failed, 20), ("ok_16_days_ago", ok, 16), ("recent_ok", ok, 3),
        ("last_failed", failed, 1), ("running", running, 0))}
    # Only old runs: the latest success stays however old it is (the overview says "too old", not "never").
    west = {name: _run(account, "eu-west-1", ok, days, now) for name, days in (("older", 30), ("last", 29))}
    # Only failures since long ago: the last one stays, and no success appears.
    south = {name: _run(account, "ap-south-1", failed, days, now) for name, days in (("older", 40), ("last", 39))}
    drift = DriftEvent.objects.create(kind=DriftKind.NEW_V1, account=account, region="us-east-1",
                                      instance=InstanceFactory(account=account), detected_at=now,
                                      sync_run=east["old_ok"])
    source = OrganizationSource.objects.create(management_role_arn="arn:aws:iam::900000000000:role/r")
    discoveries = {name: DiscoveryRun.objects.create(source=source, status=status, started_at=now - timedelta(days=days))
                   for name, status, days in (("older_ok", ok, 60), ("old_failed", failed, 50),
                                              ("last_ok", ok, 40))}
    before = [(s.account.pk, s.region, s.last_run.pk, s.last_success, s.stale, s.reason) for s in posture.sync_states()]

    tasks.prune_history()

    assert set(SyncRun.objects.values_list("pk", flat=True)) == {
        east["recent_ok"].pk, east["last_failed"].pk, east["running"].pk,
        west["last"].pk, south["last"].pk}
    assert set(DiscoveryRun.objects.values_list("pk", flat=True)) == {
        discoveries["old_failed"].pk, discoveries["last_ok"].pk}
    drift.refresh_from_db()
    assert drift.sync_run is None and drift.instance_id
    after = [(s.account.pk, s.region, s.last_run.pk, s.last_success, s.stale, s.reason) for s in posture.sync_states()]
    assert after == before
    assert history.prune_runs(now) == 0  # nothing more to delete: idempotent


@pytest.mark.django_db
def test_prune_runs_deletes_in_batches(settings, monkeypatch):
    settings.IMDSWEB_RUN_RETENTION_DAYS = 1
    monkeypatch.setattr(history, "RUN_DELETE_BATCH", 3)
    account = AccountFactory(regions=["us-east-1"])
    now = timezone.now()
    runs = [_run(account, "us-east-1", SyncStatus.SUCCEEDED, 10 - n * 0.1, now) for n in range(8)]
    assert history.prune_runs(now) == 7
    assert list(SyncRun.objects.values_list("pk", flat=True)) == [runs[-1].pk]
