"""The demo's known logins: the demo creates one per role and prints them all; compose's
``setup`` service (``scripts/demo.py --setup-only``) creates them only in a debug configuration,
never with DJANGO_DEBUG off (a known password in production)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def demo(monkeypatch):
    spec = importlib.util.spec_from_file_location("imdsweb_demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = []
    monkeypatch.setattr(module, "manage", lambda env, *args: calls.append(args))
    monkeypatch.setattr(module, "wait_http", lambda url, **kwargs: json.dumps([]).encode())
    module.calls = calls
    return module


def created_logins(calls):
    return [(args[2], args[4], args[6]) for args in calls if args[:2] == ("fleet_user", "set")]


@pytest.mark.parametrize("debug", ["false", "off", "0", "no"])
def test_compose_setup_creates_no_known_login_without_debug(demo, monkeypatch, debug):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://simulator:4566")
    monkeypatch.setenv("DJANGO_DEBUG", debug)
    demo.setup_only()
    assert created_logins(demo.calls) == []
    assert ("migrate", "--noinput", "-v", "0") in demo.calls  # the rest of the setup still ran


@pytest.mark.parametrize("debug", [None, "true", "1", "yes"])
def test_compose_setup_in_debug_and_the_demo_create_one_login_per_role(demo, monkeypatch, debug):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://simulator:4566")
    if debug is None:
        monkeypatch.delenv("DJANGO_DEBUG", raising=False)  # compose's default is true
    else:
        monkeypatch.setenv("DJANGO_DEBUG", debug)
    demo.setup_only()
    logins = created_logins(demo.calls)
    assert sorted(role for _, role, _ in logins) == ["admin", "operator", "viewer"]
    assert logins == [(user, role, password) for user, password, role in demo.DEMO_LOGINS]
    demo.calls.clear()
    demo.setup({}, "http://127.0.0.1:4566")  # make demo: always
    assert len(created_logins(demo.calls)) == 3


def test_the_demo_logins_pass_the_password_validators(demo):
    """fleet_user set refuses what AUTH_PASSWORD_VALIDATORS refuse: a demo password like its
    username (demo-viewer / imdsweb-demo-viewer) stopped make demo at its first login."""
    from django.contrib.auth.models import User
    from django.contrib.auth.password_validation import validate_password

    for user, password, _role in demo.DEMO_LOGINS:
        validate_password(password, user=User(username=user))
