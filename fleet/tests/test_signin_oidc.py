"""Single sign-on against a real OpenID Connect provider process (``fleet/tests/oidc.py``): first
sign-in creates the user, the groups claim gives the role at every sign-in, and every kind of bad
sign-in (bad code, replayed state, expired, tampered or foreign token, wrong issuer, no group) ends
on the login page with a reason and no session."""

import base64
import json

import jwt
import pytest
import requests
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.core.exceptions import SuspiciousOperation
from django.test import Client, RequestFactory
from django.urls import reverse

from fleet import signin
from fleet.models import OidcIdentity

from .factories import UserFactory
from .oidc import CLIENT_ID, CLIENT_SECRET, OidcProvider, provider_login, sign_in

pytestmark = pytest.mark.django_db
CALLBACK = "http://testserver/oidc/callback/"
PASSWORD = "correct horse battery staple"


def account(groups, email=None, name="Alice Example"):
    return {"password": PASSWORD, "email": email or "alice@example.com", "name": name, "groups": groups}


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    idp = OidcProvider(tmp_path_factory.mktemp("oidc") / "accounts.json", [CALLBACK]).start()
    yield idp
    idp.stop()


@pytest.fixture
def sso(provider, settings):
    provider.settings(settings)
    provider.set_accounts({"alice": account(["imdsweb-operator"])})
    return provider


def role_of(user):
    user.refresh_from_db()
    return [group.name for group in user.groups.all()], user.is_staff


def messages_of(response):
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_first_sign_in_creates_the_user_with_the_role_of_its_group(sso):
    client = Client()
    response = sign_in(client, "alice", PASSWORD)
    assert response.status_code == 302 and response["Location"] == reverse("fleet:overview")
    user = User.objects.get(username="alice")
    assert role_of(user) == (["operator"], False)
    assert user.email == "alice@example.com" and not user.has_usable_password()
    identity = OidcIdentity.objects.get(user=user)
    assert (identity.issuer, identity.subject, identity.groups) == (sso.issuer, "alice", ["imdsweb-operator"])
    admin = UserFactory(role="admin")
    admin_client = Client()
    admin_client.force_login(admin)
    listing = admin_client.get(reverse("admin:fleet_oidcidentity_changelist")).content.decode()
    assert "alice" in listing and "imdsweb-operator" in listing  # admins see who signed in, and why
    page = client.get(reverse("fleet:change_new"), {"ids": "i-0123456789abcdef0", "http_tokens": "required"})
    assert page.status_code != 403  # an operator's page
    assert client.get(reverse("fleet:overview")).context["user"] == user


def test_next_url_is_kept_through_the_provider(sso):
    response = sign_in(Client(), "alice", PASSWORD, next_url="/changes/")
    assert response["Location"] == "/changes/"


@pytest.mark.parametrize(("groups", "expected"), [
    (["imdsweb-viewer"], (["viewer"], False)),
    (["imdsweb-operator"], (["operator"], False)),
    (["imdsweb-admin"], (["admin"], True)),
    (["imdsweb-viewer", "imdsweb-admin", "unrelated"], (["admin"], True)),  # the highest wins
])
def test_groups_claim_maps_to_roles(sso, groups, expected):
    sso.set_accounts({"alice": account(groups)})
    assert sign_in(Client(), "alice", PASSWORD).status_code == 302
    assert role_of(User.objects.get(username="alice")) == expected


def test_group_names_are_configurable(sso, settings):
    settings.IMDSWEB_OIDC_ROLE_GROUPS = {"admin": ["ops-leads"], "operator": ["ops"], "viewer": ["everyone"]}
    sso.set_accounts({"alice": account(["ops", "everyone"])})
    sign_in(Client(), "alice", PASSWORD)
    assert role_of(User.objects.get(username="alice")) == (["operator"], False)


def test_role_is_re_evaluated_at_each_sign_in_and_group_removal_removes_it(sso):
    sso.set_accounts({"alice": account(["imdsweb-admin"])})
    sign_in(Client(), "alice", PASSWORD)
    user = User.objects.get(username="alice")
    assert role_of(user) == (["admin"], True)

    sso.set_accounts({"alice": account(["imdsweb-viewer"])})  # demoted at the provider
    client = Client()
    sign_in(client, "alice", PASSWORD)
    assert role_of(user) == (["viewer"], False)
    assert client.get(reverse("admin:index")).status_code == 302  # no admin site any more
    assert User.objects.filter(username="alice").count() == 1  # the same user, not a new one

    sso.set_accounts({"alice": account([])})  # removed from every imdsweb group
    client = Client()
    response = sign_in(client, "alice", PASSWORD)
    assert response["Location"] == reverse("login")
    assert "not in any imdsweb group" in " ".join(messages_of(response))
    assert role_of(user) == ([], False)
    assert client.get(reverse("fleet:overview")).status_code == 302  # not signed in


def test_no_group_at_first_sign_in_creates_nobody(sso):
    sso.set_accounts({"alice": account(["somebody-elses-app"])})
    response = sign_in(Client(), "alice", PASSWORD)
    assert response["Location"] == reverse("login")
    assert not User.objects.filter(username="alice").exists()


def test_users_are_matched_by_subject_not_email(sso):
    """A local account with the same email is not taken over, nor is one with the same name."""
    UserFactory(username="mallory", email="alice@example.com", role="admin")
    sign_in(Client(), "alice", PASSWORD)
    assert role_of(User.objects.get(username="mallory")) == (["admin"], True)
    assert role_of(User.objects.get(username="alice")) == (["operator"], False)

    local = UserFactory(username="bob", role="admin")
    sso.set_accounts({"bob": account(["imdsweb-viewer"], email="bob@example.com")})
    response = sign_in(Client(), "bob", PASSWORD)
    assert response["Location"] == reverse("login")
    assert "A local account named 'bob' exists" in " ".join(messages_of(response))
    assert not OidcIdentity.objects.filter(user=local).exists()


def test_a_bad_or_used_code_is_refused_with_a_reason(sso):
    client = Client()
    start = client.get("/oidc/authenticate/")
    callback = provider_login(start["Location"], "alice", PASSWORD, stop_at=CALLBACK)
    query = dict(part.split("=", 1) for part in callback.split("?", 1)[1].split("&"))
    forged = client.get("/oidc/callback/", {**query, "code": "forged-" + query["code"][7:]})
    assert forged.status_code == 302 and forged["Location"] == reverse("login")
    assert "refused the sign-in" in " ".join(messages_of(forged))
    # The state was spent by that attempt: the genuine code cannot be replayed either.
    replay = client.get("/oidc/callback/", query)
    assert replay.status_code == 302 and replay["Location"] == reverse("login")
    assert "already used" in " ".join(messages_of(replay))
    assert not User.objects.filter(username="alice").exists()
    assert client.get(reverse("fleet:overview")).status_code == 302


def test_provider_error_answer_is_shown(sso):
    client = Client()
    client.get("/oidc/authenticate/")
    state = next(iter(client.session["oidc_states"]))
    response = client.get("/oidc/callback/", {"error": "access_denied", "state": state})
    assert response["Location"] == reverse("login")
    assert "access_denied" in " ".join(messages_of(response))


def test_wrong_issuer_is_refused_before_leaving_for_the_provider(sso, settings):
    # The same provider reached under another name: its discovery document names 127.0.0.1.
    settings.IMDSWEB_OIDC_ISSUER = sso.issuer.replace("127.0.0.1", "localhost")
    client = Client()
    response = client.get("/oidc/authenticate/")
    assert response.status_code == 302 and response["Location"] == reverse("login")
    page = client.get(response["Location"])
    assert "issuer does not match" in page.content.decode()


@pytest.fixture
def real_tokens(sso):
    """An ID token and access token the real provider issued to this client (code flow by hand)."""
    client = Client()
    start = client.get("/oidc/authenticate/")
    callback = provider_login(start["Location"], "alice", PASSWORD, stop_at=CALLBACK)
    code = callback.split("code=", 1)[1].split("&", 1)[0]
    state = next(iter(client.session["oidc_states"].values()))
    document = requests.get(f"{sso.issuer}/.well-known/openid-configuration", timeout=10).json()
    tokens = requests.post(document["token_endpoint"], timeout=10, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK, "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "code_verifier": state["code_verifier"],
    }).json()
    return tokens["id_token"], state["nonce"]


def backend():
    instance = signin.OidcBackend()
    document = signin.discovery()
    instance.OIDC_OP_JWKS_ENDPOINT = document["jwks_uri"]
    return instance


def test_the_real_token_verifies(real_tokens):
    token, nonce = real_tokens
    payload = backend().verify_token(token, nonce=nonce)
    assert payload["sub"] == "alice" and payload["aud"] == CLIENT_ID


def _b64(data):
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("tamper", ["payload", "signature", "alg-none", "nonce"])
def test_a_tampered_token_is_refused(real_tokens, tamper):
    token, nonce = real_tokens
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    if tamper == "payload":  # promote oneself: same signature, other claims
        token = ".".join([header, _b64({**claims, "groups": ["imdsweb-admin"]}), signature])
    elif tamper == "signature":
        token = ".".join([header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")])
    elif tamper == "alg-none":
        token = ".".join([_b64({"alg": "none", "typ": "JWT"}), payload, ""])
    with pytest.raises(SuspiciousOperation):
        backend().verify_token(token, nonce="another-sign-in" if tamper == "nonce" else nonce)


def test_a_token_for_another_client_or_issuer_is_refused(real_tokens, settings):
    token, nonce = real_tokens
    verifier = backend()
    verifier.OIDC_RP_CLIENT_ID = "another-client"
    with pytest.raises(SuspiciousOperation, match="another client"):
        verifier.verify_token(token, nonce=nonce)
    verifier = backend()
    settings.IMDSWEB_OIDC_ISSUER = "https://idp.example.com"
    with pytest.raises(SuspiciousOperation, match="another issuer"):
        verifier.verify_token(token, nonce=nonce)


def test_an_expired_token_is_refused(provider, settings, tmp_path):
    """A provider whose clock is 10 minutes slow issues ID tokens that expired before they arrive."""
    slow = OidcProvider(tmp_path / "accounts.json", [CALLBACK], clock_offset=-600, id_token_ttl=60).start()
    try:
        slow.settings(settings)
        slow.set_accounts({"alice": account(["imdsweb-operator"])})
        client = Client()
        response = sign_in(client, "alice", PASSWORD)
        assert response["Location"] == reverse("login")
        assert "expired" in " ".join(messages_of(response))
        assert not User.objects.filter(username="alice").exists()
        assert client.get(reverse("fleet:overview")).status_code == 302
    finally:
        slow.stop()


def test_wrong_password_at_the_provider_never_reaches_us(sso):
    client = Client()
    start = client.get("/oidc/authenticate/")
    with pytest.raises(PermissionError):
        provider_login(start["Location"], "alice", "wrong", stop_at=CALLBACK)


def test_sso_views_are_404_when_not_configured(settings):
    settings.IMDSWEB_OIDC_ISSUER = ""
    assert Client().get("/oidc/authenticate/").status_code == 404
    assert Client().get("/oidc/callback/", {"code": "x", "state": "y"}).status_code == 404
    assert b"sso-login" not in Client().get(reverse("login")).content


def test_login_page_offers_sso_and_local_accounts_can_be_switched_off(sso, settings):
    page = Client().get(reverse("login")).content.decode()
    assert 'id="sso-login"' in page and 'name="password"' in page

    settings.IMDSWEB_LOCAL_LOGIN = False
    settings.AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "fleet.signin.OidcBackend"]
    UserFactory(username="carol", role="admin")
    page = Client().get(reverse("login")).content.decode()
    assert 'id="sso-login"' in page and 'name="password"' not in page
    client = Client()
    assert client.post(reverse("login"), {"username": "carol", "password": "pw-imdsweb-test"}).status_code == 405
    admin_login = client.post("/admin/login/", {"username": "carol", "password": "pw-imdsweb-test"})
    assert admin_login.status_code == 302 and admin_login["Location"].startswith(reverse("login"))
    assert client.get(reverse("fleet:overview")).status_code == 302  # the password got nobody in
    # Single sign-on still works, and so does the session it makes.
    assert sign_in(client, "alice", PASSWORD)["Location"] == reverse("fleet:overview")
    assert client.get(reverse("fleet:overview")).status_code == 200


def test_unreachable_provider_is_a_message_not_a_500(settings):
    settings.IMDSWEB_OIDC_ISSUER = "http://127.0.0.1:9"  # nothing listens on the discard port
    settings.OIDC_TIMEOUT = 2
    response = Client().get("/oidc/authenticate/")
    assert response.status_code == 302 and response["Location"] == reverse("login")
    request = RequestFactory().get("/oidc/callback/", {"code": "c", "state": "s"})
    request.session = {}
    assert signin.OidcBackend().authenticate(request, nonce="n", code_verifier="v") is None
    assert "could not be reached" in request.signin_error
