"""Issue 13, sections 1-3: the readiness gate fails closed, the one decision rule, rollback that
never undoes someone else's work, and concurrent or repeated actions that never 500 nor create
empty batches."""

import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet import aws, changes, tasks, usage
from fleet.changes.decision import Outcome
from fleet.choices import ChangeKind, ItemState
from fleet.models import ChangeBatch, ChangeItem, Instance, UsageReading
from fleet.tests.factories import (
    AccountFactory,
    ChangeBatchFactory,
    ChangeItemFactory,
    InstanceFactory,
    MetadataDefaultsFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
NEW = reverse("fleet:change_new")
LONG_AGO = timezone.now() - timedelta(days=30)


def ids(*instances):
    return "&".join(f"ids={i.instance_id}" for i in instances)


@pytest.fixture
def every_branch():
    """One instance per outcome of the decision rule (two accounts, two regions)."""
    prod, dev = AccountFactory(name="prod"), AccountFactory(name="dev")
    busy_batch = ChangeBatchFactory(desired={"hop_limit": 2})
    busy = InstanceFactory(account=prod, name="busy")
    ChangeItemFactory(batch=busy_batch, instance=busy, state="pending")
    return {
        "queued": InstanceFactory(account=prod, name="ok"),
        "already": InstanceFactory(account=prod, http_tokens="required"),
        "terminated": InstanceFactory(account=dev, instance_state="terminated"),
        "shutting": InstanceFactory(account=dev, region="eu-west-1", instance_state="shutting-down"),
        "busy": busy,
        "calls": InstanceFactory(account=dev, region="eu-west-1", v1_calls=7),
        "error": InstanceFactory(account=dev, v1_calls=None, usage_synced_at=None,
                                 usage_error="AccessDenied: not authorized to perform cloudwatch:GetMetricData"),
        "never": InstanceFactory(account=prod, region="eu-west-1", v1_calls=None, usage_synced_at=None),
        "stale": InstanceFactory(account=prod, v1_calls=0, usage_synced_at=LONG_AGO),
        "busy_batch": busy_batch,
    }


EXPECTED = {
    "queued": (ItemState.QUEUED, Outcome.QUEUED, ""),
    "already": (ItemState.SKIPPED, Outcome.ALREADY, "already http_tokens=required"),
    "terminated": (ItemState.SKIPPED, Outcome.TERMINATED, "instance is terminated"),
    "shutting": (ItemState.SKIPPED, Outcome.TERMINATED, "instance is shutting-down"),
    "busy": (ItemState.SKIPPED, Outcome.BUSY, "another change is in progress (batch #{busy})"),
    "calls": (ItemState.HELD, Outcome.HELD_CALLS, "7 IMDSv1 call(s) in the last 14 days; enforcing IMDSv2 would "
                                                  "break the caller"),
    "error": (ItemState.HELD, Outcome.HELD_ERROR, "IMDSv1 use could not be measured (AccessDenied: not authorized "
                                                  "to perform cloudwatch:GetMetricData); enforcing IMDSv2 could "
                                                  "break a caller"),
    "never": (ItemState.HELD, Outcome.HELD_UNMEASURED, "IMDSv1 use never measured; enforcing IMDSv2 could break a "
                                                       "caller"),
    "stale": (ItemState.HELD, Outcome.HELD_STALE, "IMDSv1 use not measured since {stale}; enforcing IMDSv2 could "
                                                  "break a caller"),
}


def test_every_branch_of_the_rule_on_this_database(every_branch):
    """The items (INSERT ... SELECT on PostgreSQL, bulk_create on SQLite) and the plan agree, branch
    by branch, with the exact reasons — including the busy reason with its batch number."""
    selected = Instance.objects.filter(pk__in=[v.pk for k, v in every_branch.items() if k != "busy_batch"])
    plan = changes.plan_change(selected, changes.REQUIRE_IMDSV2)
    batch = changes.request_change(None, selected, changes.REQUIRE_IMDSV2)
    stale = every_branch["stale"].usage_synced_at.strftime("%Y-%m-%d %H:%M UTC")
    for name, (state, outcome, reason) in EXPECTED.items():
        item = batch.items.get(instance=every_branch[name])
        expected_reason = reason.format(busy=every_branch["busy_batch"].pk, stale=stale)
        assert (item.state, item.outcome, item.reason) == (state, outcome, expected_reason), name
    assert plan.outcomes[Outcome.HELD_UNMEASURED] == plan.outcomes[Outcome.HELD_STALE] == 1
    assert (plan.total, plan.to_change, plan.already, plan.held, plan.busy, plan.unreachable) == (9, 1, 1, 4, 1, 2)
    assert plan.reconciles
    by_outcome = {code: batch.items.filter(outcome=code).count() for code in Outcome.values}
    assert by_outcome == plan.outcomes


def test_override_queues_what_the_gate_holds(every_branch):
    selected = Instance.objects.filter(pk__in=[every_branch[k].pk for k in ("calls", "error", "never", "stale")])
    plan = changes.plan_change(selected, changes.REQUIRE_IMDSV2, override_usage=True)
    assert (plan.to_change, plan.held) == (4, 0)


def test_unmeasured_instances_are_held_and_said_so_on_the_confirmation_page(operator):
    never = InstanceFactory(v1_calls=None, usage_synced_at=None)
    stale = InstanceFactory(account=never.account, v1_calls=0, usage_synced_at=LONG_AGO)
    ok = InstanceFactory(account=never.account)
    response = operator.get(f"{NEW}?{ids(never, stale, ok)}&http_tokens=required")
    plan = response.context["preview"]
    assert (plan.to_change, plan.held) == (1, 2)
    html = response.content.decode()
    assert "1 instance(s) have IMDSv1 use never measured and will be held back" in html
    assert "have IMDSv1 use not measured for more than 12 hours" in html
    assert "Measure IMDSv1 use now" in html
    assert f'value="{never.account.pk}/us-east-1"' in html


def test_each_bucket_links_to_a_list_of_the_same_size(operator, every_branch):
    selected = [v for k, v in every_branch.items() if k != "busy_batch"]
    stopped = InstanceFactory(account=every_branch["queued"].account, instance_state="stopped")
    container = InstanceFactory(account=every_branch["queued"].account, name="eks-node-1", hop_limit=1)
    response = operator.get(f"{NEW}?{ids(*selected, stopped, container)}&http_tokens=required")
    plan, links = response.context["preview"], response.context["outcome_links"]
    expected = {"queued": plan.to_change, "already": plan.already, "held": plan.held, "busy": plan.busy,
                "unreachable": plan.unreachable, "stopped": plan.stopped, "containers": plan.hop_limit_one_containers,
                **{code: plan.outcomes[code] for code in Outcome.held()}}
    assert plan.stopped == 1 and plan.hop_limit_one_containers == 1 and plan.reconciles
    for bucket, count in expected.items():
        listed = operator.get(links[bucket] + "&gone=all")
        assert listed.status_code == 200, bucket
        assert listed.context["total"] == count, bucket
    html = response.content.decode()
    for bucket, _message in plan.warnings:
        assert links[bucket].replace("&", "&amp;") in html


def test_the_outcome_filter_refuses_a_bad_change(operator):
    response = operator.get(reverse("fleet:instance_list") + "?outcome=held&change=http_tokens=bogus")
    assert response.status_code == 200
    assert response.context["filter"].errors["change"]


# ---------------------------------------------------------------- reading usage


def test_a_cloudwatch_permission_error_holds_with_the_reason(monkeypatch):
    instance = InstanceFactory(v1_calls=None, usage_synced_at=None)

    def denied(*args, **kwargs):
        raise aws.PermanentAwsError("AccessDenied", "not authorized to perform: cloudwatch:GetMetricData")

    monkeypatch.setattr(aws, "get_metadata_usage", denied)
    with pytest.raises(aws.PermanentAwsError):
        usage.sync_usage(instance.account, instance.region)
    instance.refresh_from_db()
    assert instance.v1_calls is None  # never "no calls"
    assert instance.usage_error.startswith("AccessDenied")
    reading = UsageReading.objects.get(account=instance.account, region=instance.region)
    assert reading.read_at is None and "GetMetricData" in reading.error
    plan = changes.plan_change(Instance.objects.filter(pk=instance.pk), changes.REQUIRE_IMDSV2)
    assert plan.outcomes[Outcome.HELD_ERROR] == 1
    with pytest.raises(changes.ChangeRefused, match="IMDSv1 use could not be read"):
        changes.request_change(None, Instance.objects.filter(pk=instance.pk), changes.REQUIRE_IMDSV2)


def test_first_sync_of_a_new_region_reads_usage_right_after(monkeypatch):
    account = AccountFactory(regions=["us-east-1"])
    queued = []
    monkeypatch.setattr(tasks.sync, "sync_region", lambda a, r: type("Run", (), {"status": "succeeded"})())
    monkeypatch.setattr(tasks.sync_usage_region, "delay", lambda *args: queued.append(args))
    tasks.sync_account_region(account.pk, "us-east-1")
    assert queued == [(account.pk, "us-east-1")]
    UsageReading.objects.create(account=account, region="us-east-1", read_at=timezone.now())
    tasks.sync_account_region(account.pk, "us-east-1")
    assert len(queued) == 1  # a fresh reading: the 6-hourly round will do
    UsageReading.objects.filter(account=account).update(read_at=LONG_AGO)
    tasks.sync_account_region(account.pk, "us-east-1")
    assert len(queued) == 2


def test_fleet_sync_reads_usage_unless_told_not_to(monkeypatch):
    account = AccountFactory(regions=["us-east-1"])
    called = []
    monkeypatch.setattr("fleet.management.commands.fleet_sync.sync.sync_region",
                        lambda a, r: type("Run", (), {"status": "succeeded", "seen": 0, "new": 0, "changed": 0,
                                                      "gone": 0, "duration": timedelta(seconds=1)})())
    monkeypatch.setattr("fleet.management.commands.fleet_sync.usage_stage.sync_usage",
                        lambda a, r: called.append((a.pk, r)) or (0, 0, 0))
    call_command("fleet_sync", stdout=open("/dev/null", "w"))
    assert called == [(account.pk, "us-east-1")]
    call_command("fleet_sync", "--no-usage", stdout=open("/dev/null", "w"))
    assert len(called) == 1


def test_measure_now_records_the_request_and_the_page_follows_it(operator, monkeypatch):
    instance = InstanceFactory(v1_calls=None, usage_synced_at=None)
    sent = []
    monkeypatch.setattr(tasks.sync_usage_region, "delay", lambda *args: sent.append(args))
    confirm = f"{NEW}?ids={instance.instance_id}&http_tokens=required"
    response = operator.post(reverse("fleet:measure_usage"),
                             {"targets": f"{instance.account.pk}/{instance.region}", "next": confirm})
    assert response.status_code == 302 and response["Location"] == confirm
    assert sent == [(instance.account.pk, instance.region)]
    page = operator.get(confirm).content.decode()
    assert "Measuring IMDSv1 use in 1 account/region" in page
    status = reverse("fleet:measure_usage_status") + f"?targets={instance.account.pk}/{instance.region}"
    assert "HX-Refresh" not in operator.get(status, headers={"HX-Request": "true"})
    UsageReading.objects.update(attempted_at=timezone.now(), read_at=timezone.now())
    assert operator.get(status, headers={"HX-Request": "true"})["HX-Refresh"] == "true"
    bad = operator.post(reverse("fleet:measure_usage"), {"targets": "999999/us-east-1"})
    assert bad.status_code == 400


# ---------------------------------------------------------------- rollback


def applied_batch(n=3, **instance_kwargs):
    batch = ChangeBatchFactory(desired={"http_tokens": "required"})
    items = [ChangeItemFactory(batch=batch, state="applied", previous={"http_tokens": "optional"},
                               instance__v1_calls=0, **instance_kwargs) for _ in range(n)]
    return batch, items


def test_rollback_skips_what_a_later_batch_or_someone_outside_changed():
    batch, (kept, later, outside) = applied_batch()
    newer = ChangeBatchFactory(desired={"hop_limit": 3})
    ChangeItemFactory(batch=newer, instance=later.instance, state="applied", previous={"hop_limit": 1})
    Instance.objects.filter(pk=outside.instance_id).update(http_tokens="optional")
    plan = changes.plan_rollback(batch)
    reasons = {entry.item.pk: entry.reason for entry in plan.entries}
    assert reasons == {kept.pk: "", later.pk: f"changed since by batch #{newer.pk}",
                       outside.pk: "changed outside imdsweb since (now http_tokens=optional)"}
    rollback = changes.rollback(batch, None)
    assert list(rollback.items.filter(state="queued").values_list("instance_id", flat=True)) == [kept.instance_id]
    assert rollback.items.filter(state="skipped").count() == 2


def test_rollback_covers_pending_items_so_a_stopped_instance_does_not_turn_imdsv2_only():
    batch = ChangeBatchFactory(desired={"http_tokens": "required"})
    pending = ChangeItemFactory(batch=batch, state="pending", previous={"http_tokens": "optional"},
                                instance__instance_state="stopped")
    queued = ChangeItemFactory(batch=batch, state="queued", previous={"http_tokens": "optional"})
    rollback = changes.rollback(batch, None)
    pending.refresh_from_db()
    queued.refresh_from_db()
    assert pending.state == "cancelled" and f"batch #{rollback.pk}" in pending.reason
    assert queued.state == "cancelled"
    restore = rollback.items.get(instance=pending.instance)
    assert (restore.state, restore.desired) == ("queued", {"http_tokens": "optional"})


def test_rollback_confirmation_page_says_what_goes_back(operator):
    batch, _items = applied_batch(3)
    page = operator.get(reverse("fleet:change_rollback", args=[batch.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "3 instances go back to HttpTokens=optional (they will allow IMDSv1 again)" in html
    assert not ChangeBatch.objects.filter(rollback_of=batch).exists()  # GET changes nothing


def test_rolled_back_once_then_refused_with_a_message(operator):
    batch, _items = applied_batch(1)
    first = operator.post(reverse("fleet:change_rollback", args=[batch.pk]), {"comment": "undo"})
    rollback = ChangeBatch.objects.get(rollback_of=batch)
    assert first.status_code == 302
    again = operator.post(reverse("fleet:change_rollback", args=[batch.pk]), {"comment": "undo"})
    assert again.status_code == 409
    assert f"already rolled back by batch #{rollback.pk}" in again.content.decode()
    assert ChangeBatch.objects.filter(rollback_of=batch).count() == 1
    listed = operator.get(reverse("fleet:change_list")).content.decode()
    assert f"rolled back by #{rollback.pk}" in listed
    assert f"rolled back by #{rollback.pk}" in operator.get(batch.get_absolute_url()).content.decode()


def test_defaults_rollback_restores_only_what_it_set_and_only_once():
    account = AccountFactory()
    MetadataDefaultsFactory(account=account, region="us-east-1", http_tokens="required")
    batch = ChangeBatchFactory(kind=ChangeKind.ACCOUNT_DEFAULTS, desired={"http_tokens": "required"})
    ChangeItem.objects.create(batch=batch, account=account, region="us-east-1", state="applied",
                              previous={"http_tokens": "no-preference"})
    rollback = changes.rollback(batch, None)
    item = rollback.items.get()
    assert (item.state, item.desired, item.instance) == ("queued", {"http_tokens": "no-preference"}, None)
    with pytest.raises(changes.ChangeRefused, match="already rolled back"):
        changes.rollback(batch, None)


# ---------------------------------------------------------------- empty and repeated requests


def test_nothing_to_queue_creates_no_batch_and_says_why(operator):
    done = InstanceFactory(http_tokens="required")
    busy = InstanceFactory(account=done.account)
    holder = ChangeBatchFactory()
    ChangeItemFactory(batch=holder, instance=busy, state="queued")
    before = ChangeBatch.objects.count()
    response = operator.post(NEW, {"ids": [done.instance_id, busy.instance_id], "http_tokens": "required"})
    assert response.status_code == 409
    html = response.content.decode()
    assert "Nothing to queue: 1 already at the target, 1 busy in another batch." in html
    assert f'href="{holder.get_absolute_url()}"' in html
    assert ChangeBatch.objects.count() == before


def test_a_replayed_confirmation_creates_one_batch(operator):
    instance = InstanceFactory()
    form = {"ids": instance.instance_id, "http_tokens": "required", "request_token": "tab-1-token"}
    first = operator.post(NEW, form)
    batch = ChangeBatch.objects.get(request_token="tab-1-token")
    assert first["Location"] == batch.get_absolute_url()
    again = operator.post(NEW, form, follow=True)
    assert again.redirect_chain[-1][0] == batch.get_absolute_url()
    assert "already submitted: batch #" in again.content.decode()
    assert ChangeBatch.objects.count() == 1
    confirm = operator.get(f"{NEW}?ids={instance.instance_id}&http_tokens=required").content.decode()
    assert 'name="request_token"' in confirm


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers need PostgreSQL")
@pytest.mark.parametrize("action", ["bulk", "rollback", "retry"])
def test_five_operators_at_once_get_one_batch_and_four_clear_messages(action):
    instances = [InstanceFactory() for _ in range(20)]
    if action == "bulk":
        url, data = NEW, {"ids": [i.instance_id for i in instances], "http_tokens": "required"}
    else:
        batch = ChangeBatchFactory(desired={"http_tokens": "required"})
        state = "applied" if action == "rollback" else "failed"
        for instance in instances:
            if action == "rollback":
                Instance.objects.filter(pk=instance.pk).update(http_tokens="required")
            ChangeItemFactory(batch=batch, instance=instance, state=state, previous={"http_tokens": "optional"})
        url = reverse(f"fleet:change_{action}", args=[batch.pk])
        data = {"comment": "undo"}
        if action == "retry":  # four other operators retry a sibling batch over the same instances
            pass
    users = [UserFactory(role="operator") for _ in range(5)]
    barrier = threading.Barrier(5)
    results = []

    def press(user):
        client = Client()
        client.force_login(user)
        barrier.wait()
        try:
            response = client.post(url, data, follow=True)
            results.append((response.status_code, response.content.decode()))
        finally:
            connection.close()

    threads = [threading.Thread(target=press, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(status != 500 for status, _ in results), [s for s, _ in results]
    active = ChangeItem.objects.filter(state__in=ItemState.active(), instance__in=instances)
    holders = set(active.values_list("batch_id", flat=True))
    assert len(holders) == 1 and active.count() == 20
    if action != "retry":
        assert ChangeBatch.objects.filter(items__isnull=False).distinct().count() == (1 if action == "bulk" else 2)
    refused = [html for status, html in results if "already" in html and "batch #" in html]
    assert len(refused) >= 4 or action == "retry", [status for status, _ in results]
    holder = holders.pop()
    for html in refused:
        assert f"batch #{holder}" in html or "already rolled back" in html
