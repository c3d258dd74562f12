"""A restarted simulator is the same AWS: the same demo fleet ids, and the changes made through the
API (``--state-file``) are still there. Each start is a real ``python -m imdssim`` over HTTP."""

from __future__ import annotations

import hashlib
import json

import pytest

from imdssim.seed import DEMO_ACCOUNTS
from imdssim.testing import SimulatorProcess

from .conftest import assume_role, client_for, metadata_options

PROD, STAGING, SANDBOX = DEMO_ACCOUNTS
pytestmark = pytest.mark.slow


def ec2(sim, account, region):
    credentials = assume_role(sim.endpoint_url, account.role_arn, account.external_id)
    return client_for(sim.endpoint_url, credentials, "ec2", region)


def fleet(sim) -> dict[tuple[str, str, str], dict]:
    """Every demo instance: (account, region, id) -> what a sync would read of it."""
    found = {}
    for account in DEMO_ACCOUNTS:
        for region in account.instances_per_region:
            pages = ec2(sim, account, region).get_paginator("describe_instances").paginate()
            for page in pages:
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        found[(account.account_id, region, instance["InstanceId"])] = {
                            "state": instance["State"]["Name"],
                            "launch_time": instance["LaunchTime"],
                            "options": instance["MetadataOptions"],
                            "group": next((tag["Value"] for tag in instance.get("Tags", [])
                                           if tag["Key"] == "aws:autoscaling:groupName"), None),
                        }
    return found


def pick(instances, account, region, state, **options):
    return next(
        key[2] for key, seen in sorted(instances.items())
        if key[:2] == (account.account_id, region) and seen["state"] == state
        and seen["options"]["State"] == "applied"
        and all(seen["options"][name] == value for name, value in options.items())
    )


def defaults(sim, account, region):
    return ec2(sim, account, region).get_instance_metadata_defaults()["AccountLevel"]


def test_a_restart_keeps_the_fleet_and_the_changes(tmp_path):
    state_file = tmp_path / "imdssim-state.jsonl"
    args = ("--state-file", str(state_file))
    with SimulatorProcess(seed_demo=True, apply_delay=0.2, throttle=False, extra_args=args) as sim:
        before = fleet(sim)
        prod = ec2(sim, PROD, "us-east-1")
        running = pick(before, PROD, "us-east-1", "running", HttpTokens="optional", HttpPutResponseHopLimit=1)
        stopped = pick(before, PROD, "us-east-1", "stopped", HttpTokens="optional")
        # Outside the Auto Scaling groups: a group replaces an instance terminated under it with a fresh
        # launch (as in AWS), and launches after start-up are not kept across a restart.
        to_stop, to_terminate = [
            key[2] for key, seen in sorted(before.items())
            if key[:2] == (PROD.account_id, "us-east-1") and seen["state"] == "running" and key[2] != running
            and seen["group"] is None
        ][:2]
        prod.modify_instance_metadata_options(InstanceId=running, HttpTokens="required", HttpPutResponseHopLimit=2)
        prod.modify_instance_metadata_options(InstanceId=running, InstanceMetadataTags="enabled")
        prod.modify_instance_metadata_options(InstanceId=stopped, HttpTokens="required")
        prod.stop_instances(InstanceIds=[to_stop])
        prod.terminate_instances(InstanceIds=[to_terminate])
        ec2(sim, PROD, "eu-west-1").modify_instance_metadata_defaults(HttpTokens="required", HttpPutResponseHopLimit=3)
        ec2(sim, PROD, "us-east-1").modify_instance_metadata_defaults(HttpPutResponseHopLimit=-1)
        sim.set_policy(STAGING.account_id, "us-east-1", managed=True, message="platform team owns this")
        sim.set_policy(SANDBOX.account_id, "ap-southeast-2", managed=False)
        launched = ec2(sim, STAGING, "eu-west-1").run_instances(
            ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        assert launched not in {key[2] for key in before}
        changed = {key: fleet_entry for key, fleet_entry in fleet(sim).items() if key[2] != launched}
        changed_defaults = {(a.account_id, r): defaults(sim, a, r) for a in DEMO_ACCOUNTS for r in a.instances_per_region}
    assert metadata_options_of(changed, running) | {"State": "applied"} == {
        "State": "applied", "HttpTokens": "required", "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled",
        "HttpProtocolIpv6": "disabled", "InstanceMetadataTags": "enabled",
    }

    with SimulatorProcess(seed_demo=True, apply_delay=0.2, throttle=False, extra_args=args) as again:
        assert f"state file {state_file}: 9 changes replayed" in again.output()
        # Compacted at start: one line per thing changed, however many calls changed it.
        lines = [json.loads(line) for line in state_file.read_text().splitlines()]
        assert lines[0]["kind"] == "header"
        things = [(line["kind"], line["account_id"], line["region"], line.get("instance_id")) for line in lines[1:]]
        assert len(things) == len(set(things)) == 8  # the two modifies of one instance are one line
        assert ("instance_options", PROD.account_id, "us-east-1", running) in things
        after = fleet(again)
        # The same instances, with what the API did to them: ids, states, options, launch times.
        assert set(after) == set(before)
        assert without_state(after) == without_state(changed)
        # The seed's changes in flight count from the first start; a restart never makes one pending again.
        assert {key for key, seen in after.items() if seen["options"]["State"] == "pending"} \
            <= {key for key, seen in changed.items() if seen["options"]["State"] == "pending"}
        assert after[(PROD.account_id, "us-east-1", running)]["options"]["State"] == "applied"
        assert after[(PROD.account_id, "us-east-1", stopped)]["options"]["State"] == "pending"  # waits for start
        assert after[(PROD.account_id, "us-east-1", to_stop)]["state"] == "stopped"
        assert after[(PROD.account_id, "us-east-1", to_terminate)]["state"] == "terminated"
        assert {(a.account_id, r): defaults(again, a, r) for a in DEMO_ACCOUNTS for r in a.instances_per_region} \
            == changed_defaults
        assert changed_defaults[(PROD.account_id, "eu-west-1")] == {
            "HttpTokens": "required", "HttpPutResponseHopLimit": 3, "ManagedBy": "account"}
        assert changed_defaults[(STAGING.account_id, "us-east-1")]["ManagedExceptionMessage"] == "platform team owns this"
        assert changed_defaults[(SANDBOX.account_id, "ap-southeast-2")]["ManagedBy"] == "account"

        # Only the demo fleet is fixed: later launches get fresh ids, as in EC2.
        launched_again = ec2(again, STAGING, "eu-west-1").run_instances(
            ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        assert launched_again != launched and launched_again not in {key[2] for key in before}

        # A change waiting for the start still applies when the instance starts.
        prod = ec2(again, PROD, "us-east-1")
        prod.start_instances(InstanceIds=[stopped])
        assert metadata_options(prod, stopped)["HttpTokens"] == "required"

    lines = [json.loads(line) for line in state_file.read_text().splitlines()]
    assert lines[-1] | {"kind": "instance_state", "instance_id": stopped, "state": "running"} == lines[-1]


def without_state(instances):
    return {key: seen | {"options": seen["options"] | {"State": None}} for key, seen in instances.items()}


def metadata_options_of(instances, instance_id):
    return next(seen["options"] for key, seen in instances.items() if key[2] == instance_id)


def test_a_state_file_of_another_fleet_is_set_aside(tmp_path):
    state_file = tmp_path / "state.jsonl"
    state_file.write_text(json.dumps({"kind": "header", "version": 1, "fleet": "another", "created_at":
                                      "2026-01-01T00:00:00+00:00"}) + "\n" + '{"kind": "defaults"}\n')
    with SimulatorProcess(extra_args=("--state-file", str(state_file))) as sim:
        assert "set aside" in sim.output()
    assert (tmp_path / "state.jsonl.stale").exists()
    assert [json.loads(line)["kind"] for line in state_file.read_text().splitlines()] == ["header"]


def test_a_line_cut_short_is_skipped_and_the_rest_replayed(tmp_path):
    """A killed simulator may leave half a line: the whole lines before it still count."""
    state_file = tmp_path / "state.jsonl"
    empty_fleet = hashlib.sha256(b"").hexdigest()  # no --seed-demo: no instances before replay
    state_file.write_text(
        json.dumps({"kind": "header", "version": 1, "fleet": empty_fleet, "created_at": "2026-01-01T00:00:00+00:00"})
        + "\n" + json.dumps({"kind": "defaults", "account_id": "444400000099", "region": "eu-west-1",
                             "settings": {"HttpTokens": "required"}})
        + "\n" + '{"kind": "defaults", "account_id": "4444'
    )
    with SimulatorProcess(extra_args=("--state-file", str(state_file))) as sim:
        assert f"state file {state_file}: 1 change replayed" in sim.output()
        assert "line 3 is not JSON, ignored" in sim.output()
        credentials = assume_role(sim.endpoint_url, "arn:aws:iam::444400000099:role/imdsweb-reader")
        level = client_for(sim.endpoint_url, credentials, "ec2", "eu-west-1").get_instance_metadata_defaults()
        assert level["AccountLevel"] == {"HttpTokens": "required", "ManagedBy": "account"}
    assert len(state_file.read_text().splitlines()) == 2  # compacted without the broken line
