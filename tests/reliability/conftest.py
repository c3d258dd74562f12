"""Fixtures shared by the reliability and security suite: one small fleet with every kind of row a
page can show (accounts, instances, defaults, a batch with items), logins for the four roles."""

from datetime import timedelta
from importlib import import_module

import pytest
from django.test import Client
from django.utils import timezone

from fleet.choices import ChangeKind
from fleet.tests.factories import (
    AccountFactory,
    ChangeBatchFactory,
    ChangeItemFactory,
    InstanceFactory,
    MetadataDefaultsFactory,
    UserFactory,
)

ROLES = ("anonymous", "viewer", "operator", "admin")
ACCOUNT_ID = "111111111111"
INSTANCE_ID = "i-0123456789abcdef0"
EXTERNAL_ID = "extid-reliability-7f3c9a1e5b"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test logs in fresh users; PBKDF2's deliberate slowness would dominate the run."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Likewise the lockout tarpit (test_signin_hardening checks it on its own).
    settings.IMDSWEB_LOCKOUT_DELAY_SECONDS = 0


@pytest.fixture
def role_groups(db):
    """The role groups, as the migration creates them. A transactional test's flush deletes them
    (content types and permissions come back through post_migrate, data migrations do not)."""
    import_module("fleet.roles").ensure_roles()


def client_for(role, **kwargs):
    """A test client logged in with ``role`` (``anonymous``: not logged in)."""
    client = Client(**kwargs)
    if role != "anonymous":
        client.force_login(UserFactory(role=role))
    return client


@pytest.fixture
def world(db):
    """A fleet every page has something to render for; returns the interesting objects."""
    account = AccountFactory(
        account_id=ACCOUNT_ID, name="prod", regions=["us-east-1", "eu-west-1"],
        role_arn=f"arn:aws:iam::{ACCOUNT_ID}:role/imdsweb-reader", external_id=EXTERNAL_ID,
    )
    instance = InstanceFactory(account=account, instance_id=INSTANCE_ID, name="web-1", v1_calls=0,
                               http_tokens="required")
    other = InstanceFactory(account=account, instance_id="i-0123456789abcdef1", name="web-2", v1_calls=0)
    InstanceFactory(account=account, instance_id="i-0123456789abcdef2", name="old", gone_at=timezone.now())
    MetadataDefaultsFactory(account=account, region="us-east-1", http_tokens="optional")
    MetadataDefaultsFactory(account=account, region="eu-west-1")
    batch = ChangeBatchFactory(kind=ChangeKind.INSTANCE_OPTIONS, comment="first pass")
    applied = ChangeItemFactory(batch=batch, instance=instance, state="applied", previous={"http_tokens": "optional"})
    failed = ChangeItemFactory(batch=batch, instance=other, state="failed", error_code="Throttling",
                               error_message="gave up", previous={"http_tokens": "optional"})
    from fleet.models import LaunchSource

    source = LaunchSource.objects.create(
        account=account, region="us-east-1", kind="launch_template", source_id="lt-0123456789abcdef0", name="web",
        default_version=1, latest_version=1, first_seen=timezone.now(), last_seen=timezone.now(),
    )
    from fleet.models import Waiver

    waiver = Waiver.objects.create(scope="instance", instance=other, owner="vendor team",
                                   reason="appliance still needs IMDSv1",
                                   expires_on=timezone.now().date() + timedelta(days=30))
    return {"account": account, "instance": instance, "other": other, "batch": batch,
            "items": [applied, failed], "source": source, "waiver": waiver}
