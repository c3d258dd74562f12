"""The dashboard in a real browser (GitHub issue 5): Chromium through Playwright against the live
server, with the simulator as AWS and a real Celery worker and beat (LiveStack) doing the changes.

The run also writes the login and batch screenshots in docs/screenshots/ that the README does not
show; the README's own come from test_browser_walk (every page, at 1,440 px).
"""

import re

import pytest

from fleet.tests.browser import (  # noqa: F401 - async_unsafe and browser are fixtures
    CHROMIUM,
    VIEWPORT,
    async_unsafe,
    browser,
    every_region,
    login,
    register_demo_fleet,
    screenshot,
)
from fleet.tests.factories import UserFactory
from fleet.tests.live import module_stack, wait_for

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, reset_sequences=True),  # batch #1 in the screenshots
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium is not installed at {CHROMIUM}"),
]

PROD, STAGING, SANDBOX = "111111111111", "222222222222", "333333333333"
XSS_NAME = "web-<script>alert(1)</script>"  # imdssim.seed.XSS_NAME, in prod/us-east-1


# One simulator (demo fleet) + Redis + worker + beat for the module; each test registers the
# accounts again, as the transactional database is emptied between tests.
live_stack = module_stack(time_scale=50, apply_delay=0.5, seed_demo=True)


@pytest.fixture
def stack(live_stack):
    return live_stack.fresh()


@pytest.fixture
def page(browser, live_server, stack):  # noqa: F811 - the fixture imported above
    context = browser.new_context(viewport=VIEWPORT, base_url=live_server.url)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()


def operator(username="alice"):
    return UserFactory(username=username, role="operator")


def tile(page, label):
    """The number on a confirmation-page tile, by its label."""
    text = page.locator(".tile", has=page.locator(".tile-label", has_text=label)).locator(".tile-value").inner_text()
    return int(re.sub(r"[^0-9]", "", text))


def count_of(page, state):
    item = page.locator(f'.counts li[data-state="{state}"] strong')
    return int(item.inner_text().replace(",", "")) if item.count() else 0


def test_login_form(page, live_server):
    from playwright.sync_api import expect

    user = operator()
    page.goto("/instances/")
    assert "/accounts/login/" in page.url  # everything needs a login
    screenshot(page, "login.png", full_page=False)
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".msg-error")).to_contain_text("didn't match")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill("pw-imdsweb-test")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/instances/$"))  # back where the user wanted to go
    expect(page.locator(".userbox")).to_contain_text(user.username)
    expect(page.locator(".userbox .role")).to_have_text("operator")
    assert not page.dialogs


def test_require_imdsv2_for_a_filtered_set_and_watch_it_apply(page, live_server, stack):
    """Filter prod/us-east-1 to running instances that still allow IMDSv1, press the bulk button,
    confirm, and follow the real worker on the batch page until every item is final."""
    from playwright.sync_api import expect

    register_demo_fleet(stack, instances=every_region(stack))
    user = operator()
    login(page, live_server, user.username)
    expect(page.locator("h1")).to_have_text("Fleet overview")

    page.goto("/instances/")
    filters = page.locator("form.filters")
    for name, value in [("account", PROD), ("region", "us-east-1"), ("http_tokens", "optional"),
                        ("instance_state", "running")]:
        with page.expect_response(re.compile(r"/instances/\?")):
            filters.locator(f'select[name="{name}"]').select_option(value)
    expect(page).to_have_url(re.compile(r"http_tokens=optional"))
    bulk = page.get_by_role("link", name=re.compile(r"Require IMDSv2 for all [\d,]+ matching"))
    matching = int(re.search(r"for all ([\d,]+) matching", bulk.inner_text()).group(1).replace(",", ""))
    assert 20 < matching < 300
    expect(page.locator(".toolbar .count")).to_contain_text(f"{matching} instance")
    states = set(page.locator("table tbody td:nth-child(8)").all_inner_texts())
    assert states == {"running"}

    bulk.click()
    page.wait_for_url(re.compile(r"/changes/new/\?"))
    expect(page.locator("h2").first).to_contain_text("HttpTokens=required")
    assert tile(page, "selected") == matching
    to_change, held = tile(page, "to change"), tile(page, "held (readiness gate)")
    assert to_change > 0 and to_change + held == matching  # nothing already compliant in this filter
    expect(page.locator(".warnings")).to_contain_text("held back unless you override")
    page.get_by_label("Comment").fill("CIS 5.6: IMDSv2 everywhere in prod us-east-1")

    page.get_by_role("button", name="Queue the change").click()
    page.wait_for_url(re.compile(r"/changes/\d+/$"))
    expect(page.locator(".messages")).to_contain_text("queued")
    screenshot(page, "batch-queued.png", full_page=False)
    # The items table follows the run too (the progress poll swaps it out of band), no reload:
    # the page only reloads once, when the batch is final.
    page.evaluate("window.notReloaded = true")
    expect(page.locator("#items-table tr.item-applied").first).to_be_visible(timeout=60_000)
    same_page = page.evaluate("window.notReloaded === true")
    assert same_page or page.get_by_role("progressbar").get_attribute("aria-valuenow") == "100"

    bar = page.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", "100", timeout=90_000)  # htmx polling, real worker
    expect(page.locator(".progress-head .badge")).to_have_text("done")
    assert count_of(page, "applied") == to_change
    assert count_of(page, "held") == held
    assert count_of(page, "pending") == 0 and count_of(page, "failed") == 0
    expect(page.locator("#items-table")).to_contain_text("applied")
    # The held items by reason (IMDSv1 callers; the demo's EKS node group is owned by EKS), adding up.
    expect(page.locator(".notes")).to_contain_text("held: IMDSv1 calls seen")
    notes = page.locator(".notes").first.inner_text()
    assert sum(int(n.replace(",", "")) for n in re.findall(r"([\d,]+) held:", notes)) == held, notes
    assert page.get_by_role("button", name=re.compile("Cancel")).count() == 0
    rollback = page.get_by_role("link", name=f"Roll back {to_change} applied")
    expect(rollback).to_be_visible()
    screenshot(page, "batch-done.png", full_page=False)
    # The rollback's own confirmation page says what goes back before anything is queued.
    rollback.click()
    expect(page.locator("#rollback-plan")).to_contain_text(
        f"{to_change:,} instances go back to HttpTokens=optional (they will allow IMDSv1 again)")
    page.go_back()

    # One of the changed instances: required now, the batch in its history.
    page.locator("#items-table tr.item-applied td a").first.click()
    page.wait_for_url(re.compile(r"/instances/i-[0-9a-f]+/$"))
    expect(page.locator("h1 .badge-good")).to_have_text("IMDSv2 enforced")
    expect(page.locator("table").last).to_contain_text("applied")

    page.goto("/changes/")
    expect(page.locator("table tbody tr").first).to_contain_text("done")

    page.goto("/")
    cell = page.locator("td.heat", has=page.locator(f'a[href*="account={PROD}&region=us-east-1"]'))
    expect(cell).not_to_have_class(re.compile("heat-bad"))  # prod/us-east-1: most now enforced
    assert page.locator("td.heat-bad").count() > 0  # the rest of the fleet still allows IMDSv1
    assert not page.dialogs


def test_change_an_account_default_and_see_policy_managed_read_only(page, live_server, stack):
    from playwright.sync_api import expect

    register_demo_fleet(stack)
    login(page, live_server, operator().username)
    page.goto("/defaults/")
    managed = page.locator("tbody tr", has_text=SANDBOX).filter(has_text="ap-southeast-2")
    expect(managed).to_contain_text("read-only")
    expect(managed).to_contain_text("declarative policy 'imdsv2-only'")
    assert managed.locator('input[name="targets"]').count() == 0

    row = page.locator("tbody tr", has_text=STAGING).filter(has_text="us-east-1")
    expect(row).to_contain_text("no preference")
    row.get_by_role("link", name="Edit").click()
    page.wait_for_url(re.compile(r"/defaults/change/\?targets="))
    page.get_by_label("HttpTokens").select_option("required")
    page.get_by_label("Hop limit").fill("2")
    page.get_by_label("Comment").fill("new launches IMDSv2-only")
    page.get_by_role("button", name="Queue the change").click()
    page.wait_for_url(re.compile(r"/changes/\d+/$"))
    expect(page.locator(".messages")).to_contain_text("Defaults change queued")
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100", timeout=60_000)
    assert count_of(page, "applied") == 1

    page.goto("/defaults/")
    row = page.locator("tbody tr", has_text=STAGING).filter(has_text="us-east-1")
    expect(row.locator("td").nth(3)).to_have_text("required")
    expect(row.locator("td").nth(4)).to_have_text("2")

    # The form refuses a policy-managed region even when asked for by URL.
    page.goto(f"/defaults/change/?targets={SANDBOX}/ap-southeast-2")
    expect(page.locator(".msg-warning")).to_contain_text("managed by a declarative policy")
    assert not page.dialogs


def test_hostile_name_tag_is_shown_as_text(page, live_server, stack):
    from playwright.sync_api import expect

    register_demo_fleet(stack, instances=[(PROD, "us-east-1")], defaults=False)
    login(page, live_server, operator().username)
    page.goto("/instances/?q=script")
    row = page.locator("table tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator("td").nth(2)).to_have_text(XSS_NAME)
    assert page.locator("#results script").count() == 0

    row.locator("td a").first.click()
    page.wait_for_url(re.compile(r"/instances/i-[0-9a-f]+/$"))
    expect(page.locator("h1 small")).to_have_text(XSS_NAME)
    expect(page.locator("table.tags")).to_contain_text(XSS_NAME)
    assert page.locator("main script").count() == 0
    page.wait_for_timeout(300)  # let anything that would run, run
    assert page.dialogs == []


def test_viewer_has_no_working_change_buttons_and_gets_403_on_post(page, live_server, stack):
    from playwright.sync_api import expect

    from fleet import changes
    from fleet.models import ChangeBatch, Instance

    register_demo_fleet(stack, instances=[(SANDBOX, "eu-west-1")], defaults=False)
    some = Instance.objects.filter(account__account_id=SANDBOX, instance_state="running").values_list("pk", flat=True)[:3]
    batch = changes.request_change(
        None, Instance.objects.filter(pk__in=list(some)), {"hop_limit": 2}, dry_run=True
    )
    wait_for(lambda: batch.status in ("done", "done_with_errors"), message="dry run final", stack=stack)
    viewer = UserFactory(role="viewer")
    login(page, live_server, viewer.username)
    expect(page.locator(".userbox .role")).to_have_text("viewer")

    page.goto("/instances/")
    expect(page.get_by_role("button", name="Require IMDSv2 for selected")).to_be_disabled()
    assert page.get_by_role("link", name=re.compile("Require IMDSv2 for all")).count() == 0

    page.goto(f"/changes/{batch.pk}/")
    expect(page.locator(".actions")).to_contain_text("need the operator role")
    assert page.locator(".actions button").count() == 0  # no cancel, retry, roll back, run for real

    page.goto("/defaults/")
    expect(page.get_by_role("button", name="Change selected…")).to_be_disabled()
    assert page.get_by_role("link", name="Edit").count() == 0

    instance = Instance.objects.filter(account__account_id=SANDBOX).first()
    page.goto(f"/instances/{instance.instance_id}/")
    expect(page.get_by_role("button", name="Review change…")).to_be_disabled()
    # Posting anyway (the form is there, its button is not): the friendly 403 page.
    with page.expect_navigation():
        page.evaluate("document.querySelector('form.inline-form').submit()")
    expect(page.locator("h1")).to_have_text("Not allowed")
    expect(page.locator(".error-page")).to_contain_text("operator role")
    page.goto(f"/changes/new/?ids={instance.instance_id}&http_tokens=required")
    expect(page.locator("h1")).to_have_text("Not allowed")
    assert ChangeBatch.objects.count() == 1
    assert not page.dialogs
