"""Token-bucket throttling per account, region and action, and the runtime knobs around it."""

from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError

from .conftest import error_of, launch


def test_metadata_defaults_bucket_holds_two_calls(account, sim):
    account_id, client = account
    ec2 = client("ec2")
    sim.reset_stats()

    ec2.modify_instance_metadata_defaults(HttpTokens="required")
    ec2.modify_instance_metadata_defaults(HttpTokens="required")
    with pytest.raises(ClientError) as excinfo:
        ec2.modify_instance_metadata_defaults(HttpTokens="required")

    assert error_of(excinfo) == ("RequestLimitExceeded", 503, "Request limit exceeded.")
    # Buckets are per region and per action.
    client("ec2", "eu-west-1").modify_instance_metadata_defaults(HttpTokens="required")
    ec2.get_instance_metadata_defaults()
    counters = sim.stats()["actions"]["ModifyInstanceMetadataDefaults"]
    assert counters == {"calls": 4, "throttled": 1, "errors": 0}
    # The bucket refills at 2 per second.
    time.sleep(0.6)
    ec2.modify_instance_metadata_defaults(HttpTokens="required")


def test_instance_options_bucket_of_100_and_time_scale(account, sim):
    _, client = account
    ec2 = client("ec2")
    [instance_id] = launch(ec2)
    # Practically no refill while the burst runs, so exactly the bucket size gets through.
    sim.configure(time_scale=0.001)
    sim.reset_stats()

    outcomes = []
    for _ in range(101):
        try:
            ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="required")
            outcomes.append("ok")
        except ClientError as exc:
            outcomes.append(exc.response["Error"]["Code"])

    assert outcomes == ["ok"] * 100 + ["RequestLimitExceeded"]
    stats = sim.stats()
    assert stats["actions"]["ModifyInstanceMetadataOptions"]["throttled"] == 1
    assert stats["modify_calls_by_instance"] == {instance_id: 100}

    # 1000 times faster refill: 5,000 tokens a second.
    sim.configure(time_scale=1000)
    time.sleep(0.05)
    ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpTokens="required")


def test_no_throttle_switch(account, sim):
    _, client = account
    ec2 = client("ec2")
    sim.configure(throttle=False)
    for _ in range(6):
        ec2.modify_instance_metadata_defaults(HttpTokens="required")
    assert sim.stats()["actions"]["ModifyInstanceMetadataDefaults"]["throttled"] == 0


def test_sts_and_cloudwatch_are_not_throttled(account, sim):
    _, client = account
    sim.configure(throttle_rate=1.0)
    cloudwatch = client("cloudwatch")
    for _ in range(3):
        cloudwatch.list_metrics(Namespace="AWS/EC2")
    assert sim.stats()["actions"] == {}
