"""Issue 19, "Risk first": the SSRF risk of instances that allow IMDSv1 (IAM role + public IP,
IAM role, no role), one rule used by the list, its filter, the CSV, the overview tile and the
confirmation page."""

import re

import pytest
from django.urls import reverse

from fleet import posture
from fleet.choices import HttpTokens, Risk, Toggle
from fleet.filters import InstanceFilterSet
from fleet.models import Instance, RegionPosture
from fleet.tests.factories import AccountFactory, InstanceFactory

pytestmark = pytest.mark.django_db
LIST = reverse("fleet:instance_list")
PROFILE = "arn:aws:iam::123456789012:instance-profile/web"


@pytest.fixture
def ranked():
    """One instance of each risk class, and the enforced or uncounted ones that have none."""
    account = AccountFactory()
    make = lambda name, **kw: InstanceFactory(account=account, name=name, **kw)  # noqa: E731
    return {
        "role_public": make("rp", iam_instance_profile_arn=PROFILE, public_ip="198.51.100.7"),
        "absent_tokens": make("absent", http_tokens=None, iam_instance_profile_arn=PROFILE, public_ip="2001:db8::1"),
        "role": make("r", iam_instance_profile_arn=PROFILE),
        "no_role": make("n", public_ip="198.51.100.8"),
        "enforced": make("e", http_tokens=HttpTokens.REQUIRED, iam_instance_profile_arn=PROFILE,
                         public_ip="198.51.100.9"),
        "disabled": make("d", http_endpoint=Toggle.DISABLED, iam_instance_profile_arn=PROFILE,
                         public_ip="198.51.100.10"),
        "terminated": make("t", instance_state="terminated", iam_instance_profile_arn=PROFILE,
                           public_ip="198.51.100.11"),
    }


def test_each_instance_gets_the_risk_of_its_role_and_public_ip(ranked):
    risks = dict(Instance.objects.with_risk().values_list("name", "risk"))
    assert risks == {"rp": "role_public", "absent": "role_public", "r": "role", "n": "no_role",
                     "e": None, "d": None, "t": "role_public"}


@pytest.mark.parametrize("risk", Risk.values)
def test_the_risk_filter_lists_exactly_that_class(ranked, risk):
    filterset = InstanceFilterSet({"risk": risk}, queryset=Instance.objects.with_risk())
    assert filterset.is_valid(), filterset.errors
    assert {i.risk for i in filterset.qs} == {risk}
    assert filterset.qs.count() == Instance.objects.with_risk().filter(risk=risk).count()


def test_the_list_shows_the_risk_column_and_the_csv_its_inputs(viewer, ranked):
    html = viewer.get(f"{LIST}?risk=role").content.decode()
    assert 'data-risk="role">IAM role</span>' in html and ">IMDSv1 risk<" in html
    lines = viewer.get(reverse("fleet:instance_export") + "?posture=counted").getvalue().decode().splitlines()
    header = lines[0].split(",")
    by_name = {row[header.index("name")]: row for row in (line.split(",") for line in lines[1:])}
    rp = by_name["rp"]
    assert (rp[header.index("iam_instance_profile_arn")], rp[header.index("public_ip")],
            rp[header.index("imdsv1_risk")]) == (PROFILE, "198.51.100.7", "role_public")
    assert by_name["e"][header.index("imdsv1_risk")] == ""
    assert by_name["n"][header.index("iam_instance_profile_arn")] == ""  # absent is an empty cell


def test_the_overview_tile_links_to_a_list_of_exactly_its_number(viewer, ranked):
    posture.refresh_all()
    html = viewer.get(reverse("fleet:overview")).content.decode()
    tile = re.search(r'id="risk-first" href="([^"]+)" data-count="(\d+)"', html)
    assert tile, "no risk-first tile"
    href, count = tile.group(1).replace("&amp;", "&"), int(tile.group(2))
    assert count == 2  # role + public IP, not the terminated one nor the enforced ones
    assert "fix these first" in html
    listed = viewer.get(href)
    assert listed.context["total"] == count
    assert {row.name for row in listed.context["table"].keyset.rows} == {"rp", "absent"}


def test_the_summary_counts_the_risk_filter_like_the_rows(ranked):
    posture.refresh_all()
    for risk in Risk.values:
        for scope in ({}, {"posture": "counted"}, {"posture": "not_enforced"}):
            filterset = InstanceFilterSet({**scope, "risk": risk}, queryset=Instance.objects.all())
            assert filterset.is_valid()
            known = filterset.summary_count()
            assert known is None or known == filterset.qs.count(), (scope, risk)
            if scope.get("posture") == "counted":
                assert known == filterset.qs.count()


def test_a_summary_row_from_before_the_risk_is_not_read_as_zero(ranked):
    posture.refresh_all()
    row = RegionPosture.objects.get()
    for group in row.value_counts.values():
        group.pop("risk", None)
    row.save()
    counter = posture.summary_counter({"posture": "counted", "risk": "role_public"})
    assert posture.present_count(counter=counter) is None  # the list counts the rows instead


def test_the_confirmation_page_splits_the_instances_to_change_by_risk(operator, ranked):
    selected = [ranked[key] for key in ("role_public", "absent_tokens", "role", "no_role", "enforced")]
    ids = "&".join(f"ids={i.instance_id}" for i in selected)
    response = operator.get(f"{reverse('fleet:change_new')}?{ids}&http_tokens=required&hop_limit=2")
    plan = response.context["preview"]
    assert plan.to_change == 5  # hop limit 2 changes the enforced one too
    assert [(risk.value, n) for risk, n in plan.risk_split] == [("role_public", 2), ("role", 1), ("no_role", 1)]
    assert plan.to_change_enforced == 1
    html = response.content.decode()
    assert "2 IAM role + public IP" in html and "1 already enforced" in html
    queued = response.context["outcome_links"]["queued"]
    for risk, n in plan.risk_split:
        assert f'data-risk="{risk.value}" data-count="{n}"' in html
        assert operator.get(f"{queued}&risk={risk.value}").context["total"] == n


def test_the_api_gives_each_instance_its_risk_and_filters_by_it(client, ranked):
    from fleet.models import ApiToken
    from fleet.tests.factories import UserFactory

    _, key = ApiToken.issue(UserFactory(role="viewer"), "test")
    headers = {"Authorization": f"Bearer {key}"}
    body = client.get("/api/v1/instances/", {"risk": "role_public", "posture": "counted"}, headers=headers).json()
    rows = {row["name"]: row for row in body["results"]}
    assert set(rows) == {"rp", "absent"}
    assert (rows["rp"]["iam_instance_profile_arn"], rows["rp"]["public_ip"], rows["rp"]["risk"]) == (
        PROFILE, "198.51.100.7", "role_public")
    assert client.get(f"/api/v1/instances/{ranked['enforced'].instance_id}/", headers=headers).json()["risk"] is None
    posture.refresh_all()
    assert client.get("/api/v1/posture/", headers=headers).json()["totals"]["risk_role_public"] == 2


def test_the_instance_page_shows_its_profile_public_ip_and_risk(viewer, ranked):
    html = viewer.get(ranked["role_public"].get_absolute_url()).content.decode()
    assert PROFILE in html and "198.51.100.7" in html
    assert re.search(r'id="risk"><span class="badge badge-bad">IAM role \+ public IP<', html)
    assert "none: IMDSv2 enforced" in viewer.get(ranked["enforced"].get_absolute_url()).content.decode()
