"""Queueing a change through the API: plan, then queue with the plan's token; the API refuses
exactly what the confirmation page refuses, needs the operator role, and writes the same audit."""

import pytest
from django.core import signing

from fleet.choices import ItemState
from fleet.models import ApiToken, ChangeBatch
from fleet.tests.factories import AccountFactory, InstanceFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet():
    account = AccountFactory(account_id="111111111111", regions=["us-east-1"])
    return [InstanceFactory(account=account, v1_calls=5 if n == 0 else 0) for n in range(4)]


def bearer(role):
    user = UserFactory(role=role)
    token, key = ApiToken.issue(user, f"{role} script")
    return user, {"Authorization": f"Bearer {key}"}


def post(client, path, body, headers):
    return client.post(f"/api/v1/{path}", body, content_type="application/json", headers=headers)


def test_plan_then_queue_is_the_confirmation_page_through_json(client, fleet):
    user, headers = bearer("operator")
    plan = post(client, "changes/plan/", {"filter": "account=111111111111", "http_tokens": "required"}, headers)
    assert plan.status_code == 200, plan.content
    figures = plan.json()
    assert (figures["total"], figures["to_change"], figures["held"]) == (4, 3, 1)  # IMDSv1 in use: held
    assert figures["desired"] == {"http_tokens": "required"} and not ChangeBatch.objects.exists()

    queued = post(client, "changes/", {"plan_token": figures["plan_token"], "comment": "week 12"}, headers)
    assert queued.status_code == 201, queued.content
    batch = ChangeBatch.objects.get()
    assert queued.json()["id"] == batch.pk and batch.created_by == user and batch.comment == "week 12"
    assert batch.selection.startswith("filter: account=111111111111") and "API token “operator script”" in batch.selection
    counts = batch.counts()
    assert (counts[ItemState.QUEUED], counts[ItemState.HELD]) == (3, 1)
    # The same plan again: the three queued are busy now and the fourth held, so nothing would be
    # queued: refused like the UI refuses it, naming the batch that holds them, and no empty batch.
    again = post(client, "changes/", {"plan_token": figures["plan_token"]}, headers)
    assert again.status_code == 409
    assert "Nothing to queue" in again.content.decode() and f"batch #{batch.pk}" in again.content.decode()
    assert ChangeBatch.objects.count() == 1


@pytest.mark.parametrize("body", [
    {"filter": "account=111111111111"},  # no option
    {"filter": "account=111111111111", "hop_limit": 99},
    {"filter": "account=111111111111", "http_tokens": "bogus"},
    {"ids": ["i-0123456789abcdef0"], "http_tokens": "required"},  # unknown instance
    {"ids": ["not-an-id"], "http_tokens": "required"},
    {"http_tokens": "required"},  # no selection
    {"filter": "hop_limit=1.5", "http_tokens": "required"},
])
def test_refused_like_the_ui(client, fleet, body):
    _, headers = bearer("operator")
    api = post(client, "changes/plan/", body, headers)
    assert api.status_code == 400 and api["Content-Type"] == "application/json" and api.json()
    client.force_login(UserFactory(role="operator"))
    ui = client.post("/changes/new/", body)
    assert ui.status_code == 400
    assert not ChangeBatch.objects.exists()


def test_a_filter_matching_nothing_is_refused_at_queue_time_like_the_ui(client, fleet):
    _, headers = bearer("operator")
    plan = post(client, "changes/plan/", {"filter": "http_tokens=optional&hop_limit=7", "http_tokens": "required"},
                headers).json()
    queued = post(client, "changes/", {"plan_token": plan["plan_token"]}, headers)
    assert queued.status_code == 409 and queued.json() == {"detail": "No instances selected."}
    client.force_login(UserFactory(role="operator"))
    assert client.post("/changes/new/", {"filter": "http_tokens=optional&hop_limit=7", "http_tokens": "required"}
                       ).status_code == 409


def test_tokens_carry_the_role_and_plan_tokens_their_user(client, fleet):
    _, viewer = bearer("viewer")
    assert post(client, "changes/plan/", {"ids": [fleet[1].instance_id], "http_tokens": "required"},
                viewer).status_code == 403
    _, alice = bearer("operator")
    _, bob = bearer("operator")
    token = post(client, "changes/plan/", {"ids": [fleet[1].instance_id], "http_tokens": "required"},
                 alice).json()["plan_token"]
    assert post(client, "changes/", {"plan_token": token}, bob).json() == {
        "plan_token": ["This plan was made by another user."]}
    forged = signing.dumps({"user": 1, "data": {}}, salt="elsewhere")
    assert post(client, "changes/", {"plan_token": forged}, alice).status_code == 400
    assert post(client, "changes/", {}, alice).json() == {"plan_token": ["This field is required."]}
    assert post(client, "changes/plan/", {"ids": [fleet[1].instance_id], "http_tokens": "required", "force": True},
                alice).json() == {"force": ["Unknown field."]}
    assert post(client, "changes/plan/", ["not", "an", "object"], alice).status_code == 400
    assert not ChangeBatch.objects.exists()


def test_queue_in_waves_within_a_window_through_the_api(client, fleet):
    _, headers = bearer("operator")
    plan = post(client, "changes/plan/", {"filter": "account=111111111111", "http_tokens": "required"}, headers).json()
    body = {"plan_token": plan["plan_token"], "wave_mode": "count", "canary": "1", "soak_minutes": 30,
            "window_days": [0, 1, 2, 3, 4, 5, 6], "window_start": "00:00", "window_end": "23:59", "window_tz": "UTC"}
    queued = post(client, "changes/", body, headers)
    assert queued.status_code == 201, queued.content
    data = queued.json()
    assert (data["waves"], data["released_wave"], data["rollout_state"], data["soak_seconds"]) == (2, 0, "running", 1800)
    assert data["window"]["days"] == [0, 1, 2, 3, 4, 5, 6] and data["run_until"]
    items = client.get(f"/api/v1/batches/{data['id']}/items/", headers=headers).json()
    waves = sorted(item["wave"] for item in items["results"] if item["state"] == "queued")
    assert waves == [0, 1, 1]


def test_a_malformed_canary_is_refused_through_the_api(client, fleet):
    _, headers = bearer("operator")
    plan = post(client, "changes/plan/", {"filter": "account=111111111111", "http_tokens": "required"}, headers).json()
    response = post(client, "changes/", {"plan_token": plan["plan_token"], "wave_mode": "percent", "canary": "x"},
                    headers)
    assert response.status_code == 400 and "not a number" in response.json()["canary"][0]
    assert not ChangeBatch.objects.exists()
