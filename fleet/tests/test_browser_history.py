"""History and drift in a real browser (issue 18): the overview's burndown over 7/30/90 days for
the fleet and one account, with batch markers, and the drift list, after real syncs against moto.
The README's burndown and drift screenshots come from test_browser_walk."""

from datetime import timedelta

import pytest
from django.utils import timezone

from fleet import history, sync
from fleet.models import ChangeBatch, FleetSnapshot, PostureSnapshot
from fleet.tests.browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, login, past_history
from fleet.tests.conftest import AMBIENT_ACCOUNT, ec2_in
from fleet.tests.factories import AccountFactory, ChangeItemFactory, InstanceFactory, UserFactory
from imdssim.testing import launch

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium is not installed at {CHROMIUM}"),
]


@pytest.fixture
def page(live_server, monkeypatch):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs an event loop here
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
        context.set_default_timeout(20_000)
        yield context.new_page()
        browser.close()


def test_burndown_and_drift_in_chromium(page, live_server, moto_endpoint):
    ec2 = ec2_in(moto_endpoint, AMBIENT_ACCOUNT, "us-east-1")
    launch(ec2, 30, HttpTokens="required")
    required = launch(ec2, 10, HttpTokens="required")
    launch(ec2, 20)
    account = AccountFactory(account_id=AMBIENT_ACCOUNT, name="prod", regions=["us-east-1"])
    sync.sync_region(account, "us-east-1")  # baseline
    launched = launch(ec2, 3)
    ec2.modify_instance_metadata_options(InstanceId=required[0], HttpTokens="optional")
    sync.sync_region(account, "us-east-1")
    now = timezone.now()
    PostureSnapshot.objects.all().delete()
    FleetSnapshot.objects.all().delete()
    past_history(account, "us-east-1", 63, now)
    history.snapshot_region(account.pk, "us-east-1", now)
    batch = ChangeItemFactory(instance=InstanceFactory(account=account)).batch
    ChangeBatch.objects.filter(pk=batch.pk).update(created_at=now - timedelta(days=3))
    UserFactory(username="viewer1", role="viewer")

    login(page, live_server, "viewer1")
    burndown = page.locator("#burndown")
    assert burndown.locator("svg[data-series='enforced_pct'] polyline").count() == 1
    assert burndown.locator("svg[data-series='allowing_v1'] .chart-marker").count() == 1
    # Choose 7 days for the account with the plain form (no JavaScript involved).
    page.select_option("#id_history-days", "7")
    page.select_option("#id_history-account", AMBIENT_ACCOUNT)
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**history-days=7**")
    assert "Burndown: prod" in burndown.locator("h2").inner_text()
    points = burndown.locator("svg[data-series='enforced_pct'] circle").count()
    assert points > 150  # hourly over a week, plus "now"

    page.get_by_role("link", name="Drift: new IMDSv1 instances →").click()
    rows = page.locator("table tbody tr")
    assert rows.count() == 4
    text = page.locator("table").inner_text()
    assert all(instance_id in text for instance_id in [*launched, required[0]])
    assert "back to IMDSv1 allowed" in text
    page.get_by_role("link", name="These instances in the instance list →").click()
    assert page.locator("table tbody tr").count() == 4
