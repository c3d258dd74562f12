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


# One boto3 session for every client: it caches the parsed service models, which makes creating a
# client cheap. Credentials are passed per client instead of per session.
_BOTO = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")


def assume_role(endpoint_url: str, role_arn: str, external_id: str | None = None) -> dict:
    """What the product does: dummy base credentials, then sts:AssumeRole into the account."""
    kwargs = {"ExternalId": external_id} if external_id else {}
    sts = _BOTO.client("sts", endpoint_url=endpoint_url)
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="imdssim-tests", **kwargs)["Credentials"]
    return {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }


def client_for(endpoint_url: str, credentials: dict, service: str, region: str, config: Config = NO_RETRIES):
    return _BOTO.client(service, region_name=region, endpoint_url=endpoint_url, config=config, **credentials)


@pytest.fixture
def account(sim):
    """A fresh account of this test's own: ``(account_id, client_factory(service, region))``."""
    account_id = next(_account_ids)
    credentials = assume_role(sim.endpoint_url, f"arn:aws:iam::{account_id}:role/imdsweb-reader")

    def client(service: str, region: str = "us-east-1", config: Config = NO_RETRIES):
        return client_for(sim.endpoint_url, credentials, service, region, config)

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
