"""The Sources pages, the overview tile and the source on an instance's page, for an outsider,
a viewer and an operator."""

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from fleet.choices import LaunchVerdict, ManagedOwner, SourceKind
from fleet.tests.factories import (
    AccountFactory,
    InstanceFactory,
    LaunchSourceFactory,
    LaunchTemplateVersionFactory,
    MetadataDefaultsFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
LIST = reverse("fleet:source_list")


@pytest.fixture
def fleet():
    prod = AccountFactory(account_id="111111111111", name="prod")
    staging = AccountFactory(account_id="222222222222", name="staging")
    web = LaunchSourceFactory(account=prod, name="web-prod", default_version=2, latest_version=3, next_version=2)
    for number, tokens in ((1, "optional"), (2, ""), (3, "required")):
        LaunchTemplateVersionFactory(template=web, version_number=number, http_tokens=tokens)
    api = LaunchSourceFactory(account=prod, name="api-prod", verdict=LaunchVerdict.IMDSV2, next_http_tokens="required")
    eks = LaunchSourceFactory(
        account=staging, region="eu-west-1", name="eks-nodes", owner=ManagedOwner.EKS,
        owner_detail="cluster staging, node group general",
    )
    group = LaunchSourceFactory(
        account=prod, kind=SourceKind.AUTO_SCALING_GROUP, source_id="web-prod-asg", name="web-prod-asg",
        template=web, template_ref=web.source_id, version_spec="$Default", next_version=2,
    )
    configuration = LaunchSourceFactory(
        account=prod, kind=SourceKind.LAUNCH_CONFIGURATION, source_id="bastion-lc", name="bastion-lc",
        http_tokens="optional", image_id="ami-0legacy",
    )
    gone = LaunchSourceFactory(account=prod, name="old-template", gone_at="2026-01-01T00:00:00Z")
    old = InstanceFactory(
        account=prod, launch_template_id=web.source_id, launch_template_version="1", autoscaling_group="web-prod-asg",
        tags={"Name": "web-1", "eks:cluster-name": "prod", "eks:nodegroup-name": "general"},
    )
    new = InstanceFactory(
        account=prod, launch_template_id=web.source_id, launch_template_version="2", http_tokens="required",
        autoscaling_group="web-prod-asg",
    )
    MetadataDefaultsFactory(account=prod, region="us-east-1", http_tokens_enforced="enabled")
    return locals()


def client_for(role):
    client = Client()
    if role:
        client.force_login(UserFactory(role=role))
    return client


def urls(fleet):
    return [LIST, reverse("fleet:source_detail", args=[fleet["web"].pk]),
            reverse("fleet:source_detail", args=[fleet["group"].pk]),
            reverse("fleet:source_detail", args=[fleet["configuration"].pk])]


def test_outsider_is_sent_to_login(fleet):
    client = client_for(None)
    for url in urls(fleet):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), url


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_every_role_reads_the_pages(fleet, role):
    client = client_for(role)
    for url in urls(fleet):
        assert client.get(url).status_code == 200, url


def test_unknown_source_is_404(fleet):
    assert client_for("viewer").get(reverse("fleet:source_detail", args=[999999])).status_code == 404


def names(response):
    return {row.record.name for row in response.context["table"].rows}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"web-prod", "api-prod", "eks-nodes", "web-prod-asg", "bastion-lc"}),
        ("?account=222222222222", {"eks-nodes"}),
        ("?region=eu-west-1", {"eks-nodes"}),
        ("?kind=auto_scaling_group", {"web-prod-asg"}),
        ("?kind=launch_configuration", {"bastion-lc"}),
        ("?verdict=imdsv2", {"api-prod"}),
        ("?owner=eks", {"eks-nodes"}),
        ("?owner=none&verdict=imdsv1&account=111111111111", {"web-prod", "web-prod-asg", "bastion-lc"}),
        ("?gone=gone", {"old-template"}),
        ("?q=web", {"web-prod", "web-prod-asg"}),
    ],
)
def test_filters(fleet, query, expected):
    assert names(client_for("viewer").get(LIST + query)) == expected


def test_bad_filter_is_a_form_error_not_a_500(fleet):
    response = client_for("viewer").get(LIST + "?verdict=bogus")
    assert response.status_code == 200
    assert names(response) == set()
    assert "The filter is not valid" in response.content.decode()


def test_list_query_count_does_not_grow_with_rows(fleet):
    client = client_for("viewer")

    def count():
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(LIST).status_code == 200
        return len(ctx.captured_queries)

    small = count()
    LaunchSourceFactory.create_batch(30, account=fleet["prod"])
    assert count() == small


def test_template_page_shows_chain_versions_groups_and_instances(fleet):
    web = fleet["web"]
    html = client_for("viewer").get(reverse("fleet:source_detail", args=[web.pk])).content.decode()
    assert "next launch: IMDSv1 allowed" in html
    assert "LT leaves HttpTokens unset → EC2 default: HttpTokens optional → optional" in html
    assert "web-prod-asg" in html  # the group using it
    assert "default v2 · latest v3" in html
    # Instances launched from it, by version, with links into the instance list.
    assert "<strong>2</strong> present instances" in html and "<strong class=\"text-bad\">1</strong> still allowing" in html
    assert f"/instances/?account=111111111111&amp;region=us-east-1&amp;launch_template={web.source_id}" in html
    assert "http_tokens=optional&amp;http_endpoint=enabled" in html


def test_instance_list_link_lists_exactly_the_instances_from_the_source(fleet):
    web = fleet["web"]
    response = client_for("viewer").get(
        reverse("fleet:instance_list") + f"?account=111111111111&region=us-east-1&launch_template={web.source_id}"
        "&http_tokens=optional"
    )
    assert [row.record.instance_id for row in response.context["table"].rows] == [fleet["old"].instance_id]


def test_launch_configuration_page_says_it_cannot_be_modified(fleet):
    html = client_for("viewer").get(reverse("fleet:source_detail", args=[fleet["configuration"].pk])).content.decode()
    assert "cannot be modified, only replaced" in html and "migrating from launch configurations" in html


def test_managed_source_shows_its_owner(fleet):
    html = client_for("viewer").get(reverse("fleet:source_detail", args=[fleet["eks"].pk])).content.decode()
    assert "Owned by Amazon EKS (cluster staging, node group general)" in html


def test_overview_tile_counts_present_imdsv1_sources(fleet):
    html = client_for("viewer").get(reverse("fleet:overview")).content.decode()
    # web-prod, eks-nodes, web-prod-asg, bastion-lc (api-prod is IMDSv2, old-template is gone).
    assert '<span class="tile-value">4</span><span class="tile-label">launch sources that still create IMDSv1' in html
    assert f'href="{LIST}?verdict=imdsv1"' in html


def test_instance_page_shows_its_source_and_owner(fleet):
    html = client_for("viewer").get(reverse("fleet:instance_detail", args=[fleet["old"].instance_id])).content.decode()
    assert f'href="{fleet["web"].get_absolute_url()}">web-prod</a>' in html
    assert "(next launch uses v2: IMDSv1 allowed)" in html
    assert f'href="{fleet["group"].get_absolute_url()}">web-prod-asg</a>' in html
    assert "Amazon EKS" in html


def test_defaults_page_shows_enforcement(fleet):
    html = client_for("viewer").get(reverse("fleet:defaults")).content.decode()
    assert "IMDSv2 enforced</th>" in html and '<span class="badge badge-good">enabled</span>' in html


def test_defaults_page_names_the_sources_enforcement_would_stop(fleet):
    html = client_for("viewer").get(reverse("fleet:defaults")).content.decode()
    # prod/us-east-1: web-prod, web-prod-asg, bastion-lc resolve to optional (api-prod requires IMDSv2).
    assert "3 (refused)" in html
    assert "bastion-lc, web-prod, web-prod-asg" in html


def test_enforcement_blockers_lists_what_does_not_resolve_to_required(fleet):
    from fleet.sources import enforcement_blockers

    prod = fleet["prod"]
    blockers = enforcement_blockers({(prod.pk, "us-east-1")})
    assert [s.name for s in blockers[(prod.pk, "us-east-1")]] == ["bastion-lc", "web-prod", "web-prod-asg"]
    assert list(blockers) == [(prod.pk, "us-east-1")]


FIX = reverse("fleet:source_fix")


def test_fix_confirmation_is_for_operators_only(fleet):
    url = f"{FIX}?ids={fleet['web'].pk}"
    assert client_for(None).get(url).status_code == 302
    assert client_for("viewer").get(url).status_code == 403
    assert client_for("viewer").post(FIX, {"ids": [fleet["web"].pk]}).status_code == 403
    assert client_for("operator").get(url).status_code == 200


def test_fix_confirmation_shows_what_changes_and_what_is_skipped(fleet):
    from fleet.models import ChangeBatch

    html = client_for("operator").get(
        f"{FIX}?ids={fleet['web'].pk}&ids={fleet['eks'].pk}&ids={fleet['configuration'].pk}"
    ).content.decode()
    assert html.count("to change</span>") == 1  # web-prod
    assert "Owned by Amazon EKS" in html and "cannot be modified, only replaced" in html
    assert ChangeBatch.objects.count() == 0  # a GET queues nothing


def test_fix_posts_a_batch_and_redirects_to_it(fleet, monkeypatch):
    from fleet import source_changes
    from fleet.choices import ChangeKind, ItemState

    monkeypatch.setattr(source_changes, "_dispatch_on_commit", lambda batch: None)
    response = client_for("operator").post(FIX, {"ids": [fleet["web"].pk], "comment": "fix web", "hop_limit": "2"})
    assert response.status_code == 302
    batch = fleet["web"].change_items.get().batch
    assert response["Location"] == batch.get_absolute_url()
    assert (batch.kind, batch.desired) == (ChangeKind.LAUNCH_TEMPLATE, {"http_tokens": "required", "hop_limit": 2})
    item = batch.items.get()
    assert item.state == ItemState.QUEUED and item.previous == {"default_version": 2, "groups": {}, "mixed": {}}
    page = client_for("viewer").get(batch.get_absolute_url()).content.decode()
    assert f'href="{fleet["web"].get_absolute_url()}">web-prod</a>' in page
    source_page = client_for("viewer").get(fleet["web"].get_absolute_url()).content.decode()
    assert f"#{batch.pk}</a>" in source_page  # its change history


@pytest.mark.parametrize("query", ["", "?ids=abc", "?filter=verdict%3Dbogus", "?ids=999999", "?hop_limit=99&ids=1"])
def test_bad_fix_requests_are_400_not_500(fleet, query):
    assert client_for("operator").get(FIX + query).status_code in (200, 400)
    assert client_for("operator").post(FIX + query, {}).status_code == 400


def test_fix_by_filter_takes_only_launch_templates(fleet):
    html = client_for("operator").get(f"{FIX}?filter=account%3D111111111111%26verdict%3Dimdsv1").content.decode()
    assert "web-prod" in html and "bastion-lc" not in html and "web-prod-asg</a>" not in html


ENFORCE = reverse("fleet:enforce")


def test_enforcement_page_access_and_held_preview(fleet):
    from fleet.models import SourceSyncState

    SourceSyncState.objects.create(account=fleet["prod"], region="us-east-1", synced_at="2026-01-01T00:00:00Z")
    url = f"{ENFORCE}?targets=111111111111/us-east-1&targets=111111111111/eu-west-1"
    assert client_for(None).get(url).status_code == 302
    assert client_for("viewer").get(url).status_code == 403
    html = client_for("operator").get(url).content.decode()
    assert "3 launch source(s) would stop launching: bastion-lc (IMDSv1 allowed), web-prod (IMDSv1 allowed)" in html
    assert "never been read: sync first" in html  # eu-west-1: fail closed


def test_enforcement_post_holds_and_override_queues(fleet, monkeypatch):
    from fleet import enforcement
    from fleet.choices import ChangeKind, ItemState

    monkeypatch.setattr(enforcement, "_dispatch_on_commit", lambda batch: None)
    operator = client_for("operator")
    response = operator.post(ENFORCE, {"targets": ["111111111111/us-east-1"], "enable": "1"})
    assert response.status_code == 302
    from fleet.models import ChangeBatch

    batch = ChangeBatch.objects.get()
    assert (batch.kind, batch.desired) == (ChangeKind.ENFORCEMENT, {"http_tokens_enforced": "enabled"})
    assert batch.items.get().state == ItemState.HELD
    batch.items.update(state=ItemState.CANCELLED)
    operator.post(ENFORCE, {"targets": ["111111111111/us-east-1"], "enable": "1", "override_held": "on"})
    assert ChangeBatch.objects.latest("pk").items.get().state == ItemState.QUEUED


def test_enforcement_refuses_policy_managed_and_unknown_targets(fleet):
    from fleet.models import MetadataDefaults

    MetadataDefaults.objects.filter(account=fleet["prod"]).update(managed_by="declarative-policy", managed_exception_message="org policy")
    operator = client_for("operator")
    response = operator.post(ENFORCE, {"targets": ["111111111111/us-east-1"], "enable": "1"})
    assert response.status_code == 409 and "org policy" in response.content.decode()
    assert operator.post(ENFORCE, {"targets": ["999999999999/us-east-1"], "enable": "1"}).status_code == 400
    assert operator.post(ENFORCE, {"targets": ["not-a-target"], "enable": "1"}).status_code == 400


def test_list_offers_the_fix_for_the_filter_to_operators_only(fleet):
    operator_html = client_for("operator").get(LIST + "?verdict=imdsv1&account=111111111111").content.decode()
    assert f"{FIX}?filter=account%3D111111111111%26verdict%3Dimdsv1%26gone%3Dpresent" in operator_html
    assert FIX not in client_for("viewer").get(LIST + "?verdict=imdsv1").content.decode()
