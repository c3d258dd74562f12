"""Signing in through the identity provider's own login page in Chromium, and the
Content-Security-Policy holding in a real browser (no violation on any page, the progress bar drawn
without inline styles)."""

import re

import pytest

from fleet.choices import ChangeKind
from fleet.roles import ensure_roles
from fleet.tests.browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT
from fleet.tests.factories import ChangeBatchFactory, ChangeItemFactory, InstanceFactory
from fleet.tests.oidc import OidcProvider

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium is not installed at {CHROMIUM}"),
]
PASSWORD = "correct horse battery staple"


@pytest.fixture
def provider(live_server, tmp_path, settings):
    idp = OidcProvider(tmp_path / "accounts.json", [f"{live_server.url}/oidc/callback/"]).start()
    idp.settings(settings, IMDSWEB_OIDC_PROVIDER_NAME="Test IdP")
    idp.set_accounts({"alice": {"password": PASSWORD, "email": "alice@example.com", "name": "Alice",
                                "groups": ["imdsweb-admin"]}})
    yield idp
    idp.stop()


@pytest.fixture
def page(live_server, monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop here
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
        context.set_default_timeout(20_000)
        page = context.new_page()
        page.csp_violations = []
        page.on("console", lambda message: "Content Security Policy" in message.text
                and page.csp_violations.append(message.text))
        yield page
        browser.close()


def test_sign_in_through_the_providers_login_page_and_no_csp_violation(page, live_server, provider):
    from playwright.sync_api import expect

    ensure_roles()
    batch = ChangeBatchFactory(kind=ChangeKind.INSTANCE_OPTIONS, comment="csp check")
    for n, state in enumerate(("applied", "applied", "failed", "queued")):
        ChangeItemFactory(batch=batch, instance=InstanceFactory(instance_id=f"i-{n + 1:017x}"), state=state,
                          previous={"http_tokens": "optional"})

    page.goto("/changes/")
    assert "/accounts/login/" in page.url
    page.get_by_role("link", name="Sign in with Test IdP").click()
    page.wait_for_url(re.compile(re.escape(provider.issuer) + "/interaction/"))  # the provider's own page
    page.locator("#login").fill("alice")
    page.locator("#password").fill("not the password")
    page.locator("#submit").click()
    expect(page.locator("#error")).to_contain_text("Wrong username or password")
    page.locator("#login").fill("alice")
    page.locator("#password").fill(PASSWORD)
    page.locator("#submit").click()
    page.wait_for_url(f"{live_server.url}/changes/")  # back where the user wanted to go
    expect(page.locator(".userbox")).to_contain_text("alice")
    expect(page.locator(".userbox .role")).to_have_text("admin")

    for path in ("/", "/instances/", "/defaults/", f"/changes/{batch.pk}/", "/admin/"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
    page.goto(f"/changes/{batch.pk}/")
    segments = page.locator("svg.progress rect")
    expect(segments).to_have_count(3)  # applied, failed, queued
    box = page.locator("svg.progress").bounding_box()
    applied = page.locator("svg.progress rect.seg-applied").bounding_box()
    assert applied["width"] == pytest.approx(box["width"] / 2, abs=2)  # 2 of 4 items, drawn to scale
    failed = page.locator("svg.progress rect.seg-failed").bounding_box()
    assert failed["width"] == pytest.approx(box["width"] / 4, abs=2)
    assert failed["x"] == pytest.approx(applied["x"] + applied["width"], abs=2)  # side by side
    assert not page.csp_violations, page.csp_violations
