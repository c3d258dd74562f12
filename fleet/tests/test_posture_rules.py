"""The overview adds up, and matches the rule books.

A mixed fleet is built in the simulator (terminated, stopped, pending, endpoint disabled, members
AWS left out, two accounts, two regions) and synced as the product does. Independently of
imdsweb's code, the test then reads raw DescribeInstances and CloudWatch with boto3 and computes
Prowler's ``ec2_instance_imdsv2_enabled`` and AWS Config's ``ec2-imdsv2-check`` itself
(AWS-FACTS.md, "Posture rules used by the anchors"). Every figure of the overview, the count of the
instance list behind each of its links (counted exactly, and taken from the posture summary as a
large fleet would), and the CSV export must equal them.
"""

import csv
import html
import io
import re
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from fleet import sync, usage
from fleet.models import Account
from fleet.views.instances import InstanceListView
from imdssim.testing import SimulatorProcess

from .conftest import ec2_in

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

ACCOUNTS = {"777700000001": "alpha", "777700000002": "beta"}
REGIONS = ("us-east-1", "eu-west-1")
NOT_EVALUATED = ("terminated", "shutting-down")
LIST = reverse("fleet:instance_list")


@pytest.fixture(scope="module")
def simulator():
    # A long apply delay keeps modified running instances "pending" for the whole test.
    with SimulatorProcess(apply_delay=600, throttle=False) as sim:
        yield sim


def launch(ec2, count, **metadata_options):
    """RunInstances (moto takes any image id; DescribeImages to find one costs seconds a call)."""
    kwargs = {"MetadataOptions": metadata_options} if metadata_options else {}
    reservation = ec2.run_instances(ImageId="ami-12345678", MinCount=count, MaxCount=count, **kwargs)
    return [instance["InstanceId"] for instance in reservation["Instances"]]


def build(sim, ec2, cloudwatch, account_id, region, k):
    """One account/region's share of the mixed fleet; ``k`` varies the sizes between them."""
    launch(ec2, 3 + k)  # optional, running
    launch(ec2, 2 + k, HttpTokens="required")
    launch(ec2, 1, HttpTokens="required", HttpPutResponseHopLimit=2, InstanceMetadataTags="enabled")
    launch(ec2, 1 + k % 2, HttpEndpoint="disabled")  # Prowler PASS, Config NON_COMPLIANT
    launch(ec2, 1, HttpEndpoint="disabled", HttpTokens="required")
    stopped = launch(ec2, 2 + k)
    ec2.stop_instances(InstanceIds=stopped)
    # Accepted while stopped: pending until the next start.
    ec2.modify_instance_metadata_options(InstanceId=stopped[0], HttpTokens="required")
    for instance_id in launch(ec2, 1 + k):  # running, modified: pending for the apply delay
        ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="required")
    terminated = launch(ec2, 2 + k) + launch(ec2, 1, HttpTokens="required")
    ec2.terminate_instances(InstanceIds=terminated)
    # Members AWS left out of MetadataOptions.
    sim.omit_options(account_id, region, launch(ec2, 1), ["HttpTokens"])  # Prowler FAIL, Config COMPLIANT
    sim.omit_options(account_id, region, launch(ec2, 1, HttpTokens="required"), ["HttpEndpoint"])  # FAIL
    sim.omit_options(
        account_id, region, launch(ec2, 1 + k % 2, HttpTokens="required"),
        ["HttpProtocolIpv6", "InstanceMetadataTags", "HttpPutResponseHopLimit"],
    )
    sim.omit_options(account_id, region, terminated[:1], ["HttpTokens", "HttpEndpoint"])
    # The SSRF risk's inputs (issue 19): an instance profile, with and without a public IP.
    iam = client_in(sim.endpoint_url, "iam", account_id, "us-east-1")
    profile = iam.create_instance_profile(InstanceProfileName=f"app-{region}")["InstanceProfile"]["Arn"]
    run = dict(ImageId="ami-12345678", IamInstanceProfile={"Arn": profile})
    ec2.run_instances(**run, MinCount=1 + k % 2, MaxCount=1 + k % 2)  # a public IP in the default subnet
    ec2.run_instances(**run, MinCount=1, MaxCount=1, MetadataOptions={"HttpTokens": "required"})  # no risk
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    ec2.run_instances(**run, MinCount=1, MaxCount=1, NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet, "AssociatePublicIpAddress": False}])
    # IMDSv1 calls on some not-enforced instances (and on a terminated one, which must not count).
    optional = [i for i in raw_instances(ec2) if i["MetadataOptions"].get("HttpTokens") == "optional"]
    calling = [i["InstanceId"] for i in optional if i["State"]["Name"] == "running"][: 1 + k] + terminated[1:2]
    cloudwatch.put_metric_data(Namespace="AWS/EC2", MetricData=[
        {"MetricName": "MetadataNoToken", "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
         "Timestamp": timezone.now() - timedelta(hours=6), "Value": 7, "Unit": "Count"}
        for instance_id in calling
    ])


def raw_instances(ec2):
    return [
        instance
        for page in ec2.get_paginator("describe_instances").paginate()
        for reservation in page["Reservations"]
        for instance in reservation["Instances"]
    ]


def raw_v1_calls(cloudwatch, instance_ids, days):
    """MetadataNoToken summed over the usage window, per instance, straight from CloudWatch."""
    end = timezone.now()
    calls = {}
    for instance_id in instance_ids:
        result = cloudwatch.get_metric_statistics(
            Namespace="AWS/EC2", MetricName="MetadataNoToken", Statistics=["Sum"], Period=86400,
            Dimensions=[{"Name": "InstanceId", "Value": instance_id}], StartTime=end - timedelta(days=days), EndTime=end,
        )
        calls[instance_id] = sum(point["Sum"] for point in result["Datapoints"])
    return calls


def prowler_pass(options):
    """Prowler ec2_instance_imdsv2_enabled, as its check is written."""
    endpoint, tokens = options.get("HttpEndpoint"), options.get("HttpTokens")
    return (endpoint == "enabled" and tokens == "required") or endpoint == "disabled"


def config_non_compliant(options):
    """AWS Config ec2-imdsv2-check: NON_COMPLIANT iff HttpTokens is optional."""
    return options.get("HttpTokens") == "optional"


def cloudwatch_in(endpoint, account_id, region):
    return client_in(endpoint, "cloudwatch", account_id, region)


def client_in(endpoint, service, account_id, region):
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=endpoint)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/raw", RoleSessionName="raw")["Credentials"]
    return boto3.client(
        service, region_name=region, endpoint_url=endpoint, aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"],
    )


@pytest.fixture
def mixed_fleet(simulator, aws_env, monkeypatch, settings):
    """Build, sync and measure the fleet; return the raw instances with the anchors' verdicts."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", simulator.endpoint_url)
    rows = []
    for a, account_id in enumerate(ACCOUNTS):
        account = Account.objects.create(
            account_id=account_id, name=ACCOUNTS[account_id], regions=list(REGIONS),
            role_arn=f"arn:aws:iam::{account_id}:role/imdsweb-reader",
        )
        for r, region in enumerate(REGIONS):
            ec2 = ec2_in(simulator.endpoint_url, account_id, region)
            cloudwatch = cloudwatch_in(simulator.endpoint_url, account_id, region)
            build(simulator, ec2, cloudwatch, account_id, region, 2 * a + r)
            assert sync.sync_region(account, region).status == "succeeded"
            usage.sync_usage(account, region)
            # Independently of imdsweb: what AWS says, and what the rule books make of it.
            instances = raw_instances(ec2)
            calls = raw_v1_calls(cloudwatch, [i["InstanceId"] for i in instances], settings.IMDSWEB_USAGE_WINDOW_DAYS)
            for instance in instances:
                options = instance["MetadataOptions"]
                rows.append({
                    "account_id": account_id, "region": region, "instance_id": instance["InstanceId"],
                    "state": instance["State"]["Name"], "options": options,
                    "evaluated": instance["State"]["Name"] not in NOT_EVALUATED,
                    "prowler_pass": prowler_pass(options), "config_non_compliant": config_non_compliant(options),
                    "v1_calls": calls[instance["InstanceId"]],
                    "role_public": bool(instance.get("IamInstanceProfile", {}).get("Arn"))
                    and bool(instance.get("PublicIpAddress")),
                })
    return rows


def expected_links(rows):
    """Each overview link (as its query) -> the number the rule books give for it."""
    evaluated = [row for row in rows if row["evaluated"]]
    fail = [row for row in evaluated if not row["prowler_pass"]]

    def count(rows, test=lambda row: True):
        return sum(1 for row in rows if test(row))

    links = {
        "posture=counted": count(evaluated),
        "posture=enforced": count(evaluated, lambda row: row["prowler_pass"]),
        "posture=counted&http_tokens=optional": count(evaluated, lambda row: row["config_non_compliant"]),
        "posture=enforced&metadata_state=applied": count(
            evaluated, lambda row: row["prowler_pass"] and row["options"].get("State") == "applied"),
        "posture=not_enforced": count(fail),
        "posture=waived": 0,  # no waivers here (fleet/tests/test_waivers.py counts them)
        "posture=not_counted": count(rows, lambda row: not row["evaluated"]),
        "posture=counted&metadata_state=pending": count(evaluated, lambda row: row["options"].get("State") == "pending"),
        "posture=counted&http_endpoint=disabled": count(
            evaluated, lambda row: row["options"].get("HttpEndpoint") == "disabled"),
        "posture=counted&instance_metadata_tags=enabled": count(
            evaluated, lambda row: row["options"].get("InstanceMetadataTags") == "enabled"),
        "posture=counted&instance_state=stopped": count(evaluated, lambda row: row["state"] == "stopped"),
        "posture=counted&v1_usage=yes": count(evaluated, lambda row: row["v1_calls"] > 0),
        "posture=not_enforced&v1_usage=no": count(fail, lambda row: row["v1_calls"] == 0),
        "posture=not_enforced&v1_usage=yes": count(fail, lambda row: row["v1_calls"] > 0),
        "posture=not_enforced&v1_usage=unknown": 0,  # every account/region was measured
        "posture=counted&risk=role_public": count(fail, lambda row: row["role_public"]),
    }
    links["posture=counted&hop_limit_min=2"] = count(
        evaluated, lambda row: (row["options"].get("HttpPutResponseHopLimit") or 0) >= 2)
    # Posture by team (fleet.teams): no instance here has the owner tag, so one row, "no team".
    no_team = f"tag=!{settings.IMDSWEB_OWNER_TAG}"
    links[f"posture=counted&{no_team}"] = count(evaluated)
    links[f"posture=not_enforced&{no_team}"] = count(fail)
    links[f"posture=waived&{no_team}"] = 0  # no waivers here
    links[f"posture=counted&v1_usage=yes&{no_team}"] = count(evaluated, lambda row: row["v1_calls"] > 0)
    links[f"posture=counted&risk=role_public&{no_team}"] = count(fail, lambda row: row["role_public"])
    for account_id in ACCOUNTS:
        mine = [row for row in evaluated if row["account_id"] == account_id]
        links[f"account={account_id}&posture=counted"] = len(mine)
        for region in REGIONS:
            links[f"account={account_id}&region={region}&posture=counted"] = count(
                mine, lambda row, region=region: row["region"] == region)
    return links


def canonical(query):
    return "&".join(sorted(f"{k}={v}" for k, v in parse_qsl(query)))


def page_links(content):
    """(query, data-count) of every linked figure on the overview."""
    found = {}
    for tag in re.findall(r"<a [^>]*data-count=[^>]*>", content):
        href = html.unescape(re.search(r'href="([^"]*)"', tag).group(1))
        count = int(re.search(r'data-count="(\d+)"', tag).group(1))
        assert urlsplit(href).path == LIST, href
        query = canonical(urlsplit(href).query)
        assert found.setdefault(query, count) == count, query  # one query, one number
    return found


def list_count(client, query):
    context = client.get(f"{LIST}?{query}").context
    return context["total"], context["total_at_least"]


def export(client, query):
    response = client.get(reverse("fleet:instance_export") + f"?{query}")
    assert response.status_code == 200
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_every_figure_matches_the_rule_books(mixed_fleet, viewer, monkeypatch):
    rows = mixed_fleet
    evaluated = [row for row in rows if row["evaluated"]]
    # The fleet is as mixed as the rules need: every case is there at least once.
    assert {row["state"] for row in rows} >= {"running", "stopped", "terminated"}
    assert any(row["options"].get("State") == "pending" and row["state"] == "running" for row in rows)
    assert any("HttpTokens" not in row["options"] and row["evaluated"] for row in rows)
    assert any("HttpEndpoint" not in row["options"] and row["evaluated"] for row in rows)
    assert any(row["options"].get("HttpEndpoint") == "disabled" and row["config_non_compliant"] for row in rows)
    assert any(row["v1_calls"] and not row["evaluated"] for row in rows)  # must not count

    response = viewer.get(reverse("fleet:overview"))
    content = response.content.decode()
    expected = {canonical(query): n for query, n in expected_links(rows).items()}
    assert page_links(content) == expected

    totals = response.context["totals"]
    passed = sum(row["prowler_pass"] for row in evaluated)
    compliant = sum(not row["config_non_compliant"] for row in evaluated)
    assert totals["total"] == len(evaluated)
    assert totals["enforced_pct"] == round(100 * passed / len(evaluated), 1)
    assert totals["config_compliant_pct"] == round(100 * compliant / len(evaluated), 1)
    assert f"{totals['enforced_pct']:g}%" in content and f"{totals['config_compliant_pct']:g}%" in content
    hop_over_1 = sum(1 for row in evaluated if (row["options"].get("HttpPutResponseHopLimit") or 0) > 1)
    assert totals["hop_limit_over_1"] == hop_over_1
    terminated = sum(1 for row in rows if row["state"] == "terminated")
    assert f"{terminated} terminated, not counted" in content
    # The heat map's percentages, cell by cell.
    cells = {
        (row["account_id"], cell["region"]): cell["enforced_pct"]
        for row in response.context["heat_map"].rows for cell in row["cells"] if cell
    }
    for account_id in ACCOUNTS:
        for region in REGIONS:
            mine = [row for row in evaluated if (row["account_id"], row["region"]) == (account_id, region)]
            assert cells[(account_id, region)] == round(100 * sum(r["prowler_pass"] for r in mine) / len(mine), 1)
    # The hop limit chart: counted instances per hop limit (an absent one as None).
    hops = {}
    for row in evaluated:
        hop = row["options"].get("HttpPutResponseHopLimit")
        hops[hop] = hops.get(hop, 0) + 1
    assert dict(response.context["hop_limits"]) == hops

    for query, n in expected.items():
        # The list behind the link: counted row by row, and from the summary as at a million rows.
        assert list_count(viewer, query) == (n, False), query
        with monkeypatch.context() as patch:
            patch.setattr(InstanceListView, "COUNT_BOUND", 1)
            assert list_count(viewer, query) == (n, False), f"summary: {query}"
        # The CSV export of the same filter has the same rows.
        assert len(export(viewer, query)) == n, f"csv: {query}"

    # The export's rule columns are the anchors' verdicts, instance by instance.
    by_id = {row["instance_id"]: row for row in rows}
    exported = export(viewer, "")
    assert {line["instance_id"] for line in exported} == set(by_id)
    for line in exported:
        row = by_id[line["instance_id"]]
        assert line["counted"] == ("yes" if row["evaluated"] else "no")
        if row["evaluated"]:
            assert line["prowler_ec2_instance_imdsv2_enabled"] == ("PASS" if row["prowler_pass"] else "FAIL")
            assert line["aws_config_ec2_imdsv2_check"] == (
                "NON_COMPLIANT" if row["config_non_compliant"] else "COMPLIANT")
        else:
            assert line["prowler_ec2_instance_imdsv2_enabled"] == line["aws_config_ec2_imdsv2_check"] == ""
        # An absent member is an empty cell, never a word standing in for it.
        for column, member in (("http_tokens", "HttpTokens"), ("http_endpoint", "HttpEndpoint"),
                               ("instance_metadata_tags", "InstanceMetadataTags"),
                               ("http_protocol_ipv6", "HttpProtocolIpv6"), ("hop_limit", "HttpPutResponseHopLimit")):
            assert line[column] == str(row["options"].get(member, "")), (column, line["instance_id"])
