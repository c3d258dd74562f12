"""Who may do what, for every URL of the dashboard: a matrix of (URL name, method) x role.

The matrix is checked against ``fleet.urls.urlpatterns``: a new URL without an entry here fails
``test_every_url_has_a_matrix_entry``, so nobody adds a page without deciding who may use it.
Each cell is the status the role gets; ``LOGIN`` is a redirect to the login page. The operator
and admin POSTs send valid data, so they really perform the action (and viewers' refusals are
checked to have changed nothing).
"""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from fleet import urls as fleet_urls
from fleet.models import ChangeBatch, ChangeItem

from .conftest import ACCOUNT_ID, INSTANCE_ID, ROLES, client_for

pytestmark = pytest.mark.django_db

LOGIN = "login"
READ = {"anonymous": LOGIN, "viewer": 200, "operator": 200, "admin": 200}
NO_POST = {"anonymous": LOGIN, "viewer": 405, "operator": 405, "admin": 405}
OPERATOR_PAGE = {"anonymous": LOGIN, "viewer": 403, "operator": 200, "admin": 200}
OPERATOR_ACTION = {"anonymous": LOGIN, "viewer": 403, "operator": 302, "admin": 302}
# POST-only batch actions: the permission check comes before the method check.
ACTION_GET = {"anonymous": LOGIN, "viewer": 403, "operator": 405, "admin": 405}
ACCOUNT_ONLY_GET = {"anonymous": LOGIN, "viewer": 405, "operator": 405, "admin": 405}
NOT_FOUND = {"anonymous": LOGIN, "viewer": 404, "operator": 404, "admin": 404}
# Waivers: every role reads them, only admins grant, extend or revoke them.
ADMIN_PAGE = {"anonymous": LOGIN, "viewer": 403, "operator": 403, "admin": 200}
ADMIN_ACTION = {"anonymous": LOGIN, "viewer": 403, "operator": 403, "admin": 302}
ADMIN_ACTION_GET = {"anonymous": LOGIN, "viewer": 403, "operator": 403, "admin": 405}
# Read-only function views answer any method; a POST still needs a CSRF token and changes nothing.
READ_ANY_METHOD = READ

INSTANCE_FORM = {"http_tokens": "required", "hop_limit": 2, "http_endpoint": "enabled",
                 "http_protocol_ipv6": "disabled", "instance_metadata_tags": "disabled"}

# url name -> {method: ({role: status}, query or form data)}
MATRIX = {
    "overview": {"GET": (READ, None), "POST": (NO_POST, {})},
    "instance_list": {"GET": (READ, {"http_tokens": "optional"}), "POST": (NO_POST, {})},
    "instance_export": {"GET": (READ, {"http_tokens": "optional"}), "POST": (NO_POST, {})},
    "instance_detail": {"GET": (READ, None), "POST": (OPERATOR_ACTION, INSTANCE_FORM)},
    "defaults": {"GET": (READ, None), "POST": (NO_POST, {})},
    "defaults_change": {
        "GET": (OPERATOR_PAGE, {"targets": f"{ACCOUNT_ID}/us-east-1"}),
        "POST": (OPERATOR_ACTION, {"targets": f"{ACCOUNT_ID}/us-east-1", "http_tokens": "required"}),
    },
    "change_list": {"GET": (READ, None), "POST": (NO_POST, {})},
    "change_new": {
        "GET": (OPERATOR_PAGE, {"ids": "i-0123456789abcdef1", "http_tokens": "required"}),
        "POST": (OPERATOR_ACTION, {"ids": "i-0123456789abcdef1", "http_tokens": "required"}),
    },
    "change_detail": {"GET": (READ, None), "POST": (NO_POST, {})},
    "change_progress": {"GET": (READ, None), "POST": (NO_POST, {})},
    "change_cancel": {"GET": (ACTION_GET, None), "POST": (OPERATOR_ACTION, {})},
    "change_retry": {"GET": (ACTION_GET, None), "POST": (OPERATOR_ACTION, {})},
    "change_rollback": {"GET": (OPERATOR_PAGE, None), "POST": (OPERATOR_ACTION, {"comment": "undo"})},
    "measure_usage": {"GET": (ACTION_GET, None),
                      "POST": (OPERATOR_ACTION, {"targets": "ACCOUNT_PK/us-east-1", "next": "/changes/"})},
    "measure_usage_status": {"GET": (READ, {"targets": "ACCOUNT_PK/us-east-1"}), "POST": (READ_ANY_METHOD, {})},
    "drift_list": {"GET": (READ, None), "POST": (NO_POST, {})},
    "account_health": {"GET": (READ, None), "POST": (NO_POST, {})},
    "source_list": {"GET": (READ, None), "POST": (NO_POST, {})},
    "source_detail": {"GET": (READ, None), "POST": (NO_POST, {})},
    "source_fix": {"GET": (OPERATOR_PAGE, {"ids": "SOURCE_PK"}), "POST": (OPERATOR_ACTION, {"ids": "SOURCE_PK"})},
    "enforce": {
        "GET": (OPERATOR_PAGE, {"targets": f"{ACCOUNT_ID}/us-east-1"}),
        "POST": (OPERATOR_ACTION, {"targets": f"{ACCOUNT_ID}/us-east-1", "enable": "1", "override_held": "on"}),
    },
    # Every signed-in user sets their own time zone.
    "profile": {"GET": (READ, None), "POST": (READ, {"timezone": "Europe/Berlin"})},
    # Every signed-in user manages their own API tokens (they carry that user's role).
    "api_tokens": {"GET": (READ, None), "POST": (READ, {"name": "report script"})},
    # Another user's token (the fixture has none of this user's): 404, nothing revoked.
    "api_token_revoke": {"GET": (ACCOUNT_ONLY_GET, None), "POST": (NOT_FOUND, {})},
    # The fixture's batch is not a dry run: the rerun is refused with a message (302, nothing written).
    "change_rerun": {"GET": (ACTION_GET, None), "POST": (OPERATOR_ACTION, {})},
    # Nor awaiting approval nor in waves: approve, refuse, promote and abort are refused with a
    # message (302, nothing written), after the same role check as cancel and retry.
    "change_approve": {"GET": (ACTION_GET, None), "POST": (OPERATOR_ACTION, {})},
    "change_refuse": {"GET": (ACTION_GET, None), "POST": (OPERATOR_ACTION, {"reason": "not now"})},
    "change_promote": {"GET": (ACTION_GET, None), "POST": (OPERATOR_ACTION, {})},
    "change_abort": {"GET": (ACTION_GET, None), "POST": (OPERATOR_ACTION, {})},
    "waiver_list": {"GET": (READ, {"status": "all"}), "POST": (NO_POST, {})},
    "waiver_detail": {"GET": (READ, None), "POST": (NO_POST, {})},
    "waiver_new": {
        "GET": (ADMIN_PAGE, {"scope": "instance", "instance_id": "i-0123456789abcdef1"}),
        "POST": (ADMIN_ACTION, {"scope": "instance", "instance_id": "i-0123456789abcdef1", "owner": "vendor team",
                                "reason": "appliance still needs IMDSv1", "expires_on": "IN_30_DAYS"}),
    },
    "waiver_extend": {"GET": (ADMIN_ACTION_GET, None),
                      "POST": (ADMIN_ACTION, {"expires_on": "IN_60_DAYS", "comment": "vendor fix slipped"})},
    "waiver_revoke": {"GET": (ADMIN_ACTION_GET, None), "POST": (ADMIN_ACTION, {"comment": "fixed upstream"})},
}
# POSTs that change rows when allowed; the others must never change anything.
WRITES = {"instance_detail": False, "defaults_change": True, "change_new": True, "change_cancel": True,
          "change_retry": True, "change_rollback": True, "source_fix": True, "enforce": True}


def url_names():
    return {pattern.name for pattern in fleet_urls.urlpatterns}


def url_for(name, world):
    pattern = next(p for p in fleet_urls.urlpatterns if p.name == name)
    kwargs = {}
    if "instance_id" in pattern.pattern.converters:
        kwargs["instance_id"] = INSTANCE_ID
    if "pk" in pattern.pattern.converters:
        kwargs["pk"] = ({"api_token_revoke": 987654, "source_detail": world["source"].pk}.get(name)
                        or (world["waiver"].pk if name.startswith("waiver_") else world["batch"].pk))
    return reverse(f"fleet:{name}", kwargs=kwargs)


def cells():
    for name, methods in sorted(MATRIX.items()):
        for method, (expected, _data) in methods.items():
            for role in ROLES:
                yield pytest.param(name, method, role, expected[role], id=f"{name}-{method}-{role}")


def test_every_url_has_a_matrix_entry():
    missing = url_names() - set(MATRIX)
    stale = set(MATRIX) - url_names()
    assert not missing, f"URLs without a permission matrix entry: {sorted(missing)}"
    assert not stale, f"matrix entries for URLs that no longer exist: {sorted(stale)}"
    for name, methods in MATRIX.items():
        assert set(methods) == {"GET", "POST"}, name
        for expected, _ in methods.values():
            assert set(expected) == set(ROLES), name


def fingerprint():
    """What an action could change: batches, items and their states."""
    return (ChangeBatch.objects.count(), sorted(ChangeItem.objects.values_list("pk", "state")))


@pytest.mark.parametrize("name, method, role, expected", list(cells()))
def test_matrix(world, name, method, role, expected):
    client = client_for(role)
    url = url_for(name, world)
    data = MATRIX[name][method][1]
    if data and "targets" in data:
        data = data | {"targets": data["targets"].replace("ACCOUNT_PK", str(world["account"].pk))}
    if data and data.get("ids") == "SOURCE_PK":
        data = data | {"ids": str(world["source"].pk)}
    if data and str(data.get("expires_on", "")).startswith("IN_"):
        days = int(data["expires_on"].split("_")[1])
        data = data | {"expires_on": (timezone.now().date() + timedelta(days=days)).isoformat()}
    before = fingerprint()
    response = client.get(url, data) if method == "GET" else client.post(url, data or {})
    if expected == LOGIN:
        assert response.status_code == 302, (url, response.status_code)
        assert response["Location"].startswith(reverse("login") + "?next="), response["Location"]
    else:
        assert response.status_code == expected, (url, method, role, response.status_code)
    if response.status_code == 403:  # the friendly page naming the role needed, not a bare refusal
        assert (b"admin role" if name.startswith("waiver_") else b"operator role") in response.content
    if method == "POST" and not (expected == 302 and WRITES.get(name)):
        assert fingerprint() == before, f"{role} {method} {url} changed rows"
    if method == "POST" and expected == 302 and WRITES.get(name) and name in ("change_new", "defaults_change"):
        assert ChangeBatch.objects.count() == before[0] + 1


ADMIN_PAGES = ("admin:index", "admin:fleet_account_changelist", "admin:fleet_instance_changelist",
               "admin:fleet_changebatch_changelist")


@pytest.mark.parametrize("role", ROLES)
def test_admin_site_only_for_admins(world, role):
    client = client_for(role)
    pages = [reverse(name) for name in ADMIN_PAGES]
    pages.append(reverse("admin:fleet_account_change", args=[world["account"].pk]))
    for url in pages:
        response = client.get(url)
        if role == "admin":
            assert response.status_code == 200, url
        else:
            assert response.status_code == 302, url
            assert "/login/" in response["Location"], url
    # Logins are managed with ``manage.py fleet_user``: the admin role manages accounts, not users.
    if role == "admin":
        assert client.get(reverse("admin:auth_user_changelist")).status_code == 403


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_non_admins_cannot_edit_accounts(world, role):
    client = client_for(role)
    url = reverse("admin:fleet_account_change", args=[world["account"].pk])
    response = client.post(url, {"account_id": ACCOUNT_ID, "name": "hijacked", "regions": ["us-east-1"]})
    assert response.status_code == 302
    world["account"].refresh_from_db()
    assert world["account"].name == "prod"
