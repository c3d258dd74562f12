"""Pages that fit (issue 20) in Debian's Chromium at 1,440 and 1,024 px: no page scrolls sideways,
the batch items table fits its card at 1,440 px and scrolls inside it (never cut off) at 1,024 px,
and an unknown address gets the product's own 404 page.

No AWS is needed: the rows come from the factories, as the pages read them."""

import pytest

from fleet.tests.browser import CHROMIUM, async_unsafe, browser, login  # noqa: F401 - fixtures
from fleet.tests.factories import (
    AccountFactory,
    ChangeBatchFactory,
    ChangeItemFactory,
    InstanceFactory,
    UserFactory,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium is not installed at {CHROMIUM}"),
]
WIDTHS = (1440, 1024)

# The widths of the page, of a card and of the scroll box inside it, and whether every header
# cell of the table can be reached (inside the box's scrollable width).
MEASURE = """(selector) => {
  const box = document.querySelector(selector);
  const card = box.closest('.card') || box.parentElement;
  const table = box.querySelector('table');
  const right = Math.max(...[...table.querySelectorAll('th')].map(th => th.offsetLeft + th.offsetWidth));
  return {
    page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
    card: [card.scrollWidth, card.clientWidth],
    box: [box.scrollWidth, box.clientWidth],
    overflow: getComputedStyle(box).overflowX,
    reachable: right <= box.scrollWidth + 1,
    widths: Object.fromEntries([...table.querySelectorAll('thead th')].map(th => [th.innerText.trim(), th.offsetWidth])),
  };
}"""


def page_at(browser, live_server, width):  # noqa: F811 - the fixture imported above
    context = browser.new_context(viewport={"width": width, "height": 900}, base_url=live_server.url)
    context.set_default_timeout(20_000)
    return context.new_page()


@pytest.fixture
def batch():
    """A finished batch whose items carry the longest values the table shows."""
    account = AccountFactory(name="production-payments-eu", account_id="123456789012")
    batch = ChangeBatchFactory(desired={"http_tokens": "required", "hop_limit": 2})
    for n in range(12):
        instance = InstanceFactory(account=account, region="ap-southeast-2", instance_id=f"i-0abcdef{n:010x}")
        ChangeItemFactory(
            batch=batch, instance=instance, state=("applied", "failed", "held")[n % 3], attempts=n,
            previous={"http_tokens": "optional", "hop_limit": 1},
            request_id="5f0e0c9a-7e4b-4c1d-9d8e-0123456789ab",
            reason="12 IMDSv1 call(s) in the last 14 days (MetadataNoToken): held by the readiness gate" if n % 3 == 2 else "",
            error_code="UnauthorizedOperation" if n % 3 == 1 else "",
            error_message="You are not authorized to perform this operation. Encoded authorization failure "
                          "message: 4Xh0ZkQyT1ZqUmpOVGc1T0RBMk1UQTJOREF6TURneU1UZzVOakl5TWpBeU1ETTBNVGM0" if n % 3 == 1 else "",
        )
    return batch


def test_the_batch_items_table_fits_at_1440_and_scrolls_inside_its_card_at_1024(browser, live_server, batch):  # noqa: F811 - the fixture imported above
    UserFactory(username="fit-viewer", role="viewer")
    for width in WIDTHS:
        page = page_at(browser, live_server, width)
        login(page, live_server, "fit-viewer")
        page.goto(batch.get_absolute_url())
        page.wait_for_selector("#items-table table")
        sizes = page.evaluate(MEASURE, "#items-table")
        assert sizes["page"][0] <= sizes["page"][1], (width, sizes)  # the page never scrolls sideways
        assert sizes["card"][0] <= sizes["card"][1], (width, sizes)  # nor does the card
        assert sizes["reachable"], (width, sizes)  # no column cut off
        if width == 1440:
            assert sizes["box"][0] <= sizes["box"][1], sizes  # fits its card
        else:
            assert sizes["overflow"] in ("auto", "scroll"), sizes  # scrolls inside it when it must
        page.context.close()


def test_the_instance_list_scrolls_inside_its_card_never_the_page(browser, live_server):  # noqa: F811 - the fixture imported above
    account = AccountFactory(name="production-payments-eu")
    InstanceFactory.create_batch(5, account=account, vpc_id="vpc-0123456789abcdef0",
                                 subnet_id="subnet-0123456789abcdef0", private_ip="10.100.200.123",
                                 iam_instance_profile_arn="arn:aws:iam::123456789012:instance-profile/a-long-role-name",
                                 tags={"Team": "payments-platform"})
    UserFactory(username="list-viewer", role="viewer")
    for width in WIDTHS:
        page = page_at(browser, live_server, width)
        login(page, live_server, "list-viewer")
        page.goto("/instances/")
        sizes = page.evaluate(MEASURE, "#results .scroll")
        assert sizes["page"][0] <= sizes["page"][1], (width, sizes)
        assert sizes["reachable"] and sizes["overflow"] in ("auto", "scroll"), (width, sizes)
        page.context.close()


def test_an_unknown_address_gets_the_products_404_page(browser, live_server):  # noqa: F811 - the fixture imported above
    UserFactory(username="lost", role="viewer")
    page = page_at(browser, live_server, 1024)
    login(page, live_server, "lost")
    response = page.goto("/no/such/page/")
    assert response.status == 404
    assert page.locator("h1").inner_text() == "Not found"
    assert page.get_by_role("link", name="Back to the overview").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    page.context.close()
