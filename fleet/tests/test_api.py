"""The JSON API (read-only): token authentication with the user's role, the instance list's filters
and keyset pages, posture and its history, drift, defaults, batches and items, 4xx in JSON, and the
committed OpenAPI schema."""

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from fleet import history, posture
from fleet.models import ApiToken, DriftEvent, FleetSnapshot
from fleet.tests.factories import (
    AccountFactory,
    ChangeItemFactory,
    InstanceFactory,
    MetadataDefaultsFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def token():
    _, key = ApiToken.issue(UserFactory(role="viewer"), "test")
    return key


@pytest.fixture
def api(client, token):
    def get(path, **params):
        return client.get(f"/api/v1/{path}", params, headers={"Authorization": f"Bearer {token}"})
    return get


@pytest.fixture
def fleet():
    prod = AccountFactory(account_id="111111111111", name="prod", regions=["us-east-1", "eu-west-1"])
    instances = [InstanceFactory(account=prod, name=f"web-{n:02d}", http_tokens="required" if n % 3 == 0 else "optional")
                 for n in range(12)]
    InstanceFactory(account=prod, region="eu-west-1", name="gone", gone_at=timezone.now())
    posture.refresh_all()
    return prod, instances


def test_without_a_valid_token_it_is_401_json_not_a_login_page(client, token):
    for headers in ({}, {"Authorization": "Bearer imdsweb_nope"}, {"Authorization": "Basic eDp5"}):
        response = client.get("/api/v1/instances/", headers=headers)
        assert response.status_code == 401 and response["Content-Type"] == "application/json"
        assert "detail" in response.json()
    ApiToken.objects.get().revoke()
    assert client.get("/api/v1/posture/", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_token_records_its_use_and_the_session_works_too(client, token, api):
    assert api("posture/").status_code == 200
    assert ApiToken.objects.get().last_used_at is not None
    client.force_login(UserFactory(role="operator"))
    assert client.get("/api/v1/posture/").status_code == 200


def test_instances_filter_like_the_list_and_page_by_keyset(fleet, api):
    prod, instances = fleet
    optional = {i.instance_id for i in instances if i.http_tokens == "optional"}
    seen, url, pages = [], "instances/", 0
    params = {"http_tokens": "optional", "account": prod.account_id, "per_page": 3, "sort": "-name"}
    while url:
        body = api(url, **params).json() if pages == 0 else api(url.split("/api/v1/")[1]).json()
        seen += [row["instance_id"] for row in body["results"]]
        assert all(row["http_tokens"] == "optional" and row["account_id"] == prod.account_id for row in body["results"])
        url, pages = body["next"], pages + 1
    assert sorted(seen) == sorted(optional) and len(seen) == len(set(seen)) and pages == 3
    names = [i.name for i in sorted(instances, key=lambda i: i.name, reverse=True) if i.instance_id in optional]
    assert [next(i.name for i in instances if i.instance_id == s) for s in seen] == names
    back = api(body["previous"].split("/api/v1/")[1]).json() if body["previous"] else None
    assert back and len(back["results"]) == 3
    assert api("instances/", gone="gone").json()["results"][0]["name"] == "gone"


@pytest.mark.parametrize("params, field", [
    ({"hop_limit": "1.5"}, "hop_limit"), ({"http_tokens": "bogus"}, "http_tokens"),
    ({"account": "999999999999"}, "account"), ({"after": "x"}, "after"), ({"per_page": "many"}, "per_page"),
    ({"drift_since": "yesterday"}, "drift_since"),
])
def test_bad_input_is_400_with_field_errors(fleet, api, params, field):
    response = api("instances/", **params)
    assert response.status_code == 400 and field in response.json()


def test_instance_list_query_count_does_not_grow_with_the_page(fleet, api):
    api("posture/")  # the token's first use of the minute writes last_used_at
    counts = []
    for per_page in (2, 10):
        with CaptureQueriesContext(connection) as ctx:
            assert len(api("instances/", per_page=per_page).json()["results"]) == per_page
        counts.append(len(ctx))
    assert counts[0] == counts[1]


def test_instance_detail_and_404(fleet, api):
    _, instances = fleet
    body = api(f"instances/{instances[0].instance_id}/").json()
    assert body["instance_id"] == instances[0].instance_id and body["enforced"] is True
    missing = api("instances/i-0123456789abcdef0/")
    assert missing.status_code == 404 and "detail" in missing.json()


def test_posture_and_history(fleet, api):
    prod, _ = fleet
    body = api("posture/").json()
    totals = posture.fleet_totals()
    assert body["totals"]["total"] == totals["total"] == 12 and body["totals"]["enforced"] == 4
    assert {(r["account_id"], r["region"], r["total"]) for r in body["regions"]} == {
        ("111111111111", "us-east-1", 12), ("111111111111", "eu-west-1", 0)}
    FleetSnapshot.objects.create(bucket=history.bucket_of(timezone.now()) - timedelta(hours=2), total=12, enforced=1)
    batch = ChangeItemFactory(instance=InstanceFactory(account=prod)).batch
    hist = api("posture/history/", days=7).json()
    assert [(p["total"], p["enforced"], p["allowing_v1"]) for p in hist["points"]] == [(12, 1, 11), (12, 4, 8)]
    assert hist["batches"][0]["batch"] == batch.pk and hist["days"] == 7
    scoped = api("posture/history/", days=30, account="111111111111", region="us-east-1").json()
    assert scoped["account_id"] == "111111111111" and scoped["region"] == "us-east-1"
    bad = api("posture/history/", days=5, region="mars-1")
    assert bad.status_code == 400 and set(bad.json()) == {"days", "region"}


def test_batches_items_drift_defaults(fleet, api):
    prod, instances = fleet
    applied = ChangeItemFactory(instance=instances[1], state="applied")
    batch = applied.batch
    failed = ChangeItemFactory(batch=batch, instance=instances[2], state="failed", error_code="UnauthorizedOperation")
    body = api("batches/").json()
    assert body["results"][0]["id"] == batch.pk and body["results"][0]["status"] == "done_with_errors"
    assert body["results"][0]["counts"]["applied"] == 1 and body["results"][0]["counts"]["total"] == 2
    assert api(f"batches/{batch.pk}/").json()["desired"] == {"http_tokens": "required"}
    items = api(f"batches/{batch.pk}/items/", state="failed").json()["results"]
    assert [(i["id"], i["error_code"], i["instance_id"]) for i in items] == [
        (failed.pk, "UnauthorizedOperation", instances[2].instance_id)]
    assert api("batches/9999/items/").status_code == 404
    assert api(f"batches/{batch.pk}/items/", state="nope").status_code == 400
    page = api(f"batches/{batch.pk}/items/", per_page=1).json()
    assert len(page["results"]) == 1 and page["next"]

    DriftEvent.objects.create(kind="new_v1", account=prod, region="us-east-1", instance=instances[1],
                              detected_at=timezone.now())
    drift = api("drift/").json()["results"]
    assert [(d["kind"], d["instance_id"]) for d in drift] == [("new_v1", instances[1].instance_id)]
    MetadataDefaultsFactory(account=prod, region="us-east-1", http_tokens="required")
    assert api("defaults/").json()[0]["http_tokens"] == "required"


def test_writes_are_not_offered(fleet, api, client, token):
    response = client.post("/api/v1/instances/", {}, content_type="application/json",
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 405


def test_the_committed_schema_is_the_api(tmp_path):
    """CI's schema diff: change the API, run `make schema`, commit docs/api/openapi.yaml."""
    out = tmp_path / "openapi.yaml"
    subprocess.run([sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file", str(out)],
                   cwd=ROOT, check=True, capture_output=True, env={"DJANGO_SETTINGS_MODULE": "imdsweb.settings",
                                                                    "PATH": "/usr/bin:/bin"})
    assert out.read_text() == (ROOT / "docs" / "api" / "openapi.yaml").read_text()


# ---- the token page: the user's own tokens


def test_tokens_created_shown_once_and_revoked(client):
    alice = UserFactory(username="alice", role="viewer")
    client.force_login(alice)
    page = client.post("/tokens/", {"name": "weekly report"})
    key = page.context["new_key"]
    assert key.startswith("imdsweb_") and key in page.content.decode()
    listed = client.get("/tokens/").content.decode()
    assert "weekly report" in listed and key not in listed and key[:14] in listed
    token = ApiToken.objects.get()
    assert token.key_hash != key and token.user == alice
    assert client.get("/api/v1/posture/", headers={"Authorization": f"Bearer {key}"}).status_code == 200

    client.force_login(UserFactory(role="operator"))
    assert client.post(f"/tokens/{token.pk}/revoke/").status_code == 404  # not theirs
    client.force_login(alice)
    client.post(f"/tokens/{token.pk}/revoke/")
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert client.get("/api/v1/posture/", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert client.post("/tokens/", {"name": ""}).status_code == 400


def test_token_page_needs_a_login(client):
    assert client.get("/tokens/").status_code == 302
