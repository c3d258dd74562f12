"""Fixtures for the fleet tests: a moto server over HTTP, AWS environment, users per role."""

import socket
import time

import boto3
import pytest
import requests
from django.core.cache import cache

AMBIENT_ACCOUNT = "123456789012"  # moto's default account: what ambient credentials reach


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_session_touch_mid_test(settings):
    """Query-count tests compare two requests: on a slow machine a test can outlive the minute
    after which a request also pushes the session's idle expiry back (one more write), so here it
    happens only after the idle time's tenth (48 min by default; tests/reliability covers it)."""
    settings.IMDSWEB_SESSION_TOUCH_SECONDS = 24 * 3600


@pytest.fixture(scope="session")
def moto_server():
    """moto's own server in a thread: plain moto, without the simulator's IMDS fidelity."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy credentials so nothing can reach a real AWS account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def moto_endpoint(moto_server, aws_env, monkeypatch):
    requests.post(f"{moto_server}/moto-api/reset", timeout=10)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


def ec2_in(endpoint, account_id, region):
    """An EC2 client inside ``account_id`` on a moto endpoint (through AssumeRole unless ambient)."""
    if account_id == AMBIENT_ACCOUNT:
        return boto3.client("ec2", region_name=region, endpoint_url=endpoint)
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=endpoint)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/seed", RoleSessionName="seed")["Credentials"]
    return boto3.client(
        "ec2",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


@pytest.fixture
def operator(client):
    """The test client, logged in as a user with the operator role."""
    from fleet.tests.factories import UserFactory

    client.force_login(UserFactory(role="operator"))
    return client


@pytest.fixture
def viewer(client):
    """The test client, logged in as a user with the viewer role."""
    from fleet.tests.factories import UserFactory

    client.force_login(UserFactory(role="viewer"))
    return client


@pytest.fixture
def locmem_cache(settings):
    """A cache of this test's own for the engine's guards, marks and heartbeat."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": f"engine-{time.monotonic_ns()}"}}
    cache.clear()
    yield
    cache.clear()
