"""Sign-in throttling and the hardening around it: lockouts with 429 on the app's and the admin's
login (per username and per address, no password hash while locked out, visible to admins), the
Content-Security-Policy and private caching on every kind of response, session timeouts, the
password-reset pages only with email, CSV cells that are never formulas, GET/HEAD-only exports."""

import csv
import io
import json
import logging
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from axes.models import AccessAttempt, AccessFailureLog
from django.contrib.auth.hashers import MD5PasswordHasher
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet import signin
from fleet.csv_export import FORMULA_CHARACTERS, neutralise
from fleet.tests.factories import AccountFactory, InstanceFactory, UserFactory

from .conftest import client_for
from .test_access_matrix import MATRIX, url_for
from .test_security import ROOT, production_env

pytestmark = pytest.mark.django_db
POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")


def directives(policy):
    return {part.strip() for part in policy.split(";")}

GOOD = "pw-imdsweb-test"
LOGINS = {"app": "/accounts/login/", "admin": "/admin/login/"}


def attempt(url, username, password, address="10.0.0.1"):
    return Client(REMOTE_ADDR=address).post(url, {"username": username, "password": password})


# ---------------------------------------------------------------- throttling


@pytest.mark.parametrize("where", LOGINS)
def test_failures_lock_the_username_out_with_429_and_when_to_retry(where, settings):
    url = LOGINS[where]
    UserFactory(username="olivia", role="admin")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert attempt(url, "olivia", "wrong").status_code == 200  # the form again, with its error
    locked = attempt(url, "olivia", "wrong")
    assert locked.status_code == 429
    assert "Try again in 15 minutes" in locked.content.decode()
    assert 895 <= int(locked["Retry-After"]) <= 900
    # The wait counts from the last recorded failure: five minutes later, ten are left.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=5))
    later = attempt(url, "olivia", "wrong")
    assert later.status_code == 429 and "Try again in 10 minutes" in later.content.decode()
    assert 595 <= int(later["Retry-After"]) <= 600
    # Locked out: the right password does not get in either, from anywhere.
    assert attempt(url, "olivia", GOOD, address="10.9.9.9").status_code == 429


def test_failures_lock_the_address_out_across_usernames(settings):
    for n in range(settings.AXES_FAILURE_LIMIT):
        attempt(LOGINS["app"], f"guess-{n}", "wrong", address="10.0.0.7")
    UserFactory(username="peter", role="viewer")
    assert attempt(LOGINS["app"], "peter", GOOD, address="10.0.0.7").status_code == 429
    assert attempt(LOGINS["app"], "peter", GOOD, address="10.0.0.8").status_code == 302  # others unaffected


def test_behind_a_proxy_the_client_address_is_the_one_the_proxy_saw(settings):
    """IMDSWEB_PROXY_COUNT=1: the address is the last one the proxy appended to X-Forwarded-For,
    not the proxy's (shared by everyone) nor one the client wrote itself."""
    settings.IMDSWEB_PROXY_COUNT = 1

    def through_proxy(username, password, forwarded):
        return Client(REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded).post(
            LOGINS["app"], {"username": username, "password": password})

    for n in range(settings.AXES_FAILURE_LIMIT):
        through_proxy(f"guess-{n}", "wrong", "203.0.113.5")
    UserFactory(username="zoe", role="viewer")
    assert through_proxy("zoe", GOOD, "203.0.113.5").status_code == 429
    assert through_proxy("zoe", GOOD, "198.51.100.1, 203.0.113.5").status_code == 429  # a forged prefix
    assert through_proxy("zoe", GOOD, "203.0.113.6").status_code == 302  # another client of the proxy
    assert through_proxy("zoe", GOOD, "not-an-address").status_code == 302  # junk: the connection's, no 500


def test_a_successful_login_after_the_window_works(settings):
    UserFactory(username="quinn", role="viewer")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(LOGINS["app"], "quinn", "wrong")
    assert attempt(LOGINS["app"], "quinn", GOOD).status_code == 429
    # The window passes (every attempt, the last locked-out one included, is 16 minutes old).
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    response = attempt(LOGINS["app"], "quinn", GOOD)
    assert response.status_code == 302 and response["Location"] == reverse("fleet:overview")


def test_lockouts_are_logged_and_visible_to_admins(settings, caplog):
    UserFactory(username="rita", role="viewer")
    with caplog.at_level(logging.WARNING):
        for _ in range(settings.AXES_FAILURE_LIMIT + 3):
            attempt(LOGINS["app"], "rita", "wrong", address="10.0.0.42")
    assert any("Locking out" in record.getMessage() for record in caplog.records)
    refused = [record.getMessage() for record in caplog.records if record.name == "fleet.signin"]
    assert len(refused) == 4  # the attempt that reached the limit and the three after it
    assert all("locked out: username 'rita' from 10.0.0.42" in line for line in refused)
    assert AccessFailureLog.objects.filter(username="rita").count() == settings.AXES_FAILURE_LIMIT
    assert AccessFailureLog.objects.filter(username="rita", locked_out=True).count() == 1
    admin = client_for("admin")
    for page in ("admin:axes_accessattempt_changelist", "admin:axes_accessfailurelog_changelist"):
        response = admin.get(reverse(page))
        assert response.status_code == 200, page
        assert "rita" in response.content.decode() and "10.0.0.42" in response.content.decode()
    for role in ("viewer", "operator"):
        assert client_for(role).get(reverse("admin:axes_accessattempt_changelist")).status_code == 302


class CountingHasher(MD5PasswordHasher):
    """Counts every hash computed (checking a password, or hashing one for a missing user)."""

    calls = 0

    def encode(self, password, salt):
        CountingHasher.calls += 1
        return super().encode(password, salt)


@pytest.mark.parametrize("where", LOGINS)
def test_a_locked_out_attempt_costs_no_password_hash(where, settings):
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    UserFactory(username="sam", role="admin")
    url = LOGINS[where]
    CountingHasher.calls = 0
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(url, "sam", "wrong")
        attempt(url, "nobody-by-that-name", "wrong", address="10.0.0.2")
    assert CountingHasher.calls >= 2 * settings.AXES_FAILURE_LIMIT - 2  # failures before the lockout hash
    CountingHasher.calls = 0
    for _ in range(20):
        assert attempt(url, "sam", "wrong").status_code == 429
        assert attempt(url, "nobody-by-that-name", "wrong", address="10.0.0.2").status_code == 429
    assert CountingHasher.calls == 0


class SlowCountingHasher(CountingHasher):
    """A tenth of a second per hash, so that concurrent attempts overlap as real ones would."""

    def encode(self, password, salt):
        time.sleep(0.1)
        return super().encode(password, salt)


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_concurrent_attempts_costs_no_more_hashes_than_the_limit(settings, role_groups):
    """8 connections at once: without the one-check-at-a-time backend all 8 first attempts hash
    before the first failure is counted."""
    import threading

    from django.db import connection

    settings.PASSWORD_HASHERS = [f"{__name__}.SlowCountingHasher"]
    UserFactory(username="yara", role="viewer")
    CountingHasher.calls = 0
    statuses = []

    def connection_of_the_flood(n):
        try:
            for attempt_number in range(3):
                statuses.append(attempt(LOGINS["app"], "yara", f"wrong-{n}-{attempt_number}",
                                        address="10.0.0.66").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=connection_of_the_flood, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(statuses) == 24
    assert CountingHasher.calls <= settings.AXES_FAILURE_LIMIT, CountingHasher.calls
    assert statuses.count(429) >= 24 - settings.AXES_FAILURE_LIMIT


def test_a_locked_out_attempt_is_answered_after_the_tarpit_pause(settings, monkeypatch):
    settings.IMDSWEB_LOCKOUT_DELAY_SECONDS = 0.4  # (the suite's default is 0, production's 1 s)
    real_sleep, pauses = time.sleep, []

    def recorded_sleep(seconds):
        if seconds == 0.4:
            pauses.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(signin.time, "sleep", recorded_sleep)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        attempt(LOGINS["app"], "xena", "wrong")
    assert pauses == []  # failures before the lockout: no pause
    started = time.monotonic()
    assert attempt(LOGINS["app"], "xena", "wrong").status_code == 429
    assert time.monotonic() - started >= 0.4 and pauses == [0.4]


# ---------------------------------------------------------------- headers on every kind of response


def every_kind_of_response(world):
    viewer = client_for("viewer")
    responses = {
        "login": Client().get(reverse("login")),
        "redirect to login": Client().get(reverse("fleet:overview")),
        "404": viewer.get("/no/such/page/"),
        "403": viewer.get(reverse("fleet:change_new")),
        "400": client_for("operator").get(reverse("fleet:change_new"), {"ids": "nope", "http_tokens": "x"}),
        "405": viewer.post(reverse("fleet:instance_export")),
        "csv": viewer.get(reverse("fleet:instance_export")),
        "htmx partial": viewer.get(reverse("fleet:instance_list"), HTTP_HX_REQUEST="true"),
        "progress": viewer.get(reverse("fleet:change_progress", args=[world["batch"].pk])),
        "admin": client_for("admin").get(reverse("admin:index")),
    }
    for pattern in MATRIX:
        if MATRIX[pattern]["GET"][0]["viewer"] == 200:
            responses[pattern] = viewer.get(url_for(pattern, world))
    for _ in range(6):
        locked = attempt(LOGINS["app"], "tess", "wrong")
    responses["429"] = locked
    return responses


def test_csp_on_every_kind_of_response(world):
    for where, response in every_kind_of_response(world).items():
        assert directives(response["Content-Security-Policy"]) == directives(POLICY), where


def test_signed_in_responses_are_private_and_not_stored(world):
    for where, response in every_kind_of_response(world).items():
        if where in ("login", "redirect to login", "429"):
            continue
        directives = {part.strip() for part in response.get("Cache-Control", "").split(",")}
        assert {"private", "no-store"} <= directives, (where, response.get("Cache-Control"))


def test_templates_have_no_inline_style():
    """style-src 'self' holds: no style attribute or <style> element in any template."""
    import re

    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "templates").rglob("*.html")
                 if re.search(r"\sstyle\s*=|<style\b", path.read_text())]
    assert not offenders
    base = (ROOT / "templates/base.html").read_text()
    assert '"includeIndicatorStyles": false' in base  # htmx would insert a <style> otherwise


# ---------------------------------------------------------------- sessions


def test_session_idle_timeout_defaults_to_a_working_day(settings):
    assert settings.SESSION_COOKIE_AGE == 8 * 3600
    UserFactory(username="uma", role="viewer")
    response = attempt(LOGINS["app"], "uma", GOOD)
    assert response.cookies["sessionid"]["max-age"] == 8 * 3600


def _session_of(client):
    return Session.objects.get(session_key=client.cookies["sessionid"].value)


def test_activity_pushes_the_idle_timeout_back_and_idleness_ends_the_session():
    UserFactory(username="vic", role="viewer")
    client = Client()
    client.post(LOGINS["app"], {"username": "vic", "password": GOOD})
    session = client.session
    session[signin.TOUCHED_KEY] = int(time.time()) - 120  # last activity two minutes ago
    session.save()
    before = _session_of(client).expire_date
    time.sleep(1)
    assert client.get(reverse("fleet:overview")).status_code == 200
    assert _session_of(client).expire_date > before  # active: the session lives on
    Session.objects.filter(pk=_session_of(client).pk).update(expire_date=timezone.now() - timedelta(seconds=1))
    assert client.get(reverse("fleet:overview")).status_code == 302  # idle past the timeout: signed out


def test_sessions_end_after_the_maximum_lifetime_even_when_active(settings):
    UserFactory(username="wes", role="viewer")
    client = Client()
    client.post(LOGINS["app"], {"username": "wes", "password": GOOD})
    session = client.session
    session[signin.AUTH_TIME_KEY] = int(time.time()) - settings.IMDSWEB_SESSION_MAX_HOURS * 3600 - 1
    session.save()
    response = client.get(reverse("fleet:instance_list"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert client.get(reverse("fleet:overview")).status_code == 302


SETTINGS_PROBE = r"""
import django, json
django.setup()
from django.conf import settings
from django.test import Client
from django.urls import NoReverseMatch, reverse
try:
    reverse("password_reset"); reset = True
except NoReverseMatch:
    reset = False
c = Client(HTTP_HOST="imdsweb.example.com")
print(json.dumps({"age": settings.SESSION_COOKIE_AGE, "max": settings.IMDSWEB_SESSION_MAX_HOURS, "reset": reset,
                  "reset_page": c.get("/accounts/password_reset/").status_code,
                  "backend": settings.EMAIL_BACKEND}))
"""


def probe(**env):
    result = subprocess.run([sys.executable, "-c", SETTINGS_PROBE], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env={**production_env(DJANGO_DEBUG="true"), **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_session_lifetime_is_configurable_and_password_reset_needs_email():
    plain = probe()
    assert (plain["age"], plain["max"], plain["reset"], plain["reset_page"]) == (28800, 24, False, 404)
    configured = probe(IMDSWEB_SESSION_IDLE_MINUTES="30", IMDSWEB_SESSION_MAX_HOURS="10",
                       EMAIL_URL="smtp+tls://mailer:secret@smtp.example.com:587")
    assert (configured["age"], configured["max"], configured["reset"]) == (1800, 10, True)
    assert configured["reset_page"] == 200
    assert configured["backend"] == "django.core.mail.backends.smtp.EmailBackend"


def test_check_deploy_is_clean_with_single_sign_on_only():
    env = production_env(IMDSWEB_OIDC_ISSUER="https://idp.example.com/realms/corp", IMDSWEB_OIDC_CLIENT_ID="imdsweb",
                         IMDSWEB_OIDC_CLIENT_SECRET="s3cret", IMDSWEB_LOCAL_LOGIN="false", IMDSWEB_PROXY_COUNT="1",
                         EMAIL_URL="smtp+tls://mailer:secret@smtp.example.com:587")
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


# ---------------------------------------------------------------- CSV and methods


HIDDEN_FORMULAS = [" =1+1", "  +cmd", "\n=HYPERLINK(\"http://x\")", "\r\n@SUM(A1)", "\t-2+3", "\u3000=1",
                   "\uff1dcmd|' /C calc'!A0", "\uff0b1", "\uff0d1", "\uff20SUM(1)", "|calc", ";calc", " \uff1d1"]


def test_csv_neutralises_hidden_and_full_width_formulas(world):
    for n, payload in enumerate(HIDDEN_FORMULAS):
        InstanceFactory(account=AccountFactory(name=payload.strip()[:100] or "x"), instance_id=f"i-{n + 1:017x}",
                        name=payload)
    text = b"".join(client_for("viewer").get(reverse("fleet:instance_export"), {"gone": "all"})
                    .streaming_content).decode()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    names = {row[rows[0].index("name")] for row in rows[1:]}
    for payload in HIDDEN_FORMULAS:
        assert "'" + payload in names, repr(payload)
    for cell in (c for row in csv.reader(io.StringIO(text, newline="")) for c in row):
        assert not cell.lstrip().startswith(FORMULA_CHARACTERS), repr(cell)


def test_ordinary_text_is_left_alone():
    for value in ("web-1", "10.0.0.1", "a=b", "x-y", "mail@example.com", "", None, 3, "i-0abc"):
        assert neutralise(value) == ("" if value is None else str(value))


@pytest.mark.parametrize("name", ["instance_export", "change_progress"])
def test_export_and_progress_answer_get_and_head_only(world, name):
    viewer = client_for("viewer")
    url = url_for(name, world)
    assert viewer.get(url).status_code == 200
    assert viewer.head(url).status_code == 200
    for method in ("post", "put", "patch", "delete"):
        response = getattr(viewer, method)(url)
        assert response.status_code == 405, method
        assert set(response["Allow"].split(", ")) == {"GET", "HEAD"}
