"""IMDSv1 workloads: CloudWatch counts an instance's IMDSv1 calls as MetadataNoToken while it
allows IMDSv1 and as MetadataNoTokenRejected once it requires tokens, over HTTP like AWS."""

from __future__ import annotations

import json
import time
import urllib.error
from datetime import UTC, datetime, timedelta

import pytest

from .conftest import launch


def sums(cloudwatch, instance_id, start):
    queries = [
        {"Id": metric.lower(), "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": "AWS/EC2", "MetricName": metric,
                       "Dimensions": [{"Name": "InstanceId", "Value": instance_id}]},
            "Period": 60, "Stat": "Sum"}}
        for metric in ("MetadataNoToken", "MetadataNoTokenRejected")
    ]
    end = datetime.now(UTC) + timedelta(minutes=1)
    results = cloudwatch.get_metric_data(MetricDataQueries=queries, StartTime=start, EndTime=end)
    return {r["Id"]: sum(r["Values"]) for r in results["MetricDataResults"]}


def test_v1_calls_count_as_no_token_then_as_rejected_after_tokens_are_required(account, sim):
    account_id, client = account
    ec2, cloudwatch = client("ec2"), client("cloudwatch")
    [calling, quiet] = launch(ec2, count=2, MetadataOptions={"HttpTokens": "optional"})
    start = datetime.now(UTC) - timedelta(minutes=1)
    sim.configure(time_scale=60)  # a simulated minute a second
    sim.set_workload(account_id, "us-east-1", [calling], calls_per_minute=10)

    time.sleep(1.2)
    before = sums(cloudwatch, calling, start)
    assert before["metadatanotoken"] >= 10 and before["metadatanotokenrejected"] == 0

    ec2.modify_instance_metadata_options(InstanceId=calling, HttpTokens="required")
    ec2.modify_instance_metadata_options(InstanceId=quiet, HttpTokens="required")
    time.sleep(1.2)
    after = sums(cloudwatch, calling, start)
    assert after["metadatanotokenrejected"] >= 10
    assert after["metadatanotoken"] - before["metadatanotoken"] < 10  # at most the calls made before the change
    assert sums(cloudwatch, quiet, start) == {"metadatanotoken": 0, "metadatanotokenrejected": 0}

    # A stopped instance makes no calls; removing the workload stops them too.
    ec2.stop_instances(InstanceIds=[calling])
    stopped = sums(cloudwatch, calling, start)
    time.sleep(1.1)
    assert sums(cloudwatch, calling, start) == stopped
    sim.set_workload(account_id, "us-east-1", [calling], calls_per_minute=0)
    assert all(w["instance_id"] != calling for w in sim._request("GET", "/workload"))


@pytest.mark.parametrize("body, message", [
    ({"region": "us-east-1", "instance_ids": ["i-1"]}, "account_id and region"),
    ({"account_id": "1", "region": "us-east-1", "instance_ids": []}, "non-empty list"),
    ({"account_id": "1", "region": "us-east-1", "instance_ids": ["i-1"], "calls_per_minute": -1}, "number >= 0"),
    ({"account_id": "444400000001", "region": "us-east-1", "instance_ids": ["i-00000000"]}, "no such instance"),
])
def test_bad_workload_requests_are_refused_with_a_reason(sim, body, message):
    with pytest.raises(urllib.error.HTTPError) as exc:
        sim._request("POST", "/workload", body)
    assert exc.value.code == 400
    assert message in json.loads(exc.value.read())["error"]
