"""Staged rollouts, windows and four-eyes approval without AWS: which items the runner may claim,
how waves are cut, who may approve, and what the tick does with windows and expiries."""

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from fleet import changes
from fleet.changes import rollout
from fleet.choices import ApprovalState, BatchEventKind, ItemState, RolloutState, WaveMode
from fleet.engine import runner, sweep
from fleet.models import ChangeBatch, ChangeItem, Instance
from fleet.tests.factories import AccountFactory, InstanceFactory, UserFactory

pytestmark = pytest.mark.django_db

BERLIN = ZoneInfo("Europe/Berlin")
TUESDAY_NIGHT = {"days": [1], "start": "02:00", "end": "04:00", "tz": "Europe/Berlin"}


def fleet_of(count, **kwargs):
    account = kwargs.pop("account", None) or AccountFactory()
    for _ in range(count):
        InstanceFactory(account=account, **kwargs)
    return account


def request(user=None, options=None, account=None):
    qs = Instance.objects.filter(account=account) if account else Instance.objects.all()
    return changes.request_change(user, qs, changes.REQUIRE_IMDSV2, rollout=options)


def claimable(batch):
    return set(ChangeItem.objects.claimable().filter(batch=batch).values_list("pk", flat=True))


# ---------------------------------------------------------------- windows


def test_next_opening_is_the_current_one_inside_and_the_next_one_outside():
    monday = datetime(2026, 12, 7, 12, 0, tzinfo=BERLIN)
    assert rollout.next_opening(TUESDAY_NIGHT, monday) == (
        datetime(2026, 12, 8, 2, 0, tzinfo=BERLIN), datetime(2026, 12, 8, 4, 0, tzinfo=BERLIN))
    inside = datetime(2026, 12, 8, 3, 0, tzinfo=BERLIN)
    assert rollout.next_opening(TUESDAY_NIGHT, inside)[0] == datetime(2026, 12, 8, 2, 0, tzinfo=BERLIN)
    after = datetime(2026, 12, 8, 4, 0, tzinfo=BERLIN)
    assert rollout.next_opening(TUESDAY_NIGHT, after)[0] == datetime(2026, 12, 15, 2, 0, tzinfo=BERLIN)
    overnight = {"days": [6], "start": "22:00", "end": "02:00", "tz": "UTC"}  # Sunday into Monday
    monday_one = datetime(2026, 12, 7, 1, 0, tzinfo=ZoneInfo("UTC"))
    assert rollout.next_opening(overnight, monday_one)[1] == datetime(2026, 12, 7, 2, 0, tzinfo=ZoneInfo("UTC"))


@pytest.mark.parametrize("days, start, end, tz, message", [
    ([], time(2), time(4), "UTC", "at least one day"),
    ([1], time(2), time(4), "Mars/Olympus", "unknown time zone"),
    ([1], time(2), time(2), "UTC", "same time"),
])
def test_bad_windows_are_refused_with_a_reason(days, start, end, tz, message):
    with pytest.raises(ValueError, match=message):
        rollout.parse_window(days, start, end, tz)


def test_outside_its_window_nothing_is_claimed_and_items_stay_queued():
    account = fleet_of(3)
    now = timezone.now()
    # A window that opens in an hour (today's weekday, in UTC) and lasts an hour.
    opens = (now + timedelta(hours=1)).astimezone(ZoneInfo("UTC"))
    window = {"days": [opens.weekday()], "start": opens.strftime("%H:%M"),
              "end": (opens + timedelta(hours=1)).strftime("%H:%M"), "tz": "UTC"}
    batch = request(options=rollout.RolloutOptions(window=window), account=account)
    assert batch.run_from > now
    assert claimable(batch) == set()
    assert runner.regions_of_batch(batch.pk) == []
    assert sweep.sweep() == []
    assert runner.run_region(account.pk, "us-east-1") is None
    assert batch.items.filter(state=ItemState.QUEUED).count() == 3  # waiting, not lost
    assert "Waiting for its window" in " ".join(rollout.gate_notes(batch))

    # Once inside the window the same items are claimable.
    inside = batch.run_from + timedelta(minutes=5)
    assert len(set(ChangeItem.objects.claimable(now=inside).filter(batch=batch).values_list("pk", flat=True))) == 3
    # Past its closing the tick moves the gate to the next week's opening; nothing is claimable.
    later = batch.run_until + timedelta(minutes=1)
    rollout.advance(batch, now=later)
    batch.refresh_from_db()
    assert batch.run_from > later and (batch.run_from - later) > timedelta(days=6)
    assert not ChangeItem.objects.claimable(now=later).filter(batch=batch).exists()


def test_a_scheduled_start_holds_the_batch_until_then_and_must_be_in_the_future():
    account = fleet_of(2)
    start = timezone.now() + timedelta(minutes=30)
    batch = request(options=rollout.RolloutOptions(start_at=start), account=account)
    assert claimable(batch) == set()
    assert ChangeItem.objects.claimable(now=start + timedelta(seconds=1)).filter(batch=batch).count() == 2
    with pytest.raises(changes.ChangeRefused, match="in the past"):
        request(options=rollout.RolloutOptions(start_at=timezone.now() - timedelta(minutes=1)), account=fleet_of(1))


# ---------------------------------------------------------------- approval


@pytest.fixture
def four_eyes(settings):
    settings.IMDSWEB_APPROVAL_MIN_ITEMS = 3
    settings.IMDSWEB_APPROVAL_ACCOUNTS = ["prod"]
    settings.IMDSWEB_APPROVAL_EXPIRY_HOURS = 24


def test_a_large_batch_awaits_approval_and_the_requester_cannot_approve_it(four_eyes):
    requester, second = UserFactory(role="operator"), UserFactory(role="operator")
    account = fleet_of(3)
    batch = request(requester, account=account)
    assert batch.approval == ApprovalState.AWAITING
    assert "3 instances" in batch.approval_reason
    assert claimable(batch) == set()
    with pytest.raises(changes.ChangeRefused, match="a second person has to approve"):
        rollout.approve(batch, requester)
    batch.refresh_from_db()
    assert batch.approval == ApprovalState.AWAITING and claimable(batch) == set()

    rollout.approve(batch, second)
    batch.refresh_from_db()
    assert (batch.approval, batch.approved_by) == (ApprovalState.APPROVED, second)
    assert len(claimable(batch)) == 3
    kinds = list(batch.events.values_list("kind", "user__username"))
    assert kinds == [(BatchEventKind.APPROVAL_REQUESTED, requester.username), (BatchEventKind.APPROVED, second.username)]
    with pytest.raises(changes.ChangeRefused, match="not awaiting approval"):
        rollout.approve(batch, second)


def test_small_batches_outside_the_chosen_accounts_need_no_approval_and_prod_always_does(four_eyes):
    small = request(UserFactory(), account=fleet_of(2))
    assert small.approval == "" and len(claimable(small)) == 2
    prod = request(UserFactory(), account=fleet_of(1, account=AccountFactory(name="prod")))
    assert prod.approval == ApprovalState.AWAITING and "touches prod" in prod.approval_reason


def test_refusal_cancels_the_queued_items_and_is_audited(four_eyes):
    batch = request(UserFactory(), account=fleet_of(3))
    checker = UserFactory(role="operator")
    rollout.refuse(batch, checker, "not in the change freeze")
    assert set(batch.items.values_list("state", flat=True)) == {ItemState.CANCELLED}
    assert batch.items.first().reason == f"approval refused by {checker.username}: not in the change freeze"
    assert batch.events.last().kind == BatchEventKind.REFUSED


def test_an_expired_approval_request_cancels_the_batch(four_eyes):
    batch = request(UserFactory(), account=fleet_of(3))
    rollout.advance_all()
    assert batch.items.filter(state=ItemState.QUEUED).count() == 3  # not expired yet
    ChangeBatch.objects.filter(pk=batch.pk).update(approval_expires_at=timezone.now() - timedelta(seconds=1))
    rollout.advance_all()
    batch.refresh_from_db()
    assert batch.approval == ApprovalState.EXPIRED
    assert set(batch.items.values_list("state", flat=True)) == {ItemState.CANCELLED}
    with pytest.raises(changes.ChangeRefused):
        rollout.approve(batch, UserFactory())


# ---------------------------------------------------------------- waves


def test_a_canary_per_account_region_then_the_rest_in_two_waves():
    account = fleet_of(6)
    fleet_of(4, account=account, region="eu-west-1")
    options = rollout.RolloutOptions(mode=WaveMode.COUNT, canary="1", rest_waves=2, soak_minutes=10)
    batch = request(options=options, account=account)
    assert batch.waves == 3 and batch.rollout_state == RolloutState.RUNNING and batch.soak_seconds == 600
    waves = {}
    for region, wave in batch.items.values_list("region", "wave"):
        waves.setdefault(region, []).append(wave)
    assert sorted(waves["us-east-1"]) == [0, 1, 1, 1, 2, 2]
    assert sorted(waves["eu-west-1"]) == [0, 1, 1, 2]
    assert len(claimable(batch)) == 2  # only the canaries
    assert batch.wave_labels == ["canary: 1 instance(s) per account/region", "the rest, part 1 of 2",
                                 "the rest, part 2 of 2"]


def test_percent_tag_and_account_waves():
    account = fleet_of(10)
    pct = request(options=rollout.RolloutOptions(mode=WaveMode.PERCENT, canary="25%"), account=account)
    assert pct.items.filter(wave=0).count() == 3  # 25% of 10, rounded up
    ChangeItem.objects.filter(batch=pct).update(state=ItemState.CANCELLED)

    sandbox, prod = AccountFactory(name="sandbox"), AccountFactory(name="prod", ou_id="ou-prod-1")
    fleet_of(2, account=sandbox)
    fleet_of(2, account=prod)
    InstanceFactory(account=sandbox, tags={"Env": "canary"})
    staged = request(options=rollout.RolloutOptions(mode=WaveMode.ACCOUNTS, canary="sandbox\nou-prod-1"))
    assert staged.waves == 3 and staged.wave_labels == ["sandbox", "ou-prod-1", "the rest"]
    assert set(staged.items.filter(wave=0).values_list("account__name", flat=True)) == {"sandbox"}
    assert set(staged.items.filter(wave=1).values_list("account__name", flat=True)) == {"prod"}
    ChangeItem.objects.filter(batch=staged).update(state=ItemState.CANCELLED)

    tagged = request(options=rollout.RolloutOptions(mode=WaveMode.TAG, canary="Env=canary"), account=sandbox)
    assert list(tagged.items.filter(wave=0).values_list("instance__tags__Env", flat=True)) == ["canary"]


@pytest.mark.parametrize("mode, canary, message", [
    (WaveMode.COUNT, "zero", "not a number"),
    (WaveMode.COUNT, "0", "at least 1"),
    (WaveMode.PERCENT, "100", "between"),
    (WaveMode.TAG, "Env", "key=value"),
    (WaveMode.TAG, "Env=nowhere", "canary would be empty"),
    (WaveMode.ACCOUNTS, "no-such-account", "no account or OU named no-such-account"),
])
def test_bad_wave_plans_are_refused_and_create_no_batch(mode, canary, message):
    account = fleet_of(2)
    with pytest.raises(changes.ChangeRefused, match=message):
        request(options=rollout.RolloutOptions(mode=mode, canary=canary), account=account)
    assert not ChangeBatch.objects.exists()


def test_promote_releases_the_next_wave_and_abort_cancels_the_rest():
    account = fleet_of(4)
    operator = UserFactory(role="operator")
    batch = request(options=rollout.RolloutOptions(mode=WaveMode.COUNT, canary="1", rest_waves=3), account=account)
    rollout.promote(batch, operator)
    batch.refresh_from_db()
    assert batch.released_wave == 1 and len(claimable(batch)) == 2
    rollout.abort(batch, operator)
    batch.refresh_from_db()
    assert batch.rollout_state == RolloutState.ABORTED
    assert not batch.items.filter(state=ItemState.QUEUED).exists()
    assert [e.kind for e in batch.events.all()] == [BatchEventKind.PROMOTED, BatchEventKind.ABORTED]
    with pytest.raises(changes.ChangeRefused, match="no rollout in progress"):
        rollout.promote(batch, operator)


def test_a_wave_with_failed_items_pauses_instead_of_soaking():
    account = fleet_of(3)
    batch = request(options=rollout.RolloutOptions(mode=WaveMode.COUNT, canary="1"), account=account)
    batch.items.filter(wave=0).update(state=ItemState.FAILED, error_code="UnauthorizedOperation")
    rollout.advance_all()
    batch.refresh_from_db()
    assert batch.rollout_state == RolloutState.PAUSED
    assert "1 item(s) of wave 1 failed" in batch.rollout_note
    assert batch.released_wave == 0
