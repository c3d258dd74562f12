"""Every linked count opens a list of exactly that many: the overview, the confirmation page, a
batch's page and a waiver's page, crawled as a reader would click them.

A count is a link with ``data-count``; every link whose text is a bare number must carry one, so a
count added later without it fails here instead of going unchecked. The list behind an instance
link is the instance list (its ``total``); behind a batch page's link, the batch's items table.
"""

import re
from datetime import timedelta
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from fleet import changes, posture, waivers
from fleet.choices import WaiverScope
from fleet.models import ChangeItem, Instance, Waiver
from fleet.models.waivers import utc_today
from fleet.tests.factories import (
    AccountFactory,
    ChangeBatchFactory,
    ChangeItemFactory,
    InstanceFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
LONG_AGO = timezone.now() - timedelta(days=30)
NUMBER = re.compile(r"^[\d,]+$")


class Links(HTMLParser):
    """Every ``<a>``: its href, its data-count (or None) and its text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links, self._open = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            attrs = dict(attrs)
            self._open.append([attrs.get("href"), attrs.get("data-count"), ""])

    def handle_data(self, data):
        for link in self._open:
            link[2] += data

    def handle_endtag(self, tag):
        if tag == "a" and self._open:
            href, count, text = self._open.pop()
            self.links.append((href, count, " ".join(text.split())))


def links_of(html):
    parser = Links()
    parser.feed(html)
    return parser.links


def listed(client, url):
    """How many the list at ``url`` shows in all (instances, or a batch's items)."""
    response = client.get(url)
    assert response.status_code == 200, url
    if "total" in response.context:  # the instance list
        return response.context["total"]
    return response.context["table"].paginator.count  # a batch's items


def check_page(client, url, at_least):
    """Follow every count on the page at ``url``; returns how many were checked."""
    html = client.get(url).content.decode()
    checked = 0
    for href, count, text in links_of(html):
        if count is None:
            assert not NUMBER.match(text), f"{url}: the count {text!r} links to {href} without data-count"
            continue
        target = urljoin(url, href)
        assert listed(client, target) == int(count), f"{url}: {text!r} says {count}, {target} lists otherwise"
        checked += 1
    assert checked >= at_least, f"{url}: only {checked} linked counts"
    return checked


@pytest.fixture
def viewer():
    client = Client()
    client.force_login(UserFactory(role="operator"))
    return client


@pytest.fixture
def fleet():
    """A fleet with something in every bucket: each outcome, waived, stopped, container hosts with
    hop limit 1, pending options, public instances with a role, two teams, two accounts and regions."""
    prod, dev = AccountFactory(name="prod"), AccountFactory(name="dev")
    busy = InstanceFactory(account=prod, name="busy", tags={"Team": "payments"})
    ChangeItemFactory(batch=ChangeBatchFactory(desired={"hop_limit": 2}), instance=busy, state="pending")
    waived = InstanceFactory(account=dev, name="vendor", v1_calls=3)
    waivers.create_waiver(None, Waiver(scope=WaiverScope.INSTANCE, instance=waived, owner="alice",
                                       reason="vendor appliance", expires_on=utc_today() + timedelta(days=30)))
    instances = [
        busy, waived,
        InstanceFactory(account=prod, name="ok", tags={"Team": "payments"}),
        InstanceFactory(account=prod, http_tokens="required", tags={"Team": "data"}),
        InstanceFactory(account=prod, http_tokens="required", metadata_state="pending"),
        InstanceFactory(account=dev, instance_state="terminated"),
        InstanceFactory(account=dev, region="eu-west-1", instance_state="shutting-down"),
        InstanceFactory(account=dev, region="eu-west-1", v1_calls=7, tags={"Team": "data"}),
        InstanceFactory(account=dev, v1_calls=None, usage_synced_at=None, usage_error="AccessDenied: no"),
        InstanceFactory(account=prod, region="eu-west-1", v1_calls=None, usage_synced_at=None),
        InstanceFactory(account=prod, v1_calls=0, usage_synced_at=LONG_AGO),
        InstanceFactory(account=prod, instance_state="stopped"),
        InstanceFactory(account=prod, name="eks-node-1", hop_limit=1),
        InstanceFactory(account=dev, hop_limit=3, instance_metadata_tags="enabled"),
        InstanceFactory(account=dev, public_ip="203.0.113.7", iam_instance_profile_arn="arn:aws:iam::1:instance-profile/web"),
    ]
    for account_pk, region in {(i.account_id, i.region) for i in Instance.objects.all()}:
        posture.refresh_region(account_pk, region)
    return instances


def test_every_count_on_the_overview_lists_that_many(viewer, fleet):
    check_page(viewer, reverse("fleet:overview"), at_least=20)


def test_every_count_on_the_confirmation_page_lists_that_many(viewer, fleet):
    query = "&".join(f"ids={i.instance_id}" for i in fleet)
    check_page(viewer, f"{reverse('fleet:change_new')}?{query}&http_tokens=required", at_least=15)


def test_every_count_on_a_batch_page_lists_that_many(viewer, fleet):
    selected = Instance.objects.filter(pk__in=[i.pk for i in fleet])
    batch = changes.request_change(None, selected, changes.REQUIRE_IMDSV2)
    # Some items on their way, one applied, one failed, one flagged, one waiting for its start.
    queued = list(batch.items.filter(state="queued").order_by("pk"))
    assert len(queued) >= 4
    ChangeItem.objects.filter(pk=queued[0].pk).update(state="applied", breakage_suspected=True)
    ChangeItem.objects.filter(pk=queued[1].pk).update(state="failed", error_code="UnauthorizedOperation")
    ChangeItem.objects.filter(pk=queued[2].pk).update(state="pending", awaiting_start=True)
    batch.breakage_flagged_at = timezone.now()
    batch.save(update_fields=["breakage_flagged_at"])
    checked = check_page(viewer, batch.get_absolute_url(), at_least=8)
    held_reasons = batch.items.filter(state="held").values("outcome").distinct().count()
    assert held_reasons == 4 and checked >= 6 + held_reasons


def test_a_waivers_count_lists_that_many(viewer, fleet):
    check_page(viewer, Waiver.objects.get().get_absolute_url(), at_least=1)
