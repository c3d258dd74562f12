"""Helpers for the browser tests: Debian's Chromium through Playwright, the demo fleet registered
from the simulator, a login through the real form, and the README's screenshots.

``browser`` (one Chromium for the module) and ``async_unsafe`` (autouse: the ORM may be called from
Playwright's thread) are fixtures: a module imports them by name to use them."""

from datetime import timedelta
from pathlib import Path

import pytest

from fleet import history, sync, usage
from fleet.models import Account, FleetSnapshot, PostureSnapshot

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
PASSWORD = "pw-imdsweb-test"


@pytest.fixture(scope="module", autouse=True)
def async_unsafe():
    """Playwright's sync API runs an event loop in this thread: let the ORM be called from it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def register_demo_fleet(stack, instances=(), defaults=True):
    """Register the simulator's demo accounts like ``scripts/demo.py`` does (role ARN and external
    id), then sync here, in the test process: inventory and IMDSv1 usage of the (account_id, region)
    pairs in ``instances``, and the account defaults of every region when ``defaults``."""
    accounts = {}
    for data in stack.sim.demo_accounts():
        accounts[data["account_id"]] = Account.objects.create(
            account_id=data["account_id"], name=data["name"], regions=data["regions"],
            role_arn=data["role_arn"], external_id=data.get("external_id") or "",
        )
    for account_id, region in instances:
        account = accounts[account_id]
        run = sync.sync_region(account, region)
        assert run.status == "succeeded", run.error
        usage.sync_usage(account, region)
    if defaults:
        for account in accounts.values():
            for region in account.regions:
                sync.sync_defaults(account, region)
    return accounts


def every_region(stack):
    return [(data["account_id"], region) for data in stack.sim.demo_accounts() for region in data["regions"]]


def login(page, live_server, username, password=PASSWORD):
    """Log in through the login form; returns the page on the overview."""
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live_server.url}/")
    return page


def screenshot(page, name, full_page=True):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=full_page)


def past_history(account, region, total, now, enforced_now=None, fleet=True):
    """A month of recorded posture: daily points, hourly for the last week, enforcement climbing
    (15 % to 75 % of ``total``, or 40 % of ``enforced_now`` to all of it). With ``fleet``, the
    fleet's snapshots are the same rows. Returns the region's rows."""
    current = history.bucket_of(now)
    buckets = [current - timedelta(days=d) + timedelta(hours=23 - current.hour) for d in range(30, 7, -1)]
    buckets += [current - timedelta(hours=h) for h in range(7 * 24, 0, -1)]
    rows = []
    for index, bucket in enumerate(buckets):
        if enforced_now is None:
            enforced = min(total, round(total * 0.15 + total * 0.6 * index / len(buckets)))
        else:
            enforced = round(enforced_now * (0.4 + 0.6 * index / len(buckets)))
        rows.append(PostureSnapshot(account=account, region=region, bucket=bucket, total=total, enforced=enforced))
    PostureSnapshot.objects.bulk_create(rows)
    if fleet:
        FleetSnapshot.objects.bulk_create(
            [FleetSnapshot(bucket=row.bucket, total=row.total, enforced=row.enforced) for row in rows])
    return rows
