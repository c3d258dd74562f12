"""Fixtures: one simulator subprocess per test session, reached over HTTP with boto3.

``sim`` is an empty simulator (fast start); each test isolates itself by launching its own
instances or by assuming a role into an account of its own. ``demo_sim`` has the seeded fleet.
Knobs are put back to the session's values after every test that used ``sim``.
"""

from __future__ import annotations

import itertools

import boto3
import pytest
from botocore.config import Config

from imdssim.testing import SimulatorProcess

APPLY_DELAY = 0.5
DEFAULT_KNOBS = {
    "apply_delay": APPLY_DELAY,
    "throttle": True,
    "time_scale": 1.0,
    "throttle_rate": 0.0,
    "error_rate": 0.0,
    "latency_ms": 0.0,
}
# No client-side retries: the tests look at each answer the simulator gives, throttles included.
NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})
_account_ids = (f"4444{n:08d}" for n in itertools.count(1))


@pytest.fixture(scope="session")
def sim_process():
    with SimulatorProcess(apply_delay=APPLY_DELAY) as process:
        yield process


@pytest.fixture
def sim(sim_process):
    yield sim_process
    sim_process.configure(**DEFAULT_KNOBS)
    sim_process.reset_stats()


@pytest.fixture(scope="session")
def demo_sim():
    with SimulatorProcess(seed_demo=True, apply_delay=APPLY_DELAY) as process:
        yield process


def base_session(region: str = "us-east-1") -> boto3.Session:
    return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region)


def assumed_session(endpoint_url: str, role_arn: str, region: str = "us-east-1", external_id=None):
    """What the product does: dummy base credentials, then sts:AssumeRole into the account."""
    kwargs = {"ExternalId": external_id} if external_id else {}
    sts = base_session(region).client("sts", endpoint_url=endpoint_url)
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="imdssim-tests", **kwargs)["Credentials"]
    return boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=region,
    )


@pytest.fixture
def account(sim):
    """A fresh account of this test's own: ``(account_id, client_factory(service, region))``."""
    account_id = next(_account_ids)
    role_arn = f"arn:aws:iam::{account_id}:role/imdsweb-reader"
    sessions: dict[str, boto3.Session] = {}

    def client(service: str, region: str = "us-east-1", config: Config = NO_RETRIES):
        if region not in sessions:
            sessions[region] = assumed_session(sim.endpoint_url, role_arn, region)
        return sessions[region].client(service, endpoint_url=sim.endpoint_url, config=config)

    return account_id, client


def launch(ec2, count: int = 1, **kwargs) -> list[str]:
    reservation = ec2.run_instances(ImageId="ami-12345678", MinCount=count, MaxCount=count, **kwargs)
    return [instance["InstanceId"] for instance in reservation["Instances"]]


def metadata_options(ec2, instance_id: str) -> dict:
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]["MetadataOptions"]


def error_of(excinfo) -> tuple[str, int, str]:
    """(code, HTTP status, message) of a botocore ClientError."""
    response = excinfo.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


@pytest.fixture
def unthrottled(sim):
    """For functional tests that call ModifyInstanceMetadataDefaults (bucket of 2) more often."""
    sim.configure(throttle=False)
    return sim
