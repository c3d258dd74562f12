"""The seeded demo fleet, reached the way the product reaches AWS: AWS_ENDPOINT_URL + AssumeRole."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError

from imdssim.seed import DEMO_ACCOUNTS

from .conftest import NO_RETRIES, assume_role, client_for, error_of


@pytest.fixture(scope="module")
def prod(demo_sim):
    """Clients into the prod demo account, configured only through AWS_ENDPOINT_URL."""
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_ENDPOINT_URL", demo_sim.endpoint_url)
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    patch.delenv("AWS_PROFILE", raising=False)
    account = next(a for a in demo_sim.demo_accounts() if a["name"] == "prod")
    creds = boto3.client("sts", region_name="us-east-1").assume_role(
        RoleArn=account["role_arn"], RoleSessionName="imdsweb", ExternalId=account["external_id"]
    )["Credentials"]
    session = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name="us-east-1",
    )
    yield session
    patch.undo()


def all_instances(ec2) -> list[dict]:
    pages = ec2.get_paginator("describe_instances").paginate(PaginationConfig={"PageSize": 100})
    return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]


def test_demo_accounts_are_listed(demo_sim):
    accounts = demo_sim.demo_accounts()
    assert [(a["account_id"], a["name"]) for a in accounts] == [
        ("111111111111", "prod"),
        ("222222222222", "staging"),
        ("333333333333", "sandbox"),
    ]
    assert accounts[0]["role_arn"] == "arn:aws:iam::111111111111:role/imdsweb-reader"
    assert accounts[0]["external_id"] == "imdsweb-demo"
    assert all(a["regions"] == ["us-east-1", "eu-west-1", "ap-southeast-2"] for a in accounts)
    assert sum(sum(a["instances_per_region"].values()) for a in accounts) == 1500
    assert "imdssim listening on http://127.0.0.1:" in demo_sim.output()


def test_external_id_is_required_for_prod(demo_sim):
    sts = client_for(demo_sim.endpoint_url, {}, "sts", "us-east-1")
    with pytest.raises(ClientError) as excinfo:
        sts.assume_role(RoleArn=DEMO_ACCOUNTS[0].role_arn, RoleSessionName="imdsweb")
    assert error_of(excinfo)[:2] == ("AccessDenied", 403)


def test_calls_land_in_the_assumed_account(prod):
    ec2 = prod.client("ec2", config=NO_RETRIES)
    instances = all_instances(ec2)
    assert len(instances) == DEMO_ACCOUNTS[0].instances_per_region["us-east-1"]
    reservations = ec2.describe_instances(MaxResults=5)["Reservations"]
    assert reservations[0]["OwnerId"] == "111111111111"
    assert len(all_instances(prod.client("ec2", region_name="ap-southeast-2"))) == 110


def test_fleet_has_a_mixed_posture(prod):
    instances = all_instances(prod.client("ec2", config=NO_RETRIES))
    options = [i["MetadataOptions"] for i in instances]
    states = Counter(i["State"]["Name"] for i in instances)
    assert Counter(o["HttpTokens"] for o in options)["optional"] > len(options) / 2
    assert Counter(o["HttpTokens"] for o in options)["required"] > 0
    assert {o["HttpPutResponseHopLimit"] for o in options} == {1, 2, 3}
    assert any(o["HttpEndpoint"] == "disabled" for o in options)
    assert any(o["InstanceMetadataTags"] == "enabled" for o in options)
    assert any(o["State"] == "pending" for o in options)
    assert 0.05 < states["stopped"] / len(instances) < 0.15
    assert states["terminated"] > 0
    names = {t["Value"] for i in instances for t in i.get("Tags", []) if t["Key"] == "Name"}
    assert "web-<script>alert(1)</script>" in names
    assert any(name.startswith("eks-node-") for name in names)
    assert all({"Team", "Env"} <= {t["Key"] for t in i["Tags"]} for i in instances)


def test_defaults_and_declarative_policy_are_seeded(demo_sim):
    sandbox = DEMO_ACCOUNTS[2]

    def ec2(account, region):
        credentials = assume_role(demo_sim.endpoint_url, account.role_arn, account.external_id)
        return client_for(demo_sim.endpoint_url, credentials, "ec2", region)

    prod_defaults = ec2(DEMO_ACCOUNTS[0], "us-east-1").get_instance_metadata_defaults()["AccountLevel"]
    assert prod_defaults == {"HttpTokens": "required", "HttpPutResponseHopLimit": 2, "ManagedBy": "account"}
    managed = ec2(sandbox, "ap-southeast-2").get_instance_metadata_defaults()["AccountLevel"]
    assert managed["ManagedBy"] == "declarative-policy"
    assert "declarative policy" in managed["ManagedExceptionMessage"]
    assert ec2(sandbox, "us-east-1").get_instance_metadata_defaults()["AccountLevel"] == {
        "ManagedBy": "account"
    }


def test_imdsv1_usage_is_in_cloudwatch(prod):
    instances = [i for i in all_instances(prod.client("ec2")) if i["State"]["Name"] == "running"]
    end = datetime.now(UTC)
    queries = [
        {
            "Id": f"q{n}",
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/EC2",
                    "MetricName": "MetadataNoToken",
                    "Dimensions": [{"Name": "InstanceId", "Value": instance["InstanceId"]}],
                },
                "Period": 86400,
                "Stat": "Sum",
            },
        }
        for n, instance in enumerate(instances[:200])
    ]
    results = prod.client("cloudwatch").get_metric_data(
        MetricDataQueries=queries, StartTime=end - timedelta(days=14), EndTime=end
    )["MetricDataResults"]
    with_calls = [r for r in results if sum(r["Values"]) > 0]
    assert 0 < len(with_calls) < len(results)
    assert all(len(r["Timestamps"]) == len(r["Values"]) for r in results)
    assert max(len(r["Values"]) for r in with_calls) >= 10


def test_launch_sources_are_seeded_in_mixed_posture(prod):
    ec2 = prod.client("ec2", config=NO_RETRIES)
    autoscaling = prod.client("autoscaling", config=NO_RETRIES)
    templates = {t["LaunchTemplateName"]: t for t in ec2.describe_launch_templates()["LaunchTemplates"]}
    assert {"web-prod", "api-prod", "batch-prod", "eks-prod-nodes", "cfn-prod-queue-workers"} <= set(templates)
    assert templates["web-prod"]["DefaultVersionNumber"] == 2 and templates["web-prod"]["LatestVersionNumber"] == 3
    eks_tags = {t["Key"] for t in templates["eks-prod-nodes"]["Tags"]}
    assert "eks:cluster-name" in eks_tags
    groups = {g["AutoScalingGroupName"]: g for g in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]}
    assert groups["batch-prod-asg"]["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]["Version"] == "1"
    assert groups["bastion-prod-asg"]["LaunchConfigurationName"] == "bastion-prod-lc"
    configs = autoscaling.describe_launch_configurations()["LaunchConfigurations"]
    assert configs[0]["MetadataOptions"]["HttpTokens"] == "optional"
    images = ec2.describe_images(Owners=["self"])["Images"]
    assert sorted(i.get("ImdsSupport", "") for i in images) == ["", "v2.0"]
    # The account default (required, hop limit 2) fills what web-prod v2 leaves unset.
    web_ids = [i["InstanceId"] for i in groups["web-prod-asg"]["Instances"]]
    reservations = ec2.describe_instances(InstanceIds=web_ids)["Reservations"]
    assert {i["MetadataOptions"]["HttpTokens"] for r in reservations for i in r["Instances"]} == {"required"}
