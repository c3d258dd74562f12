"""Waivers (issue 19): who may grant them, what they cover, the WAIVED outcome of the one decision
rule (PostgreSQL's INSERT ... SELECT and SQLite's bulk_create: this file runs on both), the
posture counting them apart with counters and filters that agree, and expiry."""

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet import changes, history, notify, posture, waivers
from fleet.changes.decision import Outcome
from fleet.choices import EventKind, ItemState, SourceKind, WaiverAction, WaiverScope
from fleet.filters import InstanceFilterSet
from fleet.models import (
    FleetSnapshot,
    Instance,
    NotificationEvent,
    NotificationRule,
    RegionPosture,
    Waiver,
    WaiverEvent,
)
from fleet.models.waivers import utc_today
from fleet.tests.factories import AccountFactory, InstanceFactory, LaunchSourceFactory, UserFactory

pytestmark = pytest.mark.django_db
NEW = reverse("fleet:waiver_new")
LIST = reverse("fleet:waiver_list")
TODAY = utc_today()


def grant(scope=WaiverScope.INSTANCE, days=30, owner="alice", reason="vendor appliance", user=None, **target):
    return waivers.create_waiver(user, Waiver(scope=scope, owner=owner, reason=reason,
                                              expires_on=TODAY + timedelta(days=days), **target))


def client_for(role):
    client = Client()
    if role:
        client.force_login(UserFactory(role=role))
    return client


def form_data(**overrides):
    return {"scope": "instance", "owner": "alice", "reason": "vendor appliance",
            "expires_on": (TODAY + timedelta(days=30)).isoformat(), **overrides}


# ------------------------------------------------------------------ who may do what


def test_everyone_signed_in_sees_waivers_only_admins_grant_extend_or_revoke():
    instance = InstanceFactory()
    waiver = grant(instance=instance)
    reads = [LIST, waiver.get_absolute_url(), instance.get_absolute_url()]
    writes = [(NEW, "get", None), (NEW, "post", form_data(instance_id=instance.instance_id)),
              (reverse("fleet:waiver_extend", args=[waiver.pk]), "post",
               {"expires_on": (TODAY + timedelta(days=60)).isoformat()}),
              (reverse("fleet:waiver_revoke", args=[waiver.pk]), "post", {"comment": "done"})]
    outsider = client_for(None)
    for url in reads + [url for url, *_ in writes]:
        assert outsider.get(url).status_code == 302, url
    for role in ("viewer", "operator"):
        client = client_for(role)
        for url in reads:
            assert client.get(url).status_code == 200, (role, url)
        for url, method, data in writes:
            response = getattr(client, method)(url, data)
            assert response.status_code == 403, (role, url)
            assert "needs the admin role" in response.content.decode()
        assert "Grant a waiver" not in client.get(instance.get_absolute_url()).content.decode()
    assert Waiver.objects.count() == 1 and waiver.events.count() == 1  # nothing written by them
    admin = client_for("admin")
    assert "Grant a waiver" in admin.get(instance.get_absolute_url()).content.decode()
    assert admin.get(f"{NEW}?scope=instance&instance_id={instance.instance_id}").status_code == 200


def test_an_admin_grants_extends_and_revokes_and_every_step_is_audited():
    admin_user = UserFactory(role="admin", username="root")
    admin = Client()
    admin.force_login(admin_user)
    instance = InstanceFactory(tags={"app": "vendor-appliance"})
    response = admin.post(NEW, form_data(scope="tag", tag="app=vendor-appliance"))
    waiver = Waiver.objects.get()
    assert response.status_code == 302 and response["Location"] == waiver.get_absolute_url()
    assert (waiver.created_by, waiver.tag_key, waiver.tag_value) == (admin_user, "app", "vendor-appliance")
    instance.refresh_from_db()
    assert instance.waiver == waiver

    later = TODAY + timedelta(days=90)
    response = admin.post(reverse("fleet:waiver_extend", args=[waiver.pk]),
                          {"expires_on": later.isoformat(), "comment": "vendor fix slipped"})
    assert response.status_code == 302
    waiver.refresh_from_db()
    assert waiver.expires_on == later
    response = admin.post(reverse("fleet:waiver_revoke", args=[waiver.pk]), {"comment": "appliance replaced"})
    assert response.status_code == 302
    instance.refresh_from_db()
    assert instance.waiver is None
    events = list(waiver.events.order_by("id").values_list("action", "user__username", "comment"))
    assert events == [(WaiverAction.CREATED, "root", ""), (WaiverAction.EXTENDED, "root", "vendor fix slipped"),
                      (WaiverAction.REVOKED, "root", "appliance replaced")]
    extended = waiver.events.get(action=WaiverAction.EXTENDED)
    assert extended.detail == {"expires_on": [(TODAY + timedelta(days=30)).isoformat(), later.isoformat()]}
    page = admin.get(waiver.get_absolute_url()).content.decode()
    assert "vendor fix slipped" in page and "appliance replaced" in page and "revoked" in page
    # A revoked waiver cannot be extended: refused with the reason, never a 500.
    response = admin.post(reverse("fleet:waiver_extend", args=[waiver.pk]), {"expires_on": later.isoformat()})
    assert response.status_code == 409 and "is revoked" in response.content.decode()


@pytest.mark.parametrize("data, field, message", [
    ({"expires_on": (TODAY - timedelta(days=1)).isoformat(), "instance_id": "INSTANCE"}, "expires_on", "in the past"),
    ({"expires_on": (TODAY + timedelta(days=366)).isoformat(), "instance_id": "INSTANCE"}, "expires_on",
     "At most 365 days ahead"),
    ({"expires_on": "", "instance_id": "INSTANCE"}, "expires_on", "required"),
    ({"expires_on": "31/02/2027", "instance_id": "INSTANCE"}, "expires_on", "valid date"),
    ({"instance_id": "i-00000000000000bad"}, "instance_id", "No present instance i-00000000000000bad"),
    ({"instance_id": "web-1"}, "instance_id", "looks like i-0123456789abcdef0"),
    ({"instance_id": ""}, "instance_id", "Required for a waiver of one instance"),
    ({"scope": "tag", "tag": "no-equals-sign"}, "tag", "A tag selector is key=value"),
    ({"scope": "tag", "tag": "=value"}, "tag", "A tag selector is key=value"),
    ({"scope": "source", "source": "999999"}, "source", "No launch source #999999"),
    ({"scope": "source", "source": "lt-1"}, "source", "Enter a whole number"),
    ({"scope": "account", "account": "999999999999"}, "account", "No account 999999999999 is registered"),
    ({"scope": "account", "account": "12"}, "account", "exactly 12 digits"),
    ({"scope": "account", "account": "ACCOUNT", "region": "ap-south-2"}, "region",
     "ap-south-2 is not a region of account"),
    ({"scope": "moon", "instance_id": "INSTANCE"}, "scope", "Select a valid choice"),
    ({"owner": "", "instance_id": "INSTANCE"}, "owner", "required"),
])
def test_bad_input_is_a_form_error_never_a_500(data, field, message):
    instance = InstanceFactory()
    data = {key: value.replace("INSTANCE", instance.instance_id).replace("ACCOUNT", instance.account.account_id)
            for key, value in data.items()}
    response = client_for("admin").post(NEW, form_data(**data))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert field in errors and message in " ".join(errors[field]), errors
    assert message in response.content.decode().replace("&#x27;", "'")
    assert not Waiver.objects.exists()


def test_extending_needs_a_later_date_within_the_maximum(settings):
    settings.IMDSWEB_WAIVER_MAX_DAYS = 100
    waiver = grant(instance=InstanceFactory(), days=10)
    admin = client_for("admin")
    url = reverse("fleet:waiver_extend", args=[waiver.pk])
    for days, message in ((5, "Extending means a date after the current one"), (101, "At most 100 days ahead")):
        response = admin.post(url, {"expires_on": (TODAY + timedelta(days=days)).isoformat()})
        assert response.status_code == 400
        assert message in " ".join(response.context["extend_form"].errors["expires_on"])
    assert admin.post(url, {"expires_on": (TODAY + timedelta(days=100)).isoformat()}).status_code == 302
    assert admin.post(reverse("fleet:waiver_revoke", args=[waiver.pk]), {}).status_code == 400  # why is required


# ------------------------------------------------------------------ what a waiver covers


def test_each_scope_covers_its_instances_and_the_latest_expiry_wins():
    prod = AccountFactory()
    template = LaunchSourceFactory(account=prod)
    group = LaunchSourceFactory(account=prod, kind=SourceKind.AUTO_SCALING_GROUP, source_id="web-asg")
    one = InstanceFactory(account=prod)
    tagged = InstanceFactory(account=prod, tags={"app": "vendor", "Name": "x"})
    launched = InstanceFactory(account=prod, launch_template_id=template.source_id)
    in_group = InstanceFactory(account=prod, autoscaling_group="web-asg")
    in_region = InstanceFactory(account=prod, region="eu-west-1")
    other = InstanceFactory()
    w_one = grant(instance=one)
    w_tag = grant(scope=WaiverScope.TAG, tag_key="app", tag_value="vendor")
    w_template = grant(scope=WaiverScope.SOURCE, source=template)
    w_group = grant(scope=WaiverScope.SOURCE, source=group)
    w_region = grant(scope=WaiverScope.ACCOUNT, account=prod, region="eu-west-1")
    expected = {one: w_one, tagged: w_tag, launched: w_template, in_group: w_group, in_region: w_region, other: None}
    assert {i: Instance.objects.get(pk=i.pk).waiver for i in expected} == expected
    # The whole account, longer: it covers every instance of the account now (the one expiring last).
    w_account = grant(scope=WaiverScope.ACCOUNT, account=prod, days=200)
    assert set(Instance.objects.filter(waiver=w_account)) == {one, tagged, launched, in_group, in_region}
    waivers.revoke_waiver(None, w_account)
    assert {i: Instance.objects.get(pk=i.pk).waiver for i in expected} == expected


def test_a_sync_puts_new_and_retagged_instances_under_their_waiver():
    account = AccountFactory()
    waiver = grant(scope=WaiverScope.TAG, tag_key="aws:autoscaling:groupName", tag_value="vendor__asg")
    new = InstanceFactory(account=account, tags={"aws:autoscaling:groupName": "vendor__asg"})
    retagged = InstanceFactory(account=account, tags={})
    waiver.refresh_from_db()
    assert Instance.objects.get(pk=new.pk).waiver is None  # written after the waiver, as a sync writes
    Instance.objects.filter(pk=retagged.pk).update(tags={"aws:autoscaling:groupName": "vendor__asg"})
    changed = waivers.apply_waivers([(account.pk, "us-east-1")])
    assert changed == {(account.pk, "us-east-1")}
    assert set(Instance.objects.filter(waiver=waiver)) == {new, retagged}
    assert RegionPosture.objects.get(account=account, region="us-east-1").waived == 2


# ------------------------------------------------------------------ the decision rule


@pytest.fixture
def waived_fleet():
    account = AccountFactory(name="prod")
    waived = InstanceFactory(account=account, name="appliance", v1_calls=12)  # held too, but waived first
    plain = InstanceFactory(account=account, name="web")
    enforced = InstanceFactory(account=account, http_tokens="required")
    waiver = grant(scope=WaiverScope.TAG, tag_key="Name", tag_value="appliance", owner="alice")
    Instance.objects.filter(pk=enforced.pk).update(waiver=waiver)  # a waiver on an enforced one: already wins
    return {"waived": waived, "plain": plain, "enforced": enforced, "waiver": waiver}


def test_waived_instances_are_skipped_with_the_waiver_as_the_reason(waived_fleet):
    selected = Instance.objects.filter(pk__in=[i.pk for i in waived_fleet.values() if isinstance(i, Instance)])
    plan = changes.plan_change(selected, changes.REQUIRE_IMDSV2)
    assert (plan.total, plan.to_change, plan.already, plan.waived, plan.held) == (3, 1, 1, 1, 0)
    assert plan.reconciles and plan.outcomes[Outcome.WAIVED] == 1
    assert plan.per_region[0]["waived"] == 1
    batch = changes.request_change(None, selected, changes.REQUIRE_IMDSV2)
    item = batch.items.get(instance=waived_fleet["waived"])
    until = (TODAY + timedelta(days=30)).isoformat()
    assert (item.state, item.outcome, item.reason) == (
        ItemState.SKIPPED, Outcome.WAIVED, f"waived until {until} by alice: vendor appliance")
    assert item.reason == waived_fleet["waiver"].reason_text
    assert batch.items.get(instance=waived_fleet["plain"]).state == ItemState.QUEUED
    assert {code: batch.items.filter(outcome=code).count() for code in Outcome.values} == plan.outcomes


def test_the_override_applies_to_waived_instances_for_that_batch_only(waived_fleet):
    selected = Instance.objects.filter(pk=waived_fleet["waived"].pk)
    with pytest.raises(changes.ChangeRefused, match="1 waived .* queued only with the waiver override ticked"):
        changes.request_change(None, selected, changes.REQUIRE_IMDSV2)
    plan = changes.plan_change(selected, changes.REQUIRE_IMDSV2, override_waivers=True)
    assert (plan.waived, plan.held) == (0, 1)  # the readiness gate still holds its IMDSv1 calls
    batch = changes.request_change(None, selected, changes.REQUIRE_IMDSV2, override_waivers=True, override_usage=True)
    assert batch.override_waivers and batch.items.get().state == ItemState.QUEUED
    assert Instance.objects.get(pk=waived_fleet["waived"].pk).waiver == waived_fleet["waiver"]  # still waived


def test_a_waiver_exempts_only_from_what_breaks_an_imdsv1_caller(waived_fleet):
    selected = Instance.objects.filter(pk=waived_fleet["waived"].pk)
    assert changes.plan_change(selected, {"hop_limit": 2}).to_change == 1
    assert changes.plan_change(selected, {"http_endpoint": "disabled"}).waived == 1


def test_a_waiver_past_its_date_stops_exempting_at_once(waived_fleet):
    """Before the expiry task has run: the rule reads the waiver's date."""
    Waiver.objects.filter(pk=waived_fleet["waiver"].pk).update(expires_on=TODAY - timedelta(days=1))
    selected = Instance.objects.filter(pk=waived_fleet["waived"].pk)
    assert Instance.objects.get(pk=waived_fleet["waived"].pk).waiver_id == waived_fleet["waiver"].pk
    plan = changes.plan_change(selected, changes.REQUIRE_IMDSV2)
    assert (plan.waived, plan.held) == (0, 1)


def test_the_confirmation_page_links_the_waived_count_to_exactly_those_instances(operator, waived_fleet):
    ids = "&".join(f"ids={waived_fleet[k].instance_id}" for k in ("waived", "plain", "enforced"))
    response = operator.get(reverse("fleet:change_new") + f"?{ids}&http_tokens=required")
    html = response.content.decode()
    assert 'id="plan-waived"' in html and 'data-count="1"' in html
    assert "Apply to waived instances too (this batch only)" in html
    assert "1 instance(s) are covered by an active waiver and will be skipped" in html
    listed = operator.get(response.context["outcome_links"]["waived"])
    assert [row.record.instance_id for row in listed.context["table"].paginated_rows] == [
        waived_fleet["waived"].instance_id]
    response = operator.get(reverse("fleet:change_new") + f"?{ids}&http_tokens=required&override_waivers=on")
    assert response.context["preview"].waived == 0
    response = operator.post(reverse("fleet:change_new"), {
        "ids": [waived_fleet[k].instance_id for k in ("waived", "plain")], "http_tokens": "required",
        "override_waivers": "on", "override_usage": "on", "request_token": "t-waivers"})
    assert response.status_code == 302
    batch = waived_fleet["waived"].change_items.get().batch
    assert batch.override_waivers and batch.items.filter(state=ItemState.QUEUED).count() == 2


# ------------------------------------------------------------------ the posture


def test_waived_instances_are_counted_apart_and_the_counters_partition_the_fleet(waived_fleet):
    posture.refresh_all()
    totals = posture.fleet_totals()
    assert (totals["total"], totals["enforced"], totals["waived"], totals["not_enforced"]) == (3, 1, 1, 1)
    assert totals["total"] == (totals["enforced"] + totals["waived"] + totals["safe_to_enforce"]
                               + totals["not_enforced_in_use"] + totals["not_enforced_unmeasured"])
    assert totals["not_enforced_in_use"] == 0  # the waived one's IMDSv1 calls are not "to fix"


def test_every_summary_count_agrees_with_counting_the_rows_with_waivers():
    accounts = [AccountFactory(), AccountFactory()]
    for n in range(24):
        InstanceFactory(account=accounts[n % 2], region=("us-east-1", "eu-west-1")[n % 3 % 2],
                        tags={"team": "vendor" if n % 3 == 0 else "web"}, v1_calls=(None, 0, 4)[n % 3],
                        http_tokens="required" if n % 4 == 0 else "optional",
                        instance_state="terminated" if n % 7 == 0 else "running", hop_limit=1 + n % 2)
    grant(scope=WaiverScope.TAG, tag_key="team", tag_value="vendor")
    grant(scope=WaiverScope.ACCOUNT, account=accounts[1], region="eu-west-1", days=5)
    posture.refresh_all()
    assert RegionPosture.objects.filter(waived__gt=0).count() >= 2
    for filters in posture.summary_filters(hop_limits=(1, 2)):
        for account in accounts:
            filterset = InstanceFilterSet({**filters, "account": account.account_id}, queryset=Instance.objects.all())
            assert filterset.is_valid(), filterset.errors
            assert filterset.summary_count() == filterset.qs.count(), (filters, account)


def test_the_overview_tile_and_the_history_show_the_waived(viewer, waived_fleet):
    posture.refresh_all()
    html = viewer.get(reverse("fleet:overview")).content.decode()
    assert 'href="/instances/?posture=waived" data-count="1"' in html
    listed = viewer.get(reverse("fleet:instance_list") + "?posture=waived")
    assert listed.context["total"] == 1
    history.snapshot_all()
    assert FleetSnapshot.objects.get().waived == 1
    page = viewer.get(waived_fleet["waived"].get_absolute_url()).content.decode()
    assert "waived until" in page and waived_fleet["waiver"].get_absolute_url() in page
    # The waiver's page links its instances to a list of exactly that many.
    waiver_page = viewer.get(waived_fleet["waiver"].get_absolute_url())
    assert 'data-count="2"' in waiver_page.content.decode()  # the waived one and the enforced one
    covered = viewer.get(reverse("fleet:instance_list") + f"?waiver={waived_fleet['waiver'].pk}")
    assert covered.context["total"] == 2


# ------------------------------------------------------------------ expiry


def test_expiry_is_audited_notified_and_counts_the_instances_as_non_compliant_again(waived_fleet):
    rule = NotificationRule.objects.create(name="waivers", event=EventKind.WAIVER_EXPIRED,
                                           email_to="sec@example.com", interval_minutes=1)
    posture.refresh_all()
    assert posture.fleet_totals()["waived"] == 1
    waiver = waived_fleet["waiver"]
    assert waivers.expire_waivers() == []  # nothing due yet
    Waiver.objects.filter(pk=waiver.pk).update(expires_on=TODAY - timedelta(days=1))
    [expired] = waivers.expire_waivers()
    assert expired.pk == waiver.pk and expired.expired_at is not None
    assert waivers.expire_waivers() == []  # once
    assert WaiverEvent.objects.filter(waiver=waiver, action=WaiverAction.EXPIRED, user=None).count() == 1
    event = NotificationEvent.objects.get(kind=EventKind.WAIVER_EXPIRED)
    assert f"waiver #{waiver.pk}" in event.text and "2 instance(s) it exempted count as non-compliant again" in event.text
    assert Instance.objects.filter(waiver__isnull=False).count() == 0
    totals = posture.fleet_totals()
    assert (totals["waived"], totals["not_enforced"], totals["not_enforced_in_use"]) == (0, 2, 1)
    [delivery] = notify.dispatch(now=timezone.now())
    assert delivery.rule == rule and f"waiver #{waiver.pk}" in delivery.body
    # The list: expired, not active.
    viewer = client_for("viewer")
    assert viewer.get(LIST).context["table"].paginator.count == 0
    assert viewer.get(LIST + "?status=expired").context["table"].paginator.count == 1


def test_the_expiry_task_runs_every_minute(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["expire-waivers"]
    assert entry["task"] == "fleet.tasks.expire_waivers" and entry["schedule"] == timedelta(seconds=60)


def test_the_api_lists_waivers_read_only():
    from fleet.models import ApiToken

    user = UserFactory(role="viewer")
    waiver = grant(instance=InstanceFactory())
    _, key = ApiToken.issue(user, "t")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = client.get("/api/v1/waivers/").json()
    [row] = body["results"]
    assert (row["id"], row["scope"], row["owner"], row["status"], row["instances"]) == (
        waiver.pk, "instance", "alice", "active", 1)
    assert client.post("/api/v1/waivers/", {}).status_code == 405


def test_the_api_plans_and_queues_with_or_without_the_waiver_override(waived_fleet):
    from fleet.models import ApiToken

    _, key = ApiToken.issue(UserFactory(role="operator"), "t")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
    body = {"ids": [waived_fleet["waived"].instance_id, waived_fleet["plain"].instance_id],
            "http_tokens": "required", "override_usage": True}
    plan = client.post("/api/v1/changes/plan/", body, content_type="application/json").json()
    assert (plan["waived"], plan["to_change"]) == (1, 1)
    plan = client.post("/api/v1/changes/plan/", {**body, "override_waivers": True},
                       content_type="application/json").json()
    assert (plan["waived"], plan["to_change"]) == (0, 2)
    batch = client.post("/api/v1/changes/", {"plan_token": plan["plan_token"]}, content_type="application/json")
    assert batch.status_code == 201 and batch.json()["override_waivers"] is True


@pytest.mark.django_db(transaction=True)
def test_a_sync_applies_waivers_to_what_it_finds(moto_endpoint):
    """Through a real sync (moto over HTTP): launches tagged after the waiver are waived, an
    instance re-tagged away is not any more, and the summary counts them."""
    from fleet import sync
    from fleet.tests.conftest import AMBIENT_ACCOUNT, ec2_in
    from imdssim.testing import launch

    ec2 = ec2_in(moto_endpoint, AMBIENT_ACCOUNT, "us-east-1")
    ids = launch(ec2, 3)
    ec2.create_tags(Resources=ids[:2], Tags=[{"Key": "app", "Value": "vendor-appliance"}])
    account = AccountFactory(account_id=AMBIENT_ACCOUNT, regions=["us-east-1"])
    other_region = grant(scope=WaiverScope.ACCOUNT, account=account, region="eu-west-1")  # cannot reach us-east-1
    waiver = grant(scope=WaiverScope.TAG, tag_key="app", tag_value="vendor-appliance")
    sync.sync_region(account, "us-east-1")
    assert set(Instance.objects.filter(waiver=waiver).values_list("instance_id", flat=True)) == set(ids[:2])
    assert not Instance.objects.filter(waiver=other_region).exists()
    assert RegionPosture.objects.get(account=account, region="us-east-1").waived == 2
    ec2.delete_tags(Resources=[ids[0]], Tags=[{"Key": "app"}])
    sync.sync_region(account, "us-east-1")
    assert list(Instance.objects.filter(waiver=waiver).values_list("instance_id", flat=True)) == [ids[1]]
    row = RegionPosture.objects.get(account=account, region="us-east-1")
    assert (row.waived, row.total - row.enforced - row.waived) == (1, 2)


def test_metrics_serve_the_waived_gauge(client, waived_fleet):
    from fleet.tests.test_metrics import parse

    posture.refresh_all()
    samples = parse(client.get("/metrics"))
    labels = (("account_id", waived_fleet["waived"].account.account_id), ("region", "us-east-1"))
    assert samples[("imdsweb_instances_waived", labels)] == 1
    assert samples[("imdsweb_instances_allowing_imdsv1", labels)] == 2  # what AWS holds: waived ones allow it


def test_the_waiver_list_costs_the_same_queries_for_2_or_30_waivers(viewer):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries(n):
        for _ in range(n):
            grant(instance=InstanceFactory(), user=UserFactory())
        with CaptureQueriesContext(connection) as ctx:
            response = viewer.get(LIST + "?status=all")
        assert response.status_code == 200
        # The waivers' own queries: the session's sliding expiry writes now and then (signin).
        return len([q for q in ctx.captured_queries if "fleet_" in q["sql"]])

    assert queries(2) == queries(28)


def test_the_source_page_offers_admins_a_waiver_of_the_source():
    source = LaunchSourceFactory()
    admin = client_for("admin")
    html = admin.get(source.get_absolute_url()).content.decode()
    assert f"{NEW}?scope=source&amp;source={source.pk}" in html
    assert admin.get(f"{NEW}?scope=source&source={source.pk}").context["form"].initial["source"] == str(source.pk)
    assert f"{NEW}?scope=source" not in client_for("operator").get(source.get_absolute_url()).content.decode()
