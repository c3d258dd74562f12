"""The pages of staged rollouts, windows and approval: the confirmation page's choices, the batch
page's waves and countdown, and the approve / refuse / promote / abort buttons for the three users."""

import pytest
from django.urls import reverse
from django.utils import timezone

from fleet.choices import ApprovalState, ItemState, RolloutState
from fleet.models import ChangeBatch
from fleet.tests.factories import AccountFactory, InstanceFactory, UserFactory

pytestmark = pytest.mark.django_db
NEW = reverse("fleet:change_new")


@pytest.fixture
def instances():
    account = AccountFactory(name="sandbox")
    return [InstanceFactory(account=account) for _ in range(4)]


def post_change(client, instances, **extra):
    return client.post(NEW, {"ids": [i.instance_id for i in instances], "http_tokens": "required", **extra})


def test_the_confirmation_page_offers_waves_soak_start_and_window(operator, instances):
    html = operator.get(NEW, {"ids": [i.instance_id for i in instances], "http_tokens": "required"}).content.decode()
    for name in ("wave_mode", "canary", "rest_waves", "soak_minutes", "start_at", "window_days", "window_start",
                 "window_end", "window_tz"):
        assert f'name="{name}"' in html, name
    assert "MetadataNoTokenRejected" in html


def test_a_staged_batch_from_the_confirmation_page_shows_its_waves(operator, instances):
    response = post_change(operator, instances, wave_mode="count", canary="1", rest_waves="1", soak_minutes="15")
    batch = ChangeBatch.objects.get()
    assert response.status_code == 302 and batch.waves == 2 and batch.soak_seconds == 900
    page = operator.get(batch.get_absolute_url()).content.decode()
    assert 'id="waves"' in page and 'data-wave="2" data-state="waiting"' in page
    assert "Promote: release wave 2 now" in page and "Abort the rollout" in page
    assert "wave 1/2: wave running" in operator.get(reverse("fleet:change_list")).content.decode()
    # The soak countdown, refreshed by the progress poll.
    ChangeBatch.objects.filter(pk=batch.pk).update(rollout_state=RolloutState.SOAKING,
                                                   soak_until=timezone.now() + timezone.timedelta(seconds=90))
    batch.items.filter(wave=0).update(state=ItemState.APPLIED)
    partial = operator.get(reverse("fleet:change_progress", args=[batch.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "s left" in partial and 'data-state="soaking"' in partial and "hx-trigger" in partial


@pytest.mark.parametrize("extra, message", [
    ({"wave_mode": "count", "canary": ""}, "Say which instances"),
    ({"wave_mode": "count", "canary": "lots"}, "not a number"),
    ({"wave_mode": "percent", "canary": "150%"}, "percentage between 0 and 100"),
    ({"wave_mode": "tag", "canary": "Env"}, "key=value"),
    ({"wave_mode": "sideways", "canary": "1"}, "valid choice"),
    ({"window_days": ["1"], "window_start": "02:00"}, "start and an end"),
    ({"window_days": ["1"], "window_start": "02:00", "window_end": "04:00", "window_tz": "Nowhere/Else"},
     "unknown time zone"),
    ({"window_days": ["9"], "window_start": "02:00", "window_end": "04:00"}, "valid choice"),
    ({"soak_minutes": "-1"}, "greater than or equal to 0"),
    ({"rest_waves": "50"}, "less than or equal to 20"),
    ({"start_at": "2001-01-01T00:00"}, "in the past"),
])
def test_bad_rollout_choices_are_form_errors_and_create_nothing(operator, instances, extra, message):
    response = post_change(operator, instances, **extra)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not ChangeBatch.objects.exists()


@pytest.mark.parametrize("extra, message", [
    ({"wave_mode": "tag", "canary": "Env=nowhere"}, "canary would be empty"),
    ({"wave_mode": "accounts", "canary": "sandbox\nnobody"}, "no account or OU named nobody"),
])
def test_a_wave_plan_the_fleet_cannot_fill_is_refused_and_creates_nothing(operator, instances, extra, message):
    response = post_change(operator, instances, **extra)
    assert response.status_code == 409
    assert message in response.content.decode()
    assert not ChangeBatch.objects.exists()


@pytest.fixture
def awaiting(settings, instances):
    settings.IMDSWEB_APPROVAL_MIN_ITEMS = 2
    requester = UserFactory(role="operator")
    from fleet import changes
    from fleet.models import Instance

    batch = changes.request_change(requester, Instance.objects.all(), changes.REQUIRE_IMDSV2)
    assert batch.approval == ApprovalState.AWAITING
    return batch, requester


def test_the_requester_sees_no_approve_button_and_cannot_approve_by_post(client, awaiting):
    batch, requester = awaiting
    client.force_login(requester)
    assert "awaiting approval" in client.get(reverse("fleet:change_list")).content.decode()
    page = client.get(batch.get_absolute_url()).content.decode()
    assert "Awaiting approval" in page and "a second operator or admin approves it" in page
    assert ">Approve<" not in page
    response = client.post(reverse("fleet:change_approve", args=[batch.pk]), follow=True)
    assert "a second person has to approve it" in response.content.decode()
    batch.refresh_from_db()
    assert batch.approval == ApprovalState.AWAITING


def test_a_second_operator_approves_a_viewer_cannot_an_outsider_is_sent_to_sign_in(client, awaiting):
    batch, _requester = awaiting
    url = reverse("fleet:change_approve", args=[batch.pk])
    assert client.post(url).status_code == 302 and "login" in client.post(url)["Location"]  # signed out
    client.force_login(UserFactory(role="viewer"))
    assert client.post(url).status_code == 403
    second = UserFactory(role="operator")
    client.force_login(second)
    assert ">Approve<" in client.get(batch.get_absolute_url()).content.decode()
    client.post(url)
    batch.refresh_from_db()
    assert (batch.approval, batch.approved_by) == (ApprovalState.APPROVED, second)
    assert "approved by " + second.username in client.get(batch.get_absolute_url()).content.decode()


def test_refusing_from_the_page_cancels_the_batch_with_the_reason(client, awaiting):
    batch, _ = awaiting
    client.force_login(UserFactory(role="operator"))
    client.post(reverse("fleet:change_refuse", args=[batch.pk]), {"reason": "freeze week"})
    assert set(batch.items.values_list("state", flat=True)) == {ItemState.CANCELLED}
    assert "freeze week" in batch.items.first().reason


def test_promote_and_abort_buttons(operator, instances):
    post_change(operator, instances, wave_mode="count", canary="1", rest_waves="3")
    batch = ChangeBatch.objects.get()
    operator.post(reverse("fleet:change_promote", args=[batch.pk]))
    batch.refresh_from_db()
    assert batch.released_wave == 1
    operator.post(reverse("fleet:change_abort", args=[batch.pk]))
    batch.refresh_from_db()
    assert batch.rollout_state == RolloutState.ABORTED
    response = operator.post(reverse("fleet:change_promote", args=[batch.pk]), follow=True)
    assert "no rollout in progress" in response.content.decode()


def test_rolling_back_a_wave_that_does_not_exist_is_a_bad_request(operator, instances):
    post_change(operator, instances, wave_mode="count", canary="1")
    batch = ChangeBatch.objects.get()
    assert operator.get(reverse("fleet:change_rollback", args=[batch.pk]) + "?wave=9").status_code == 400
    assert operator.get(reverse("fleet:change_rollback", args=[batch.pk]) + "?wave=x").status_code == 400


def test_the_confirmation_page_states_the_four_eyes_rule(operator, instances, settings):
    settings.IMDSWEB_APPROVAL_MIN_ITEMS = 100
    settings.IMDSWEB_APPROVAL_ACCOUNTS = ["prod"]
    html = operator.get(NEW, {"ids": [i.instance_id for i in instances], "http_tokens": "required"}).content.decode()
    assert "queue 100 instances or more or touch prod wait for a second operator" in html
