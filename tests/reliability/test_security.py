"""Security promises checked on the server side: hostile AWS data renders as text, CSV cells are
never formulas, every POST needs a CSRF token, security headers everywhere (HSTS in production),
``check --deploy`` is clean, and templates keep scripts in files (ready for a CSP)."""

import csv
import io
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet import urls as fleet_urls
from fleet.choices import ChangeKind
from fleet.csv_export import FORMULA_PREFIXES
from fleet.models import ChangeBatch, SyncRun
from fleet.tests.factories import (
    AccountFactory,
    ChangeBatchFactory,
    ChangeItemFactory,
    InstanceFactory,
    MetadataDefaultsFactory,
    UserFactory,
)

from .conftest import ACCOUNT_ID, client_for
from .test_access_matrix import MATRIX, url_for

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]

PAYLOADS = (
    '<script>alert("xss-1")</script>',
    "<img src=x onerror=alert(2)>",
    '"><svg onload=alert(3)>',
    "'><iframe src=javascript:alert(4)>",
)


# ---------------------------------------------------------------- XSS


@pytest.fixture
def hostile(world):
    """Every string that comes from AWS or a user, set to a payload somewhere a page shows it."""
    p1, p2, p3, p4 = PAYLOADS
    account = world["account"]
    account.name = p3[:100]
    account.save()
    evil = InstanceFactory(
        account=account, instance_id="i-00000000000000bad", name=p1, instance_type=p4[:32],
        tags={"Name": p1, "Owner": p2, p3: p4, "team": "payments"},
    )
    MetadataDefaultsFactory(account=AccountFactory(account_id="222222222222", name=p2[:100]), region="us-east-1",
                            managed_by="declarative-policy", managed_exception_message=p1, status="known")
    world["account"].defaults.filter(region="eu-west-1").update(status="unknown", error=p4)
    batch = ChangeBatchFactory(kind=ChangeKind.INSTANCE_OPTIONS, comment=p1, selection=p2, dry_run=True,
                               preflight_report={f"{ACCOUNT_ID}/us-east-1": {"ok": False, "error_code": p3,
                                                                             "message": p4}})
    ChangeItemFactory(batch=batch, instance=evil, state="failed", error_code=p2[:64], error_message=p1,
                      reason=p3, previous={"http_tokens": "optional"})
    SyncRun.objects.create(account=account, region="us-east-1", started_at=timezone.now(),
                           finished_at=timezone.now(), status="failed", error=p1)
    from fleet.models import Waiver

    Waiver.objects.create(scope="tag", tag_key=p3[:128], tag_value=p4[:256], owner=p1[:150], reason=p2,
                          expires_on=timezone.now().date() + timedelta(days=30))
    return {**world, "evil": evil, "evil_batch": batch}


def rendered_pages(client, hostile):
    """Every page a user can open (GET) with the hostile data, plus the htmx partials."""
    ids = {"instance_id": hostile["evil"].instance_id, "pk": hostile["evil_batch"].pk}
    for pattern in fleet_urls.urlpatterns:
        kwargs = {name: ids[name] for name in pattern.pattern.converters}
        url = reverse(f"fleet:{pattern.name}", kwargs=kwargs)
        response = client.get(url, MATRIX[pattern.name]["GET"][1])
        if response.status_code == 405:
            continue
        yield url, response
    yield "list?htmx", client.get(reverse("fleet:instance_list"), HTTP_HX_REQUEST="true")
    yield "list?q", client.get(reverse("fleet:instance_list"), {"q": PAYLOADS[0]})
    yield "confirm?ids", client.get(reverse("fleet:change_new"), {"ids": PAYLOADS[1], "http_tokens": "required"})
    yield "confirm?filter", client.get(reverse("fleet:change_new"), {"filter": f"q={PAYLOADS[2]}",
                                                                     "http_tokens": "required"})
    yield "defaults?targets", client.get(reverse("fleet:defaults_change"), {"targets": PAYLOADS[0]})
    yield "admin instance", client.get(reverse("admin:fleet_instance_change", args=[hostile["evil"].pk]))
    yield "admin instances", client.get(reverse("admin:fleet_instance_changelist"))
    yield "admin batch", client.get(reverse("admin:fleet_changebatch_change", args=[hostile["evil_batch"].pk]))
    yield "admin accounts", client.get(reverse("admin:fleet_account_changelist"))


def test_hostile_strings_render_as_text_everywhere(hostile):
    client = client_for("admin")
    checked = 0
    for url, response in rendered_pages(client, hostile):
        assert response.status_code < 500, url
        body = b"".join(response.streaming_content) if response.streaming else response.content
        if "csv" in response.get("Content-Type", ""):
            continue  # not HTML; formulas are checked below
        html = body.decode()
        for payload in PAYLOADS:
            assert payload not in html, f"{url} renders {payload!r} unescaped"
        assert not re.search(r"<(script|img|svg|iframe)[^>]*(onerror|onload|javascript:)", html, re.I), url
        checked += 1
    assert checked >= 15


def test_payload_is_visible_as_text(hostile):
    """Escaped, not dropped: the operator must still see what AWS holds."""
    html = client_for("viewer").get(hostile["evil"].get_absolute_url()).content.decode()
    assert "&lt;script&gt;alert(&quot;xss-1&quot;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html


def test_templates_keep_scripts_in_files():
    """No inline <script> or on*= handler in any template, so a `script-src 'self'` CSP holds."""
    offenders = []
    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text()
        for match in re.finditer(r"<script\b[^>]*>", text):
            if "src=" not in match.group(0):
                offenders.append(f"{path.relative_to(ROOT)}: inline script")
        if re.search(r"\son[a-z]+\s*=", text):
            offenders.append(f"{path.relative_to(ROOT)}: inline event handler")
        if "hx-on" in text:
            offenders.append(f"{path.relative_to(ROOT)}: hx-on (evaluated JavaScript)")
    assert not offenders


# ---------------------------------------------------------------- CSV injection


def test_csv_export_never_starts_a_cell_with_a_formula(world):
    # The views tests check name and account name per prefix; here every text column at once,
    # prefixes hidden behind whitespace-free variants and payloads in every text field.
    evil = [f"{prefix}cmd|' /C calc'!A0" for prefix in FORMULA_PREFIXES] + ['=HYPERLINK("http://x","y")',
                                                                            "@SUM(1+1)*cmd|' /C calc'!A0"]
    for n, payload in enumerate(evil):
        account = AccountFactory(name=payload[:100])
        InstanceFactory(account=account, instance_id=f"i-{n + 1:017x}", name=payload, instance_type=payload[:32],
                        instance_state="running")
    response = client_for("viewer").get(reverse("fleet:instance_export"), {"gone": "all"})
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert len(rows) == 1 + len(evil) + 3
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA_PREFIXES), (row, cell)
    names = {row[rows[0].index("name")] for row in rows[1:]}
    assert {"'" + payload for payload in evil} <= names  # kept, with a leading quote


# ---------------------------------------------------------------- CSRF


def post_urls(world):
    """Every POST URL the project has: the matrix's (all of fleet.urls), login, logout, the admin."""
    urls = [(url_for(name, world), methods["POST"][1]) for name, methods in MATRIX.items()]
    urls += [
        (reverse("logout"), {}),
        (reverse("admin:fleet_account_change", args=[world["account"].pk]),
         {"account_id": ACCOUNT_ID, "name": "renamed", "regions": ["us-east-1"], "role_arn": ""}),
        (reverse("admin:fleet_account_add"),
         {"account_id": "333333333333", "name": "new", "regions": ["us-east-1"], "role_arn": ""}),
        (reverse("admin:logout"), {}),
    ]
    return urls


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_every_post_needs_a_csrf_token(world, role):
    client = client_for(role, enforce_csrf_checks=True)
    before = (ChangeBatch.objects.count(), world["account"].name)
    for url, data in post_urls(world):
        response = client.post(url, data)
        assert response.status_code == 403, (url, response.status_code)
        assert b"expired" in response.content, url  # the friendly CSRF page
    world["account"].refresh_from_db()
    assert (ChangeBatch.objects.count(), world["account"].name) == before
    assert client.get(reverse("fleet:overview")).status_code == 200  # still logged in


def test_login_needs_a_csrf_token():
    UserFactory(username="alice", role="viewer")
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("login"), {"username": "alice", "password": "pw-imdsweb-test"})
    assert response.status_code == 403
    assert client.get(reverse("fleet:overview")).status_code == 302


def test_the_same_posts_work_with_the_token(world):
    """The control: the 403s above come from CSRF, not from something else."""
    client = client_for("operator", enforce_csrf_checks=True)
    client.get(reverse("fleet:overview"))
    token = client.cookies["csrftoken"].value
    url = reverse("fleet:change_new")
    response = client.post(url, {"ids": "i-0123456789abcdef1", "http_tokens": "required"}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 302
    assert ChangeBatch.objects.filter(created_by__isnull=False).count() == 1


# ---------------------------------------------------------------- headers and deployment


def assert_security_headers(response, where):
    assert response["X-Content-Type-Options"] == "nosniff", where
    assert response["Referrer-Policy"] == "same-origin", where
    assert response["X-Frame-Options"] == "DENY", where
    assert response["Cross-Origin-Opener-Policy"] == "same-origin", where


def test_security_headers_on_every_kind_of_response(world):
    viewer = client_for("viewer")
    responses = {
        "login": Client().get(reverse("login")),
        "redirect to login": Client().get(reverse("fleet:overview")),
        "404": viewer.get("/no/such/page/"),
        "403": viewer.get(reverse("fleet:change_new")),
        "400": client_for("operator").get(reverse("fleet:change_new"), {"ids": "nope", "http_tokens": "x"}),
        "csv": viewer.get(reverse("fleet:instance_export")),
        "htmx partial": viewer.get(reverse("fleet:instance_list"), HTTP_HX_REQUEST="true"),
        "progress": viewer.get(reverse("fleet:change_progress", args=[world["batch"].pk])),
    }
    for pattern in fleet_urls.urlpatterns:
        if MATRIX[pattern.name]["GET"][0]["viewer"] == 200:
            responses[pattern.name] = viewer.get(url_for(pattern.name, world))
    for where, response in responses.items():
        assert_security_headers(response, where)


def test_session_cookie_is_httponly_and_samesite():
    UserFactory(username="bob", role="viewer")
    client = Client()
    response = client.post(reverse("login"), {"username": "bob", "password": "pw-imdsweb-test"})
    assert response.status_code == 302
    cookie = response.cookies["sessionid"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


def production_env(**extra):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "imdsweb.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "rel-" + "k3y-" * 20 + "x9Q!zL2#vB7@",
        "DJANGO_ALLOWED_HOSTS": "imdsweb.example.com",
        "DATABASE_URL": "sqlite:///:memory:",
        **extra,
    }
    return env


def test_check_deploy_is_clean_in_production_mode():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=production_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = production_env()
    env.pop("DJANGO_SECRET_KEY")
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


PRODUCTION_PROBE = r"""
import django, json
django.setup()
from django.conf import settings
# Production serves a collectstatic manifest; this probe has none, and headers do not depend on it.
settings.STORAGES = {**settings.STORAGES, "staticfiles": {
    "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
from django.test import Client
client = Client(HTTP_HOST="imdsweb.example.com")
plain = client.get("/accounts/login/")
secure = client.get("/accounts/login/", secure=True)
other_host = Client(HTTP_HOST="evil.example.net").get("/accounts/login/", secure=True)
print(json.dumps({
    "plain": [plain.status_code, plain.get("Location", "")],
    "secure": secure.status_code,
    "headers": {k: secure.get(k) for k in ("Strict-Transport-Security", "X-Content-Type-Options",
                                           "Referrer-Policy", "X-Frame-Options")},
    "csrf_cookie": {"secure": bool(secure.cookies["csrftoken"]["secure"])},
    "other_host": other_host.status_code,
}))
"""


def test_production_headers_hsts_https_redirect_and_host_check():
    import json

    result = subprocess.run([sys.executable, "-c", PRODUCTION_PROBE], cwd=ROOT, env=production_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["plain"] == [301, "https://imdsweb.example.com/accounts/login/"]
    assert probe["secure"] == 200
    headers = probe["headers"]
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Frame-Options"] == "DENY"
    assert probe["csrf_cookie"]["secure"] is True
    assert probe["other_host"] == 400
