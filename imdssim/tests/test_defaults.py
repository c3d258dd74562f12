"""Get/ModifyInstanceMetadataDefaults per account and region, declarative policies, launches."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from .conftest import error_of, launch, metadata_options


def test_nothing_set_reads_as_account_managed_and_empty(account):
    _, client = account
    assert client("ec2").get_instance_metadata_defaults()["AccountLevel"] == {"ManagedBy": "account"}


def test_modify_then_clear_with_no_preference(account, unthrottled):
    _, client = account
    ec2 = client("ec2")

    assert (
        ec2.modify_instance_metadata_defaults(HttpTokens="required", HttpPutResponseHopLimit=2)["Return"]
        is True
    )
    ec2.modify_instance_metadata_defaults(InstanceMetadataTags="enabled")
    assert ec2.get_instance_metadata_defaults()["AccountLevel"] == {
        "HttpTokens": "required",
        "HttpPutResponseHopLimit": 2,
        "InstanceMetadataTags": "enabled",
        "ManagedBy": "account",
    }

    ec2.modify_instance_metadata_defaults(HttpTokens="no-preference", HttpPutResponseHopLimit=-1)
    assert ec2.get_instance_metadata_defaults()["AccountLevel"] == {
        "InstanceMetadataTags": "enabled",
        "ManagedBy": "account",
    }


def test_defaults_are_per_region(account):
    _, client = account
    client("ec2", "eu-west-1").modify_instance_metadata_defaults(HttpTokens="required")
    assert "HttpTokens" not in client("ec2", "us-east-1").get_instance_metadata_defaults()["AccountLevel"]
    assert (
        client("ec2", "eu-west-1").get_instance_metadata_defaults()["AccountLevel"]["HttpTokens"]
        == "required"
    )


@pytest.mark.parametrize(
    "params",
    [
        {"HttpTokens": "bogus"},
        {"HttpEndpoint": "optional"},
        {"InstanceMetadataTags": "maybe"},
        {"HttpPutResponseHopLimit": 0},
        {"HttpPutResponseHopLimit": 65},
    ],
)
def test_invalid_values_are_rejected(account, params):
    _, client = account
    ec2 = client("ec2")
    with pytest.raises(ClientError) as excinfo:
        ec2.modify_instance_metadata_defaults(**params)
    assert error_of(excinfo)[:2] == ("InvalidParameterValue", 400)
    assert ec2.get_instance_metadata_defaults()["AccountLevel"] == {"ManagedBy": "account"}


def test_dry_run_changes_nothing(account):
    _, client = account
    ec2 = client("ec2")
    with pytest.raises(ClientError) as excinfo:
        ec2.modify_instance_metadata_defaults(HttpTokens="required", DryRun=True)
    assert error_of(excinfo)[0] == "DryRunOperation"
    assert ec2.get_instance_metadata_defaults()["AccountLevel"] == {"ManagedBy": "account"}


def test_declarative_policy_makes_defaults_read_only(account, unthrottled):
    sim = unthrottled
    account_id, client = account
    ec2 = client("ec2", "ap-southeast-2")
    ec2.modify_instance_metadata_defaults(HttpTokens="required")

    sim.set_policy(account_id, "ap-southeast-2", managed=True, message="Managed by policy imdsv2-only.")

    assert ec2.get_instance_metadata_defaults()["AccountLevel"] == {
        "HttpTokens": "required",
        "ManagedBy": "declarative-policy",
        "ManagedExceptionMessage": "Managed by policy imdsv2-only.",
    }
    with pytest.raises(ClientError) as excinfo:
        ec2.modify_instance_metadata_defaults(HttpTokens="optional")
    code, _, message = error_of(excinfo)
    assert code == "UnauthorizedOperation"
    assert "declarative policy" in message and "Managed by policy imdsv2-only." in message
    # Other regions of the same account are not affected.
    assert (
        client("ec2", "us-east-1").modify_instance_metadata_defaults(HttpTokens="optional")["Return"] is True
    )

    sim.set_policy(account_id, "ap-southeast-2", managed=False)
    assert ec2.modify_instance_metadata_defaults(HttpTokens="optional")["Return"] is True
    assert ec2.get_instance_metadata_defaults()["AccountLevel"]["ManagedBy"] == "account"


def test_new_instances_take_the_defaults_existing_ones_keep_theirs(account):
    _, client = account
    ec2 = client("ec2")
    [before] = launch(ec2)
    ec2.modify_instance_metadata_defaults(HttpTokens="required", HttpPutResponseHopLimit=2)

    [plain] = launch(ec2)
    [explicit] = launch(ec2, MetadataOptions={"HttpTokens": "optional"})

    assert metadata_options(ec2, before)["HttpTokens"] == "optional"
    assert metadata_options(ec2, plain)["HttpTokens"] == "required"
    assert metadata_options(ec2, plain)["HttpPutResponseHopLimit"] == 2
    assert metadata_options(ec2, explicit)["HttpTokens"] == "optional"
    assert metadata_options(ec2, explicit)["HttpPutResponseHopLimit"] == 2
