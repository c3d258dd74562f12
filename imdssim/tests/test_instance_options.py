"""ModifyInstanceMetadataOptions and DescribeInstances MetadataOptions, as EC2 behaves."""

from __future__ import annotations

import json
import time
import urllib.error

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from .conftest import APPLY_DELAY, error_of, launch, metadata_options


def test_unsent_settings_keep_their_value(account):
    _, client = account
    ec2 = client("ec2")
    [instance_id] = launch(
        ec2,
        MetadataOptions={
            "HttpPutResponseHopLimit": 2,
            "HttpEndpoint": "enabled",
            "InstanceMetadataTags": "enabled",
        },
    )

    response = ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="required")

    assert response["InstanceId"] == instance_id
    assert response["InstanceMetadataOptions"] == {
        "State": "pending",
        "HttpTokens": "required",
        "HttpPutResponseHopLimit": 2,
        "HttpEndpoint": "enabled",
        "HttpProtocolIpv6": "disabled",
        "InstanceMetadataTags": "enabled",
    }
    options = metadata_options(ec2, instance_id)
    assert (options["HttpTokens"], options["HttpPutResponseHopLimit"], options["InstanceMetadataTags"]) == (
        "required",
        2,
        "enabled",
    )


@pytest.mark.parametrize(
    "params",
    [
        {"HttpPutResponseHopLimit": 0},
        {"HttpPutResponseHopLimit": 65},
        {"HttpTokens": "bogus"},
        {"HttpEndpoint": "maybe"},
        {"HttpProtocolIpv6": "on"},
        {"InstanceMetadataTags": "yes"},
    ],
)
def test_invalid_values_are_rejected(account, params):
    _, client = account
    ec2 = client("ec2")
    [instance_id] = launch(ec2)

    with pytest.raises(ClientError) as excinfo:
        ec2.modify_instance_metadata_options(InstanceId=instance_id, **params)

    code, status, message = error_of(excinfo)
    assert (code, status) == ("InvalidParameterValue", 400)
    assert next(iter(params)) in message
    assert metadata_options(ec2, instance_id)["State"] == "applied"


def test_non_integer_hop_limit_is_rejected(account):
    _, client = account
    # botocore would refuse the string itself; switch its validation off to reach the server.
    ec2 = client("ec2", config=Config(parameter_validation=False, retries={"total_max_attempts": 1}))
    [instance_id] = launch(ec2)

    with pytest.raises(ClientError) as excinfo:
        ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpPutResponseHopLimit="two")

    assert error_of(excinfo)[:2] == ("InvalidParameterValue", 400)


def test_dry_run_changes_nothing(account, sim):
    _, client = account
    ec2 = client("ec2")
    [instance_id] = launch(ec2)

    with pytest.raises(ClientError) as excinfo:
        ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="required", DryRun=True)

    code, _, message = error_of(excinfo)
    assert code == "DryRunOperation"
    assert message == "Request would have succeeded, but DryRun flag is set."
    assert metadata_options(ec2, instance_id)["HttpTokens"] == "optional"
    assert instance_id not in sim.stats()["modify_calls_by_instance"]


def test_unknown_instance_is_not_found(account):
    _, client = account
    with pytest.raises(ClientError) as excinfo:
        client("ec2").modify_instance_metadata_options(
            InstanceId="i-0123456789abcdef0", HttpTokens="required"
        )
    assert error_of(excinfo)[0] == "InvalidInstanceID.NotFound"


def test_running_instance_is_pending_then_applied(account, sim):
    _, client = account
    ec2 = client("ec2")
    [instance_id, other_id] = launch(ec2, count=2)

    ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="required")

    assert metadata_options(ec2, instance_id)["State"] == "pending"
    pending = ec2.describe_instances(Filters=[{"Name": "metadata-options.state", "Values": ["pending"]}])
    assert [i["InstanceId"] for r in pending["Reservations"] for i in r["Instances"]] == [instance_id]
    time.sleep(APPLY_DELAY + 0.2)
    assert metadata_options(ec2, instance_id)["State"] == "applied"
    assert metadata_options(ec2, other_id)["State"] == "applied"
    assert sim.stats()["modify_calls_by_instance"] == {instance_id: 1}


def test_stopped_instance_stays_pending_until_started(account):
    _, client = account
    ec2 = client("ec2")
    [instance_id] = launch(ec2)
    ec2.stop_instances(InstanceIds=[instance_id])

    response = ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpPutResponseHopLimit=3)

    assert response["InstanceMetadataOptions"]["State"] == "pending"
    time.sleep(APPLY_DELAY + 0.2)
    assert metadata_options(ec2, instance_id) == {
        "State": "pending",
        "HttpTokens": "optional",
        "HttpPutResponseHopLimit": 3,
        "HttpEndpoint": "enabled",
        "HttpProtocolIpv6": "disabled",
        "InstanceMetadataTags": "disabled",
    }
    ec2.start_instances(InstanceIds=[instance_id])
    assert metadata_options(ec2, instance_id)["State"] == "pending"
    time.sleep(APPLY_DELAY + 0.2)
    assert metadata_options(ec2, instance_id)["State"] == "applied"


def test_metadata_option_filters(account):
    _, client = account
    ec2 = client("ec2")
    [v1_id] = launch(ec2, MetadataOptions={"HttpPutResponseHopLimit": 3})
    [v2_id] = launch(ec2, MetadataOptions={"HttpTokens": "required"})

    def ids(name, value):
        response = ec2.describe_instances(Filters=[{"Name": name, "Values": [value]}])
        return {i["InstanceId"] for r in response["Reservations"] for i in r["Instances"]}

    assert ids("metadata-options.http-tokens", "required") == {v2_id}
    assert ids("metadata-options.http-put-response-hop-limit", "3") == {v1_id}
    assert ids("metadata-options.state", "applied") == {v1_id, v2_id}


def test_describe_can_leave_members_out_until_a_modify_sends_them(account, sim):
    account_id, client = account
    ec2 = client("ec2")
    first, second = launch(ec2, count=2)

    sim.omit_options(account_id, "us-east-1", [first], ["HttpTokens", "HttpProtocolIpv6", "InstanceMetadataTags"])

    assert metadata_options(ec2, first) == {"State": "applied", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled"}
    assert set(metadata_options(ec2, second)) == {
        "State", "HttpTokens", "HttpPutResponseHopLimit", "HttpEndpoint", "HttpProtocolIpv6", "InstanceMetadataTags"
    }
    optional = ec2.describe_instances(Filters=[{"Name": "metadata-options.http-tokens", "Values": ["optional"]}])
    assert [i["InstanceId"] for r in optional["Reservations"] for i in r["Instances"]] == [second]
    ec2.modify_instance_metadata_options(InstanceId=first, HttpTokens="required")
    assert metadata_options(ec2, first)["HttpTokens"] == "required"
    assert "InstanceMetadataTags" not in metadata_options(ec2, first)  # unsent: still as it was


def test_omit_refuses_unknown_members_and_instances(account, sim):
    account_id, client = account
    [instance_id] = launch(client("ec2"))
    for body, message in [
        ((account_id, "us-east-1", [instance_id], ["HttpBogus"]), "unknown MetadataOptions member"),
        ((account_id, "us-east-1", ["i-0123456789abcdef0"], ["HttpTokens"]), "no instance"),
        ((account_id, "us-east-1", [], ["HttpTokens"]), "non-empty list"),
    ]:
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            sim.omit_options(*body)
        assert excinfo.value.code == 400
        assert message in json.loads(excinfo.value.read())["error"]


def test_describe_returns_the_context_aws_returns(account):
    """PlatformDetails (which moto leaves out) on every instance, beside moto's network fields."""
    _, client = account
    ec2 = client("ec2")
    [instance_id] = launch(ec2)
    [instance] = [i for r in ec2.describe_instances(InstanceIds=[instance_id])["Reservations"] for i in r["Instances"]]

    assert instance["PlatformDetails"] == "Linux/UNIX"
    assert instance["VpcId"].startswith("vpc-") and instance["SubnetId"].startswith("subnet-")
    assert instance["PrivateIpAddress"] and instance["InstanceType"] and instance["LaunchTime"]
