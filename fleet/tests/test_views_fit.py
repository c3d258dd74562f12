"""Pages that fit what they show (issue 20): a batch shows only what applies to its kind, "Updated"
is the last state change, the changes list is newest first, an instance without history says
so, and a demo user meets the product's own error pages."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet.choices import ChangeKind
from fleet.models import ChangeBatch, ChangeItem, UserProfile
from fleet.tests.factories import (
    AccountFactory,
    ChangeBatchFactory,
    ChangeItemFactory,
    InstanceFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator():
    client = Client()
    client.force_login(UserFactory(role="operator"))
    return client


def filter_names(response):
    return set(response.context["filter"].form.fields)


def test_an_instance_batch_shows_the_usage_gate_and_the_breakage_filter(operator):
    batch = ChangeBatchFactory()
    ChangeItemFactory(batch=batch, state="applied")
    response = operator.get(batch.get_absolute_url())
    assert 'id="usage-gate"' in response.content.decode()
    assert {"breakage", "awaiting_start"} <= filter_names(response)
    assert "sets" not in [column.name for column in response.context["table"].columns]  # the batch's own values


def test_a_defaults_batch_shows_only_what_applies_to_it(operator):
    account = AccountFactory()
    batch = ChangeBatchFactory(kind=ChangeKind.ACCOUNT_DEFAULTS)
    ChangeItem.objects.create(batch=batch, account=account, region="us-east-1", state="applied")
    response = operator.get(batch.get_absolute_url())
    html = response.content.decode()
    assert 'id="usage-gate"' not in html and "IMDSv1 usage" not in html
    assert filter_names(response) == {"state", "q"}
    assert "account defaults" in html and str(account) in html  # "name (123456789012)"


def test_a_rollback_batch_has_no_usage_gate_and_shows_each_items_values(operator):
    original = ChangeBatchFactory()
    rollback = ChangeBatchFactory(rollback_of=original, desired={})
    ChangeItemFactory(batch=rollback, state="applied", desired={"http_tokens": "optional"})
    response = operator.get(rollback.get_absolute_url())
    assert 'id="usage-gate"' not in response.content.decode()
    assert "breakage" not in filter_names(response) and "awaiting_start" in filter_names(response)
    assert "HttpTokens=optional" in response.content.decode()


def test_updated_is_the_last_state_change_not_the_last_write(operator):
    batch = ChangeBatchFactory()
    item = ChangeItemFactory(batch=batch, state="applied")
    changed = timezone.now() - timedelta(hours=3)
    ChangeItem.objects.filter(pk=item.pk).update(
        created_at=changed - timedelta(minutes=5), claimed_at=changed - timedelta(minutes=1),
        submitted_at=changed - timedelta(seconds=30), finished_at=changed, updated_at=timezone.now())
    response = operator.get(batch.get_absolute_url())
    [row] = response.context["table"].paginated_rows
    assert row.record.state_changed_at == changed
    assert changed.strftime("%Y-%m-%d %H:%M UTC") in response.content.decode()
    # Held when created: its creation is its last state change.
    held = ChangeItemFactory(batch=batch, state="held")
    rows = operator.get(batch.get_absolute_url() + "?state=held").context["table"].paginated_rows
    assert [row.record.state_changed_at for row in rows] == [ChangeItem.objects.get(pk=held.pk).created_at]


def test_a_retried_items_updated_is_the_retry_not_its_last_submission(operator):
    from fleet import changes

    batch = ChangeBatchFactory()
    item = ChangeItemFactory(batch=batch, state="failed", attempts=1, error_code="RequestLimitExceeded")
    failed = timezone.now() - timedelta(hours=3)
    ChangeItem.objects.filter(pk=item.pk).update(
        created_at=failed - timedelta(minutes=5), claimed_at=failed - timedelta(minutes=1),
        submitted_at=failed - timedelta(seconds=30), finished_at=failed)
    retried = timezone.now()
    assert changes.retry_failed(batch, None) == 1
    [row] = operator.get(batch.get_absolute_url()).context["table"].paginated_rows
    assert row.record.state == "queued" and row.record.submitted_at < failed  # the last attempt's, kept
    assert row.record.state_changed_at >= retried
    # Claimed again by a worker: the claim is the last change.
    claimed = timezone.now() + timedelta(minutes=1)
    ChangeItem.objects.filter(pk=item.pk).update(state="submitting", claimed_at=claimed)
    [row] = operator.get(batch.get_absolute_url()).context["table"].paginated_rows
    assert row.record.state_changed_at == claimed


def test_changes_list_is_newest_first_and_its_dry_run_filter_starts_at_any(operator):
    old, new = ChangeBatchFactory(), ChangeBatchFactory(dry_run=True)
    ChangeBatch.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=1))
    response = operator.get(reverse("fleet:change_list"))
    assert [row.record.pk for row in response.context["table"].paginated_rows] == [new.pk, old.pk]
    html = response.content.decode()
    select = html[html.index('name="dry_run"'):]
    select = select[:select.index("</select>")]
    assert '<option value="" selected>any</option>' in select
    assert [r.record.pk for r in operator.get(reverse("fleet:change_list") + "?dry_run=true")
            .context["table"].paginated_rows] == [new.pk]


def test_an_instance_without_history_says_so(operator):
    instance = InstanceFactory()
    html = operator.get(instance.get_absolute_url()).content.decode()
    assert 'id="no-history"' in html and "No change has been made to this instance" in html
    ChangeItemFactory(instance=instance, state="applied")
    assert 'id="no-history"' not in operator.get(instance.get_absolute_url()).content.decode()


@pytest.fixture
def demo_settings(settings):
    """The demo's configuration (scripts/demo.py): DEBUG on, Django's technical pages off."""
    settings.DEBUG = True
    settings.IMDSWEB_DEBUG_ERROR_PAGES = False
    return settings


def test_the_demo_shows_the_products_404_for_an_unknown_address(demo_settings, operator):
    response = operator.get("/no/such/page/")
    html = response.content.decode()
    assert response.status_code == 404
    assert "<h1>Not found</h1>" in html and "There is nothing at this address" in html
    assert "DEBUG = True" not in html and "URLconf" not in html


def test_the_demo_shows_the_products_404_for_an_unknown_instance(demo_settings, operator):
    response = operator.get(reverse("fleet:instance_detail", args=["i-0123456789abcdef0"]))
    assert response.status_code == 404 and "No such instance in the inventory." in response.content.decode()
    assert "Traceback" not in response.content.decode()


def test_the_demo_still_redirects_a_missing_trailing_slash(demo_settings, operator):
    response = operator.get("/instances")
    assert response.status_code == 301 and response.url == "/instances/"


def test_the_demo_shows_the_products_500(demo_settings, operator, monkeypatch):
    from fleet.views import overview

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(overview.health, "summary", broken)
    client = operator
    client.raise_request_exception = False
    response = client.get(reverse("fleet:overview"))
    assert response.status_code == 500
    html = response.content.decode()
    assert "Something went wrong" in html and "boom" not in html and "Traceback" not in html


def test_the_demo_shows_the_products_403(demo_settings):
    client = Client()
    client.force_login(UserFactory(role="viewer"))
    response = client.get(reverse("fleet:change_new") + "?ids=i-0123456789abcdef0&http_tokens=required")
    assert response.status_code == 403 and "Traceback" not in response.content.decode()


def test_development_keeps_djangos_technical_404(settings, operator):
    settings.DEBUG = True
    settings.IMDSWEB_DEBUG_ERROR_PAGES = True
    response = operator.get("/no/such/page/")
    assert response.status_code == 404 and "URLconf" in response.content.decode()


# ---------------------------------------------------------------- one date format, the user's zone


def test_dates_are_in_utc_with_the_zone_named_until_the_user_chooses(operator):
    instance = InstanceFactory(launch_time=timezone.make_aware(datetime(2026, 7, 1, 22, 30), UTC))
    html = operator.get(instance.get_absolute_url()).content.decode()
    assert "2026-07-01 22:30 UTC" in html


def test_the_profile_sets_the_users_time_zone_for_every_page(operator):
    instance = InstanceFactory(launch_time=timezone.make_aware(datetime(2026, 7, 1, 22, 30), UTC))
    page = operator.get(reverse("fleet:profile"))
    assert page.status_code == 200 and '<option value="UTC" selected>' in page.content.decode()
    saved = operator.post(reverse("fleet:profile"), {"timezone": "Europe/Berlin"})
    assert saved.status_code == 200 and "Dates are now shown in Europe/Berlin" in saved.content.decode()
    assert UserProfile.objects.get().timezone == "Europe/Berlin"
    html = operator.get(instance.get_absolute_url()).content.decode()
    assert "2026-07-02 00:30 CEST" in html and "22:30 UTC" not in html
    # Kept across logins: the next session starts in the saved zone.
    client = Client()
    client.force_login(UserProfile.objects.get().user)
    assert "2026-07-02 00:30 CEST" in client.get(instance.get_absolute_url()).content.decode()


def test_the_zone_of_one_user_is_not_anothers(operator):
    operator.post(reverse("fleet:profile"), {"timezone": "Asia/Tokyo"})
    instance = InstanceFactory(launch_time=timezone.make_aware(datetime(2026, 7, 1, 22, 30), UTC))
    other = Client()
    other.force_login(UserFactory(role="viewer"))
    assert "2026-07-01 22:30 UTC" in other.get(instance.get_absolute_url()).content.decode()


def test_the_burndown_labels_points_and_batches_in_the_users_zone():
    from fleet.models import FleetSnapshot

    user = UserFactory(role="viewer")
    UserProfile.objects.create(user=user, timezone="Europe/Berlin")
    client = Client()
    client.force_login(user)
    at = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    FleetSnapshot.objects.create(bucket=at, total=10, enforced=4)
    batch = ChangeBatchFactory()
    ChangeBatch.objects.filter(pk=batch.pk).update(created_at=at + timedelta(minutes=30))
    html = client.get(reverse("fleet:overview")).content.decode()
    point = (at + timedelta(hours=1)).astimezone(ZoneInfo("Europe/Berlin"))  # plotted at its hour's end
    assert f"<title>{point:%Y-%m-%d %H:%M} {point.tzname()}: 40%</title>" in html  # a point of the enforced series
    marker = (at + timedelta(minutes=30)).astimezone(ZoneInfo("Europe/Berlin"))
    assert f"batch #{batch.pk} at {marker:%Y-%m-%d %H:%M} {marker.tzname()}" in html
    assert f"{at + timedelta(hours=1):%Y-%m-%d %H:%M} UTC" not in html


@pytest.mark.parametrize("value", ["Mars/Olympus", "", "UTC; DROP TABLE"])
def test_an_unknown_time_zone_is_a_form_error(operator, value):
    response = operator.post(reverse("fleet:profile"), {"timezone": value})
    assert response.status_code == 400 and "field-error" in response.content.decode()
    assert not UserProfile.objects.exists()


# ---------------------------------------------------------------- numbers you can follow


def confirmation_fleet():
    prod = AccountFactory(account_id="111111111111", name="prod")
    dev = AccountFactory(account_id="222222222222", name="dev")
    InstanceFactory.create_batch(3, account=prod, v1_calls=0)
    InstanceFactory(account=prod, http_tokens="required", v1_calls=0)
    InstanceFactory(account=prod, v1_calls=40)  # held: IMDSv1 calls
    InstanceFactory(account=prod, region="eu-west-1", v1_calls=0, instance_state="stopped")
    InstanceFactory(account=dev, region="eu-west-1", v1_calls=None, usage_synced_at=None)  # held: never measured
    InstanceFactory(account=dev, v1_calls=0, instance_state="terminated")


@pytest.mark.parametrize("selection", ["filter=posture%3Dcounted", "filter=account%3D111111111111", "ids=SELECTED"])
def test_every_count_on_the_confirmation_page_opens_a_list_of_that_size(operator, selection):
    import html as html_lib
    import re

    confirmation_fleet()
    if selection == "ids=SELECTED":
        from fleet.models import Instance

        selection = "&".join(f"ids={i}" for i in Instance.objects.present().values_list("instance_id", flat=True))
    page = operator.get(f"{reverse('fleet:change_new')}?{selection}&http_tokens=required")
    assert page.status_code == 200
    text = page.content.decode()
    plan = page.context["preview"]
    tiles = {bucket: href for bucket, href in
             re.findall(r'data-bucket="(\w+)"><a class="tile-value" href="([^"]+)" data-count="\d+">[\d,]+</a>', text)}
    expected = {"selected": plan.total, "queued": plan.to_change, "already": plan.already, "held": plan.held,
                "busy": plan.busy, "unreachable": plan.unreachable}
    assert set(tiles) == set(expected)
    for bucket, href in tiles.items():
        listed = operator.get(html_lib.unescape(href))
        assert listed.context["total"] == expected[bucket], (bucket, href)
    table = text[text.index('id="plan-regions"'):]
    table = table[:table.index("</table>")]
    links = re.findall(r'href="([^"]+)" data-count="(\d+)"', table)
    assert len(links) == 7 * len(plan.per_region) and len(plan.per_region) >= 2
    for href, count in links:
        assert operator.get(html_lib.unescape(href)).context["total"] == int(count), href


def test_the_estimate_includes_applying_and_tracking_and_says_what_it_assumes(operator, settings):
    from fleet.changes import estimate_seconds

    settings.IMDSWEB_ESTIMATE_CALL_SECONDS, settings.IMDSWEB_ESTIMATE_APPLY_SECONDS = 0.15, 5.0
    settings.IMDSWEB_TRACK_FAST_SECONDS = 1.0
    assert estimate_seconds([]) == 0
    assert estimate_seconds([100]) == 21  # 100 calls at 0.15 s, 5 s to apply, 1 s to notice
    assert estimate_seconds([100, 40]) == 21  # account/regions in parallel
    import math

    from fleet import ratelimit

    capacity, rate = ratelimit.limits_for("ModifyInstanceMetadataOptions")  # AWS's 100 and 5/s, less headroom
    assert capacity <= 100 and rate <= 5
    assert estimate_seconds([1100]) == math.ceil((1100 - capacity) / rate + 6)  # past the burst: the refill rate
    confirmation_fleet()
    text = operator.get(f"{reverse('fleet:change_new')}?filter=posture%3Dcounted&http_tokens=required").content.decode()
    assert 'id="estimate-assumes"' in text and "0.15 s a call" in text and "for AWS to apply" in text
