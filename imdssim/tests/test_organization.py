"""The seeded organization over HTTP: Organizations, DescribeRegions opt-in, broken roles."""

from __future__ import annotations

import urllib.error

import pytest
from botocore.exceptions import ClientError

from imdssim.organization import DEFAULT_REGIONS, OPT_IN_REGIONS
from imdssim.testing import SimulatorProcess

from .conftest import assume_role, client_for, error_of, launch

MEMBERS = 12


@pytest.fixture(scope="module")
def org_sim():
    with SimulatorProcess(apply_delay=0.5, extra_args=("--seed-org", str(MEMBERS), "--org-instances", "1")) as sim:
        yield sim


def _management(org_sim, service="organizations"):
    org = org_sim.organization()
    creds = assume_role(org_sim.endpoint_url, org["management_role_arn"])
    return client_for(org_sim.endpoint_url, creds, service, "us-east-1")


def _member(org_sim, account_id, service="ec2", region="us-east-1"):
    creds = assume_role(org_sim.endpoint_url, f"arn:aws:iam::{account_id}:role/imdsweb-reader")
    return client_for(org_sim.endpoint_url, creds, service, region)


def test_list_accounts_pages_through_every_member_with_status(org_sim):
    orgs = _management(org_sim)
    pages = list(orgs.get_paginator("list_accounts").paginate(PaginationConfig={"PageSize": 5}))
    assert len(pages) == 3  # 13 accounts (management + 12) in pages of 5
    accounts = [a for page in pages for a in page["Accounts"]]
    assert len({a["Id"] for a in accounts}) == MEMBERS + 1
    by_id = {a["Id"]: a for a in accounts}
    assert by_id["900000000000"]["Name"] == "management"
    assert by_id["500000000001"]["Status"] == "SUSPENDED"
    assert {a["Status"] for a in accounts if a["Id"] != "500000000001"} == {"ACTIVE"}


def test_nested_ou_path_through_list_parents_and_describe(org_sim):
    orgs = _management(org_sim)
    org = org_sim.organization()
    member = next(a for a in org["accounts"] if a["ou_path"] == "Workloads/NonProd/Dev")
    path, child = [], member["account_id"]
    while True:
        parent = orgs.list_parents(ChildId=child)["Parents"][0]
        if parent["Type"] == "ROOT":
            break
        path.append(orgs.describe_organizational_unit(OrganizationalUnitId=parent["Id"])["OrganizationalUnit"]["Name"])
        child = parent["Id"]
    assert "/".join(reversed(path)) == "Workloads/NonProd/Dev"
    root = orgs.list_roots()["Roots"][0]["Id"]
    top = {ou["Name"] for ou in orgs.list_organizational_units_for_parent(ParentId=root)["OrganizationalUnits"]}
    assert top == {"Workloads", "Security", "Sandbox"}


def test_move_account_is_seen_by_list_parents(org_sim):
    orgs = _management(org_sim)
    org = org_sim.organization()
    ou_ids = org["ou_ids"]
    member = next(a for a in org["accounts"] if a["ou_path"] == "Sandbox")
    orgs.move_account(AccountId=member["account_id"], SourceParentId=ou_ids["Sandbox"],
                      DestinationParentId=ou_ids["Security"])
    assert orgs.list_parents(ChildId=member["account_id"])["Parents"][0]["Id"] == ou_ids["Security"]
    orgs.move_account(AccountId=member["account_id"], SourceParentId=ou_ids["Security"],
                      DestinationParentId=ou_ids["Sandbox"])


def test_describe_regions_lists_enabled_regions_and_opt_in_status(org_sim):
    # Member 5 opted in to af-south-1 (every fifth), member 4 to nothing.
    ec2 = _member(org_sim, "500000000005")
    enabled = {r["RegionName"]: r["OptInStatus"] for r in ec2.describe_regions()["Regions"]}
    assert enabled == {**dict.fromkeys(DEFAULT_REGIONS, "opt-in-not-required"), "af-south-1": "opted-in"}
    everything = {r["RegionName"]: r["OptInStatus"] for r in ec2.describe_regions(AllRegions=True)["Regions"]}
    assert len(everything) == len(DEFAULT_REGIONS) + len(OPT_IN_REGIONS)
    assert everything["me-south-1"] == "not-opted-in"
    assert everything["af-south-1"] == "opted-in"

    other = _member(org_sim, "500000000004")
    assert "af-south-1" not in {r["RegionName"] for r in other.describe_regions()["Regions"]}
    filtered = other.describe_regions(
        AllRegions=True, Filters=[{"Name": "opt-in-status", "Values": ["opted-in", "opt-in-not-required"]}]
    )["Regions"]
    assert {r["RegionName"] for r in filtered} == set(DEFAULT_REGIONS)
    named = other.describe_regions(RegionNames=["eu-west-1"])["Regions"]
    assert named == [{"RegionName": "eu-west-1", "Endpoint": "ec2.eu-west-1.amazonaws.com",
                      "OptInStatus": "opt-in-not-required"}]
    with pytest.raises(ClientError) as excinfo:
        other.describe_regions(RegionNames=["xx-nowhere-1"])
    assert error_of(excinfo)[:2] == ("InvalidParameterValue", 400)


def test_opting_in_through_the_admin_endpoint(org_sim):
    ec2 = _member(org_sim, "500000000006")
    org_sim.set_region("500000000006", "me-south-1")
    assert "me-south-1" in {r["RegionName"] for r in ec2.describe_regions()["Regions"]}
    org_sim.set_region("500000000006", "me-south-1", opted_in=False)
    assert "me-south-1" not in {r["RegionName"] for r in ec2.describe_regions()["Regions"]}
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        org_sim.set_region("500000000006", "us-east-1")
    assert excinfo.value.code == 400


def test_missing_role_and_suspended_account_refuse_assume_role(org_sim):
    for account_id in ("500000000002", "500000000001"):
        with pytest.raises(ClientError) as excinfo:
            assume_role(org_sim.endpoint_url, f"arn:aws:iam::{account_id}:role/imdsweb-reader")
        code, status, message = error_of(excinfo)
        assert (code, status) == ("AccessDenied", 403)
        assert f"sts:AssumeRole on resource: arn:aws:iam::{account_id}:role/imdsweb-reader" in message


def test_read_only_role_reads_but_every_write_is_unauthorized_dry_run_included(org_sim):
    ec2 = _member(org_sim, "500000000003")
    instance_id = ec2.describe_instances()["Reservations"][0]["Instances"][0]["InstanceId"]
    assert ec2.get_instance_metadata_defaults()["AccountLevel"]["ManagedBy"] == "account"
    for dry_run in (True, False):
        with pytest.raises(ClientError) as excinfo:
            ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="required", DryRun=dry_run)
        code, status, message = error_of(excinfo)
        assert (code, status) == ("UnauthorizedOperation", 403)
        assert "ec2:ModifyInstanceMetadataOptions" in message
        with pytest.raises(ClientError) as excinfo:
            ec2.modify_instance_metadata_defaults(HttpTokens="required", DryRun=dry_run)
        assert error_of(excinfo)[0] == "UnauthorizedOperation"

    full = _member(org_sim, "500000000004")
    with pytest.raises(ClientError) as excinfo:
        full.modify_instance_metadata_defaults(HttpTokens="required", DryRun=True)
    assert error_of(excinfo)[0] == "DryRunOperation"


def test_role_access_can_be_changed_at_runtime(org_sim):
    org_sim.set_role("500000000008", "missing")
    with pytest.raises(ClientError):
        assume_role(org_sim.endpoint_url, "arn:aws:iam::500000000008:role/imdsweb-reader")
    org_sim.set_role("500000000008", "full")
    ec2 = _member(org_sim, "500000000008")
    launch(ec2)
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        org_sim.set_role("500000000008", "admin")
    assert excinfo.value.code == 400
