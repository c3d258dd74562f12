"""Every page fits (issue 20): Debian's Chromium walks every user-facing page at 1,440 and 1,024 px
and fails on a page that scrolls sideways or a table column that is cut off. The run also writes
the README's screenshots (docs/screenshots/) at 1,440 px.

The fleet is the simulator's demo fleet (3 accounts x 3 regions, launch templates, Auto Scaling
groups and launch configurations), synced here in the test process, plus an account of instances
with the longest values the tables show. Batches, waivers and history are written as rows, the
way the pages read them: no worker is needed, so one live server and one browser serve the walk.
"""

import os
from collections import defaultdict
from datetime import date, timedelta

import boto3
import pytest
from django.utils import timezone

from fleet import history, posture, sources, sync, waivers
from fleet.aws.session import reset_caches
from fleet.choices import ChangeKind, SourceKind
from fleet.models import (
    ChangeBatch,
    ChangeItem,
    DriftEvent,
    FleetSnapshot,
    Instance,
    LaunchSource,
    PostureSnapshot,
    RegionPosture,
    SyncRun,
    Waiver,
)
from fleet.tests.browser import (  # noqa: F401 - async_unsafe and browser are fixtures
    CHROMIUM,
    SCREENSHOTS,
    async_unsafe,
    browser,
    every_region,
    login,
    past_history,
    register_demo_fleet,
    screenshot,
)
from fleet.tests.factories import AccountFactory, ChangeItemFactory, InstanceFactory, UserFactory
from imdssim.testing import SimulatorProcess, launch

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, reset_sequences=True),  # batch #1 in the screenshots
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium is not installed at {CHROMIUM}"),
]
WIDTHS = (1440, 1024)
PROD = "111111111111"
LONG_ACCOUNT = "210987654321"

# What does not fit, in words naming the element: the page wider than the window; a table (or the
# box it scrolls in) wider than its card's content box without a sideways-scrolling box around it;
# a card whose content spills out of it; a header or cell whose content is clipped or overflows
# it, or that is not laid out as a table cell (its row's columns shift).
FIT = r"""() => {
  const problems = [];
  const name = el => {
    let text = (el.innerText || el.textContent || '').trim().replace(/\s+/g, ' ').slice(0, 50);
    const id = el.id ? '#' + el.id : '';
    const cls = typeof el.className === 'string' && el.className ? '.' + el.className.trim().split(/\s+/).join('.') : '';
    return `<${el.tagName.toLowerCase()}${id}${cls}> "${text}"`;
  };
  const shown = el => el.getClientRects().length > 0;
  const scroller = el => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (['auto', 'scroll'].includes(getComputedStyle(a).overflowX)) return a;
    }
    return null;
  };
  const contentRight = el => {
    const style = getComputedStyle(el);
    return el.getBoundingClientRect().right - parseFloat(style.borderRightWidth) - parseFloat(style.paddingRight);
  };
  const root = document.documentElement;
  if (root.scrollWidth > root.clientWidth) {
    const widest = [...document.body.querySelectorAll('*')].filter(shown)
      .filter(el => el.getBoundingClientRect().right > root.clientWidth + 1 && !scroller(el))
      .sort((a, b) => b.getBoundingClientRect().width - a.getBoundingClientRect().width).slice(-1)[0];
    problems.push(`the page is ${root.scrollWidth}px wide in a ${root.clientWidth}px window` +
                  (widest ? `: ${name(widest)} ends at ${Math.round(widest.getBoundingClientRect().right)}px` : ''));
  }
  for (const table of document.querySelectorAll('main table, #content table')) {
    if (!shown(table)) continue;
    const box = scroller(table);
    const outer = box || table;
    const card = outer.parentElement.closest('.card, .page, #content') || outer.parentElement;
    const right = outer.getBoundingClientRect().right, limit = contentRight(card);
    if (right > limit + 1) {
      problems.push(`${name(table)} ends at ${Math.round(right)}px, past its container ${name(card).slice(0, 60)} ` +
                    `(${Math.round(limit)}px)` + (box ? ' (its scroll box is wider than the card)' : ', with no sideways scroll'));
    } else if (box && table.offsetWidth > box.scrollWidth + 1) {
      problems.push(`${name(table)} is ${table.offsetWidth}px wide but its scroll box reaches only ${box.scrollWidth}px`);
    }
    for (const cell of table.querySelectorAll('th, td')) {
      if (!shown(cell)) continue;
      if (getComputedStyle(cell).display !== 'table-cell') {
        problems.push(`${name(cell)} in ${name(table).slice(0, 40)} is not a table cell (display: ` +
                      `${getComputedStyle(cell).display}): the columns after it shift`);
        continue;
      }
      if (cell.scrollWidth <= cell.clientWidth + 1) continue;
      const overflow = getComputedStyle(cell).overflowX;
      const column = table.querySelector('thead th:nth-child(' + (cell.cellIndex + 1) + ')');
      problems.push(`${name(cell)} (column "${column ? column.innerText.trim() : cell.cellIndex}") needs ` +
                    `${cell.scrollWidth}px in ${cell.clientWidth}px` +
                    (['hidden', 'clip'].includes(overflow) ? ' and is clipped' : ' and spills over its neighbour'));
    }
  }
  for (const card of document.querySelectorAll('.card')) {
    if (shown(card) && card.scrollWidth > card.clientWidth + 1) {
      const spill = [...card.querySelectorAll('*')].filter(shown)
        .filter(el => el.getBoundingClientRect().right > contentRight(card) + 1 && !scroller(el))[0];
      problems.push(`${name(card).slice(0, 60)} has content ${card.scrollWidth}px wide in ${card.clientWidth}px` +
                    (spill ? `: ${name(spill)}` : ''));
    }
  }
  return problems;
}"""


@pytest.fixture(scope="module")
def simulator():
    """The simulator's demo fleet as AWS for this process (the syncs run here)."""
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN")
    saved = {name: os.environ.get(name) for name in names}
    with SimulatorProcess(seed_demo=True, throttle=False, apply_delay=0) as sim:
        os.environ.update(AWS_ENDPOINT_URL=sim.endpoint_url, AWS_ACCESS_KEY_ID="testing",
                          AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
        os.environ.pop("AWS_SESSION_TOKEN", None)
        reset_caches()
        try:
            yield sim
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            reset_caches()


def simulated_ec2(sim, account, region):
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=sim.endpoint_url)
    role = {"RoleArn": account.role_arn, "RoleSessionName": "walk"}
    if account.external_id:
        role["ExternalId"] = account.external_id
    creds = sts.assume_role(**role)["Credentials"]
    return boto3.client("ec2", region_name=region, endpoint_url=sim.endpoint_url,
                        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])


def long_values_account():
    """An account whose instances carry the longest values the tables show."""
    account = AccountFactory(account_id=LONG_ACCOUNT, name="production-payments-eu-central-settlement",
                             regions=["eu-central-1", "ap-southeast-2"])
    for n in range(14):
        name = f"payments-settlement-reconciliation-worker-{n:02d}.eu-central-1.internal.example.com"
        InstanceFactory(
            account=account, region=("eu-central-1", "ap-southeast-2")[n % 2], name=name, instance_id=f"i-0abcdef{n:010x}",
            tags={"Name": name, "Team": "payments-settlement-and-reconciliation", "Env": "production",
                  "CostCenter": "CC-4711-payments-platform", "aws:autoscaling:groupName": "payments-settlement-asg"},
            instance_type="r6in.metal" if n % 3 else "m7i-flex.12xlarge",
            platform_details="Windows with SQL Server Enterprise" if n % 4 == 0 else "Linux/UNIX",
            vpc_id="vpc-0123456789abcdef0", subnet_id="subnet-0fedcba9876543210", private_ip=f"10.200.{n}.123",
            public_ip=f"203.0.113.{100 + n}" if n % 2 else None,
            iam_instance_profile_arn="arn:aws:iam::210987654321:instance-profile/payments/settlement/"
                                     "payments-settlement-reconciliation-worker-profile",
            launch_time=timezone.now() - timedelta(days=40 + n), hop_limit=(1, 2, 3)[n % 3],
            v1_calls=(0, 12, None)[n % 3], autoscaling_group="payments-settlement-asg",
        )
    return account


def seed(sim):
    """The demo fleet, a drift, history, three batches (instances, defaults, the rollback of the
    first) and two waivers. Returns what the walk opens."""
    accounts = register_demo_fleet(sim_stack(sim), instances=every_region(sim_stack(sim)))
    for account in accounts.values():
        for region in account.regions:
            sources.sync_sources(account, region)
    prod = accounts[PROD]
    # Drift: instances launched allowing IMDSv1 after the baseline sync, and one set back to optional.
    ec2 = simulated_ec2(sim, prod, "us-east-1")
    launch(ec2, 3, HttpTokens="optional")
    regressed = Instance.objects.filter(account=prod, region="us-east-1", http_tokens="required",
                                        instance_state="running").first()
    ec2.modify_instance_metadata_options(InstanceId=regressed.instance_id, HttpTokens="optional")
    sync.sync_region(prod, "us-east-1")
    long_account = long_values_account()
    for region in long_account.regions:  # synced like the rest, as far as the overview can tell
        SyncRun.objects.create(account=long_account, region=region, started_at=timezone.now(),
                               finished_at=timezone.now(), status="succeeded", seen=7)
    posture.refresh_all()
    now = timezone.now()
    PostureSnapshot.objects.all().delete()  # what the syncs recorded: the history below replaces it
    FleetSnapshot.objects.all().delete()
    fleet = defaultdict(lambda: [0, 0])  # bucket: [total, enforced], the regions' sums
    for region in RegionPosture.objects.select_related("account"):
        for row in past_history(region.account, region.region, region.total, now, region.enforced, fleet=False):
            fleet[row.bucket][0] += row.total
            fleet[row.bucket][1] += row.enforced
    FleetSnapshot.objects.bulk_create([FleetSnapshot(bucket=bucket, total=total, enforced=enforced)
                                       for bucket, (total, enforced) in fleet.items()])
    history.snapshot_all(now)
    user = UserFactory(username="walker", role="admin")

    batch = ChangeBatch.objects.create(
        desired={"http_tokens": "required"}, created_by=user, comment="CIS 5.6: IMDSv2 everywhere in prod us-east-1",
        selection=f"account={PROD} region=us-east-1 http_tokens=optional instance_state=running")
    ChangeBatch.objects.filter(pk=batch.pk).update(created_at=now - timedelta(days=2))
    drifted = DriftEvent.objects.values("instance_id")
    candidates = list(Instance.objects.filter(account=prod, region="us-east-1", http_tokens="optional")
                      .exclude(pk__in=drifted)[:36])
    candidates += list(Instance.objects.filter(account=long_account)[:6])
    for n, instance in enumerate(candidates):
        state = "held" if n % 6 == 5 else "failed" if n % 12 == 7 else "applied"
        item = ChangeItemFactory(
            batch=batch, instance=instance, state=state, attempts=0 if state == "held" else 1 + n % 3,
            previous={"http_tokens": "optional"}, request_id="" if state == "held" else "5f0e0c9a-7e4b-4c1d-9d8e-0123456789ab",
            outcome="held_calls" if state == "held" else "queued",
            reason="12 IMDSv1 call(s) in the last 14 days (MetadataNoToken)" if state == "held" else "",
            error_code="UnauthorizedOperation" if state == "failed" else "",
            error_message="You are not authorized to perform this operation. Encoded authorization failure message: "
                          "4Xh0ZkQyT1ZqUmpOVGc1T0RBMk1UQTJOREF6TURneU1UZzVOakl5TWpBeU1ETTBNVGM0" if state == "failed" else "",
        )
        if state != "held":
            ChangeItem.objects.filter(pk=item.pk).update(
                claimed_at=now - timedelta(days=2), submitted_at=now - timedelta(days=2), finished_at=now - timedelta(days=2))
    Instance.objects.filter(change_items__batch=batch, change_items__state="applied").update(http_tokens="required")

    defaults = ChangeBatch.objects.create(kind=ChangeKind.ACCOUNT_DEFAULTS, created_by=user,
                                          desired={"http_tokens": "required", "hop_limit": 2},
                                          comment="new launches IMDSv2-only")
    for account in accounts.values():
        for region in account.regions:
            ChangeItem.objects.create(batch=defaults, account=account, region=region, state="applied",
                                      previous={"http_tokens": None, "hop_limit": None}, request_id="0e8b1f6c-2d5a")
    rollback = ChangeBatch.objects.create(desired={}, rollback_of=batch, created_by=user,
                                          comment=f"Roll back batch #{batch.pk}: a vendor agent still needs IMDSv1")
    for item in batch.items.filter(state="applied")[:8]:
        ChangeItem.objects.create(batch=rollback, account=item.account, region=item.region, instance=item.instance,
                                  state="applied", desired={"http_tokens": "optional"},
                                  previous={"http_tokens": "required"}, finished_at=now)

    waived = Instance.objects.filter(account=long_account).first()
    waiver = Waiver.objects.create(scope="instance", instance=waived, owner="payments-settlement-and-reconciliation",
                                   reason="The vendor's settlement agent reads IMDSv1 until its 7.2 release (ticket PAY-4711).",
                                   expires_on=date.today() + timedelta(days=30), created_by=user)
    Waiver.objects.create(scope="tag", tag_key="Team", tag_value="payments-settlement-and-reconciliation",
                          owner="security-engineering", reason="Settlement freeze until the quarter closes.",
                          expires_on=date.today() + timedelta(days=10), created_by=user)
    waivers.apply_waivers()
    posture.refresh_all()  # the summary counts what the batches left

    instance = batch.items.filter(state="applied", instance__account=prod).first().instance
    source_of = {kind: LaunchSource.objects.filter(kind=kind, gone_at__isnull=True).order_by("pk").first()
                 for kind in SourceKind.values}
    assert all(source_of.values()), source_of  # the demo fleet has every kind
    return {"batch": batch, "defaults": defaults, "rollback": rollback, "waiver": waiver, "instance": instance,
            "sources": source_of, "account": prod, "long_account": long_account}


def sim_stack(sim):
    """What register_demo_fleet and every_region ask of a stack: its simulator."""
    return type("Stack", (), {"sim": sim})()


def pages(seeded):
    """(name, address, README screenshot or None) of every user-facing page."""
    s = seeded
    target = f"{PROD}/us-east-1"
    walk = [
        ("overview", "/", "overview.png"),
        ("instance list", "/instances/", None),
        ("instance list, prod us-east-1 allowing IMDSv1",
         f"/instances/?account={PROD}&region=us-east-1&http_tokens=optional&instance_state=running", "instances.png"),
        ("instance list, the longest values", f"/instances/?account={LONG_ACCOUNT}", None),
        ("instance detail", s["instance"].get_absolute_url(), "instance.png"),
        ("instance detail, long values", Instance.objects.filter(account=s["long_account"]).last().get_absolute_url(), None),
        ("sources list", "/sources/", None),
        *[(f"source detail ({kind})", source.get_absolute_url(), None) for kind, source in s["sources"].items()],
        ("require IMDSv2 at the source", "/sources/require-imdsv2/?filter=kind%3Dlaunch_template", None),
        ("defaults", "/defaults/", "defaults.png"),
        ("defaults change", f"/defaults/change/?targets={target}", None),
        ("enforcement confirmation", f"/defaults/enforce/?targets={target}", None),
        ("changes list", "/changes/", "changes.png"),
        ("change confirmation", f"/changes/new/?filter=account%3D{PROD}%26region%3Dus-east-1%26http_tokens%3Doptional"
                                f"&http_tokens=required", "confirm.png"),
        ("instances batch", s["batch"].get_absolute_url(), "batch.png"),
        ("defaults batch", s["defaults"].get_absolute_url(), None),
        ("rollback batch", s["rollback"].get_absolute_url(), None),
        ("rollback confirmation", f"/changes/{s['batch'].pk}/rollback/", "rollback.png"),
        ("waivers list", "/waivers/", None),
        ("waiver detail", s["waiver"].get_absolute_url(), None),
        ("waiver form", f"/waivers/new/?instance={s['instance'].instance_id}", None),
        ("account health", "/accounts/", None),
        ("history (burndown, prod 30 days)", f"/?history-days=30&history-account={PROD}#burndown", None),
        ("drift", "/drift/", "drift.png"),
        ("profile", "/profile/", None),
        ("API tokens", "/tokens/", None),
        ("admin index", "/admin/", None),
        ("admin account change form", f"/admin/fleet/account/{s['account'].pk}/change/", None),
        ("404 page", "/no/such/page/", None),
    ]
    return walk


def test_every_page_fits_at_1440_and_1024_px(browser, live_server, simulator):  # noqa: F811 - the fixture imported above
    seeded = seed(simulator)
    problems = []
    for width in WIDTHS:
        context = browser.new_context(viewport={"width": width, "height": 900}, base_url=live_server.url)
        context.set_default_timeout(20_000)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
        login(page, live_server, "walker")
        for name, address, shot in pages(seeded):
            response = page.goto(address)
            expected = 404 if name == "404 page" else 200
            assert response.status == expected, f"{name} ({address}) at {width} px answered {response.status}"
            problems += [f"{name} ({address}) at {width} px: {problem}" for problem in page.evaluate(FIT)]
            if width == 1440 and shot:
                screenshot(page, shot, full_page=shot not in ("batch.png", "rollback.png"))
            if width == 1440 and name.startswith("history"):
                burndown = page.locator("#burndown")
                burndown.scroll_into_view_if_needed()
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                burndown.screenshot(path=str(SCREENSHOTS / "burndown.png"))
        assert not errors, f"JavaScript errors at {width} px: {errors}"
        context.close()
    assert not problems, "Pages that do not fit:\n" + "\n".join(problems)
