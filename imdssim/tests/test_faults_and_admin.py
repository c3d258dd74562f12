"""Fault injection knobs and the /_imdssim/ admin endpoint."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from botocore.exceptions import ClientError

from .conftest import DEFAULT_KNOBS, error_of


def test_throttle_rate_fails_calls_with_request_limit_exceeded(account, sim):
    _, client = account
    sim.configure(throttle_rate=1.0)
    with pytest.raises(ClientError) as excinfo:
        client("ec2").describe_instances()
    assert error_of(excinfo) == ("RequestLimitExceeded", 503, "Request limit exceeded.")
    assert sim.stats()["actions"]["DescribeInstances"] == {"calls": 1, "throttled": 1, "errors": 0}


def test_error_rate_fails_calls_with_internal_error(account, sim):
    _, client = account
    sim.configure(error_rate=1.0)
    with pytest.raises(ClientError) as excinfo:
        client("ec2").describe_instances()
    assert error_of(excinfo)[:2] == ("InternalError", 500)
    assert sim.stats()["actions"]["DescribeInstances"] == {"calls": 1, "throttled": 0, "errors": 1}


def test_latency_is_added_to_each_call(account, sim):
    _, client = account
    ec2 = client("ec2")
    ec2.describe_instances()  # warm up the connection and moto
    sim.configure(latency_ms=300)
    started = time.monotonic()
    ec2.describe_instances()
    assert time.monotonic() - started >= 0.3


def test_config_round_trip_and_validation(sim):
    assert sim.config() == DEFAULT_KNOBS
    assert sim.configure(apply_delay=1, error_rate=0.25)["error_rate"] == 0.25
    assert sim.config()["apply_delay"] == 1.0

    for bad in ({"error_rate": 2}, {"throttle": "yes"}, {"time_scale": 0}, {"bogus": 1}):
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            sim.configure(**bad)
        assert excinfo.value.code == 400
        assert "error" in json.loads(excinfo.value.read())


def test_health_stats_reset_and_unknown_paths(sim, account):
    _, client = account
    with urllib.request.urlopen(f"{sim.endpoint_url}/_imdssim/health") as response:
        assert response.status == 200
    client("ec2").describe_instances()
    assert sim.stats()["actions"]["DescribeInstances"]["calls"] == 1
    assert sim.reset_stats() == {"actions": {}, "modify_calls_by_instance": {}}
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(f"{sim.endpoint_url}/_imdssim/nope")
    assert excinfo.value.code == 404


def test_empty_simulator_has_no_demo_accounts(sim):
    assert sim.demo_accounts() == []
