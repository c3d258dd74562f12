"""Context on every instance (issue 20): what it is, where it runs, who owns it, and a link to it
in the AWS console. Synced from the simulator over HTTP; every filter and the posture by team
counted against the rows themselves."""

import csv
import io
import re
from datetime import datetime, timedelta

import pytest
from django.urls import reverse

from fleet import console, posture, sync, teams
from fleet.models import Instance, TeamPosture
from fleet.tests.factories import AccountFactory, InstanceFactory
from imdssim.testing import SimulatorProcess

from .conftest import ec2_in

pytestmark = pytest.mark.django_db
LIST = reverse("fleet:instance_list")
EXPORT = reverse("fleet:instance_export")
PROFILE = "arn:aws:iam::111111111111:instance-profile/apps/web-role"


def listed(response):
    return {row.record.instance_id for row in response.context["table"].paginated_rows}


@pytest.mark.slow
def test_sync_stores_the_context_describe_instances_returns(monkeypatch):
    with SimulatorProcess(throttle=False) as sim:
        monkeypatch.setenv("AWS_ENDPOINT_URL", sim.endpoint_url)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.setenv(key, "testing")
        ec2 = ec2_in(sim.endpoint_url, "123456789012", "eu-west-1")
        ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2, InstanceType="m5.large",
                          TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Team", "Value": "payments"}]}])
        raw = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
        account = AccountFactory(account_id="123456789012", regions=["eu-west-1"])
        assert sync.sync_region(account, "eu-west-1").status == "succeeded"

    rows = {i.instance_id: i for i in Instance.objects.all()}
    assert len(rows) == 2
    for data in raw:
        row = rows[data["InstanceId"]]
        assert (row.vpc_id, row.subnet_id, row.private_ip, row.platform_details, row.instance_type) == (
            data["VpcId"], data["SubnetId"], data["PrivateIpAddress"], "Linux/UNIX", "m5.large")
        assert row.launch_time == data["LaunchTime"]
    # The refresh that follows a sync counted the team.
    assert [(t.team, t.total) for t in TeamPosture.objects.all()] == [("payments", 2)]


@pytest.fixture
def fleet():
    prod, dev = AccountFactory(account_id="111111111111", name="prod"), AccountFactory(account_id="222222222222", name="dev")
    launched = datetime(2026, 3, 1, 12, tzinfo=datetime.now().astimezone().tzinfo)
    return {
        "web": InstanceFactory(account=prod, instance_id="i-0000000000000000a", instance_type="m5.large",
                               platform_details="Linux/UNIX", vpc_id="vpc-1", subnet_id="subnet-1a",
                               private_ip="10.0.0.5", public_ip="198.51.100.5", iam_instance_profile_arn=PROFILE,
                               launch_time=launched, tags={"Team": "payments", "Env": "prod", "Name": "web"}),
        "win": InstanceFactory(account=prod, instance_id="i-0000000000000000b", instance_type="c6i.xlarge",
                               platform_details="Windows", vpc_id="vpc-1", subnet_id="subnet-1b",
                               private_ip="10.0.1.7", http_tokens="required", launch_time=launched + timedelta(days=30),
                               tags={"Team": "data", "Env": "staging"}),
        "bare": InstanceFactory(account=dev, region="eu-west-1", instance_id="i-0000000000000000c",
                                instance_type="t3.medium", vpc_id="vpc-2", subnet_id="subnet-2a", private_ip="10.1.0.9",
                                launch_time=launched + timedelta(days=60), tags={"Env": "dev", "Owner": "x=y"}),
    }


@pytest.mark.parametrize("query, expected", [
    ("instance_type=m5.large", {"web"}),
    ("platform=Windows", {"win"}),
    ("vpc=vpc-1", {"web", "win"}),
    ("subnet=subnet-2a", {"bare"}),
    ("ip=10.0.1.7", {"win"}),
    ("ip=198.51.100.5", {"web"}),  # the public IP too
    ("instance_profile=web-role", {"web"}),
    (f"instance_profile={PROFILE}", {"web"}),
    ("instance_profile=none", {"win", "bare"}),
    ("launched_after=2026-03-15", {"win", "bare"}),
    ("launched_before=2026-03-15", {"web"}),
    ("tag=Env%3Dprod", {"web"}),
    ("tag=Team", {"web", "win"}),
    ("tag=%21Team", {"bare"}),
    ("tag=Owner%3Dx%3Dy", {"bare"}),  # the value may itself hold "="
    ("team=data", {"win"}),
    ("team=nobody", set()),
])
def test_context_filters(viewer, fleet, query, expected):
    response = viewer.get(f"{LIST}?{query}")
    assert response.status_code == 200
    assert listed(response) == {fleet[key].instance_id for key in expected}
    assert response.context["total"] == len(expected)


@pytest.mark.parametrize("query", ["ip=10.0.0", "tag=%3Dvalue", "tag=%21Key%3Dv", "launched_after=yesterday"])
def test_bad_context_filters_are_form_errors(viewer, fleet, query):
    response = viewer.get(f"{LIST}?{query}")
    assert response.status_code == 200
    assert response.context["filter"].errors and listed(response) == set()
    assert "The filter is not valid" in response.content.decode()


def test_the_list_shows_the_context_columns(viewer, fleet):
    html = viewer.get(f"{LIST}?instance_type=m5.large").content.decode()
    row = html[html.index("<tbody"):].split("</tr>")[0]
    for text in ("payments", "m5.large", "Linux/UNIX", "web-role", "vpc-1", "subnet-1a", "10.0.0.5", "198.51.100.5",
                 "2026-03-01"):
        assert text in row, text
    assert f'title="{PROFILE}"' in row


@pytest.mark.parametrize("sort", ["instance_type", "-instance_type", "launch_time", "-launch_time"])
def test_new_sorts(viewer, fleet, sort):
    order = [fleet[key].instance_id for key in ("web", "win", "bare")]  # launch time order
    if "instance_type" in sort:
        order = [fleet[key].instance_id for key in ("win", "web", "bare")]  # c6i, m5, t3
    response = viewer.get(f"{LIST}?sort={sort}")
    got = [row.record.instance_id for row in response.context["table"].paginated_rows]
    assert got == (order[::-1] if sort.startswith("-") else order)
    assert 'class="sort-link"' in response.content.decode()


def test_csv_has_the_context_columns(viewer, fleet):
    response = viewer.get(f"{EXPORT}?instance_type=m5.large")
    [row] = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert (row["vpc_id"], row["subnet_id"], row["private_ip"], row["public_ip"], row["platform_details"], row["team"],
            row["iam_instance_profile_arn"]) == ("vpc-1", "subnet-1a", "10.0.0.5", "198.51.100.5", "Linux/UNIX",
                                                 "payments", PROFILE)
    assert row["launch_time"].startswith("2026-03-01")


@pytest.mark.parametrize("region, url", [
    ("eu-west-1", "https://eu-west-1.console.aws.amazon.com/ec2/home?region=eu-west-1#InstanceDetails:instanceId=i-1"),
    ("cn-north-1", "https://console.amazonaws.cn/ec2/home?region=cn-north-1#InstanceDetails:instanceId=i-1"),
    ("us-gov-west-1",
     "https://console.amazonaws-us-gov.com/ec2/home?region=us-gov-west-1#InstanceDetails:instanceId=i-1"),
])
def test_console_links_are_in_the_instances_region_and_partition(region, url):
    assert console.instance_url(region, "i-1") == url


def test_detail_links_the_instance_its_template_and_group_in_the_console(viewer):
    instance = InstanceFactory(region="ap-southeast-2", launch_template_id="lt-0abc", launch_template_version="3",
                               autoscaling_group="web asg/1", tags={"Team": "web"})
    html = viewer.get(instance.get_absolute_url()).content.decode()
    base = "https://ap-southeast-2.console.aws.amazon.com/ec2/home?region=ap-southeast-2#"
    assert f'href="{base}InstanceDetails:instanceId={instance.instance_id}"' in html
    assert f'href="{base}LaunchTemplateDetails:launchTemplateId=lt-0abc"' in html
    assert f'href="{base}AutoScalingGroupDetails:id=web%20asg%2F1;view=details"' in html
    assert re.search(r"Team \(owner tag\)</th><td>web<", html)


def test_detail_without_template_or_group_has_only_the_instance_link(viewer):
    instance = InstanceFactory()
    html = viewer.get(instance.get_absolute_url()).content.decode()
    assert 'id="console-instance"' in html
    assert 'id="console-launch-template"' not in html and 'id="console-autoscaling-group"' not in html


def test_posture_by_team_counts_link_to_lists_of_the_same_size(viewer, fleet):
    InstanceFactory(account=fleet["web"].account, instance_state="terminated", tags={"Team": "payments"})  # not counted
    for account_id, region in {(i.account_id, i.region) for i in Instance.objects.all()}:
        posture.refresh_region(account_id, region)
    rows = {row["team"]: row for row in teams.by_team()}
    assert {team: (row["total"], row["not_enforced"]) for team, row in rows.items()} == {
        "payments": (1, 1), "data": (1, 0), None: (1, 1)}
    html = viewer.get(reverse("fleet:overview")).content.decode()
    block = html[html.index('id="team-posture"'):]
    block = block[:block.index("</section>")]
    links = re.findall(r'href="([^"]+)" data-count="(\d+)"', block)
    assert len(links) == 3 * 5
    for href, count in links:
        response = viewer.get(href.replace("&amp;", "&"))
        assert response.status_code == 200 and response.context["total"] == int(count), href


def test_team_rows_follow_the_owner_tag_setting(settings, fleet):
    settings.IMDSWEB_OWNER_TAG = "Env"
    for account_id, region in {(i.account_id, i.region) for i in Instance.objects.all()}:
        posture.refresh_region(account_id, region)
    assert {row["team"] for row in teams.by_team()} == {"prod", "staging", "dev"}
