"""Sync of the fleet cache against moto over HTTP: paging, AssumeRole, gone detection, defaults."""

import threading

import pytest
from django.core.management import call_command
from django.db import connection

from fleet import sync
from fleet.aws import ec2 as ec2_api
from fleet.choices import DefaultsStatus, SyncStatus
from fleet.models import Instance, MetadataDefaults, RegionPosture, SyncRun
from fleet.tests.conftest import AMBIENT_ACCOUNT, ec2_in
from fleet.tests.factories import AccountFactory
from imdssim.testing import launch

pytestmark = pytest.mark.django_db(transaction=True)

OTHER_ACCOUNT = "222233334444"


def register(account_id, **kwargs):
    role = {} if account_id == AMBIENT_ACCOUNT else {"role_arn": f"arn:aws:iam::{account_id}:role/imdsweb-reader"}
    return AccountFactory(account_id=account_id, regions=["us-east-1", "eu-west-1"], **role, **kwargs)


def test_two_accounts_two_regions_through_assume_role(moto_endpoint, monkeypatch):
    # Pages of 100 rather than AWS's 1,000: the same paging, with a tenth of the instances to launch.
    monkeypatch.setattr(ec2_api, "PAGE_SIZE", 100)
    layout = {
        (AMBIENT_ACCOUNT, "us-east-1"): 250,  # more than two DescribeInstances pages
        (AMBIENT_ACCOUNT, "eu-west-1"): 60,
        (OTHER_ACCOUNT, "us-east-1"): 140,
        (OTHER_ACCOUNT, "eu-west-1"): 80,
    }
    expected = {}
    for (account_id, region), count in layout.items():
        ec2 = ec2_in(moto_endpoint, account_id, region)
        required = launch(ec2, 20, HttpTokens="required", HttpPutResponseHopLimit=2)
        optional = launch(ec2, count - 20)
        expected |= {i: (account_id, region, "required", 2) for i in required}
        expected |= {i: (account_id, region, "optional", 1) for i in optional}
    for account_id in (AMBIENT_ACCOUNT, OTHER_ACCOUNT):
        register(account_id)

    out = []
    call_command("fleet_sync", stdout=type("W", (), {"write": lambda self, s: out.append(s)})())

    assert len(out) == 4 and all("succeeded" in line for line in out)
    rows = {
        i.instance_id: (i.account.account_id, i.region, i.http_tokens, i.hop_limit)
        for i in Instance.objects.select_related("account")
    }
    assert rows == expected  # 530 instances, each in its own account/region with its options
    assert SyncRun.objects.filter(status=SyncStatus.SUCCEEDED).count() == 4
    big = SyncRun.objects.get(account__account_id=AMBIENT_ACCOUNT, region="us-east-1")
    assert (big.seen, big.new, big.changed, big.gone) == (250, 250, 0, 0)
    # Each sync refreshed its account/region's posture summary, which the overview reads.
    summary = {(p.account.account_id, p.region): (p.total, p.enforced) for p in RegionPosture.objects.all()}
    assert summary == {key: (count, 20) for key, count in layout.items()}


def test_resync_is_idempotent_and_detects_changes_and_gone(moto_endpoint):
    ec2 = ec2_in(moto_endpoint, AMBIENT_ACCOUNT, "us-east-1")
    ids = launch(ec2, 20)
    account = register(AMBIENT_ACCOUNT)
    first = sync.sync_region(account, "us-east-1")
    assert (first.seen, first.new) == (20, 20)
    snapshot = list(Instance.objects.order_by("instance_id").values_list("instance_id", "first_seen", "http_tokens"))

    second = sync.sync_region(account, "us-east-1")
    assert (second.seen, second.new, second.changed, second.gone) == (20, 0, 0, 0)
    assert list(Instance.objects.order_by("instance_id").values_list("instance_id", "first_seen", "http_tokens")) == snapshot

    ec2.create_tags(Resources=[ids[0]], Tags=[{"Key": "Name", "Value": "renamed"}])
    ec2.terminate_instances(InstanceIds=[ids[1]])
    third = sync.sync_region(account, "us-east-1")
    assert third.changed == 2  # one renamed, one terminated
    assert Instance.objects.get(instance_id=ids[0]).name == "renamed"
    assert Instance.objects.get(instance_id=ids[1]).instance_state == "terminated"


def test_instance_missing_from_a_full_sync_is_marked_gone(moto_endpoint):
    ec2 = ec2_in(moto_endpoint, AMBIENT_ACCOUNT, "us-east-1")
    launch(ec2, 3)
    account = register(AMBIENT_ACCOUNT)
    sync.sync_region(account, "us-east-1")
    ghost = Instance.objects.first()
    ghost.instance_id = "i-0000000000000dead"
    ghost.save()

    run = sync.sync_region(account, "us-east-1")

    ghost.refresh_from_db()
    assert ghost.gone_at is not None and run.gone == 1
    assert Instance.objects.present().count() == 3


def test_defaults_unknown_when_endpoint_does_not_implement_them(moto_endpoint, settings):
    settings.IMDSWEB_AWS_MAX_ATTEMPTS = 1
    account = register(AMBIENT_ACCOUNT)
    run = sync.sync_region(account, "us-east-1")
    assert run.status == SyncStatus.SUCCEEDED
    defaults = MetadataDefaults.objects.get(account=account, region="us-east-1")
    assert defaults.status == DefaultsStatus.UNKNOWN and defaults.error


def test_failed_sync_is_recorded_not_raised(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    account = register(AMBIENT_ACCOUNT)
    from django.conf import settings

    monkeypatch.setattr(settings, "IMDSWEB_AWS_MAX_ATTEMPTS", 1)
    monkeypatch.setattr(settings, "IMDSWEB_AWS_CONNECT_TIMEOUT", 0.5)
    run = sync.sync_region(account, "us-east-1")
    assert run.status == SyncStatus.FAILED and run.error and run.finished_at


def test_the_same_region_never_syncs_twice_at_once(moto_endpoint):
    account = register(AMBIENT_ACCOUNT)
    SyncRun.objects.create(account=account, region="us-east-1", started_at=sync.timezone.now())
    with pytest.raises(sync.SyncAlreadyRunning):
        sync.sync_region(account, "us-east-1")


def test_concurrent_syncs_one_wins(moto_endpoint):
    ec2 = ec2_in(moto_endpoint, AMBIENT_ACCOUNT, "us-east-1")
    launch(ec2, 50)
    account = register(AMBIENT_ACCOUNT)
    outcomes = []
    barrier = threading.Barrier(2)

    def worker():
        barrier.wait()
        try:
            outcomes.append(sync.sync_region(account, "us-east-1").status)
        except sync.SyncAlreadyRunning:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Either they overlapped (one refused) or ran one after the other; never two running rows.
    assert sorted(outcomes) in (["refused", "succeeded"], ["succeeded", "succeeded"])
    assert not SyncRun.objects.filter(status=SyncStatus.RUNNING).exists()


def test_abandoned_running_sync_does_not_block_forever(moto_endpoint, settings):
    account = register(AMBIENT_ACCOUNT)
    old = sync.timezone.now() - sync.timedelta(minutes=settings.IMDSWEB_STALE_SYNC_MINUTES + 1)
    stale = SyncRun.objects.create(account=account, region="us-east-1", started_at=old)
    run = sync.sync_region(account, "us-east-1")
    stale.refresh_from_db()
    assert stale.status == SyncStatus.FAILED and "abandoned" in stale.error
    assert run.status == SyncStatus.SUCCEEDED


def test_instance_profile_and_public_ip_are_read_and_absent_is_null(moto_endpoint):
    """DescribeInstances' IamInstanceProfile.Arn and PublicIpAddress (issue 19, risk first),
    through the PostgreSQL COPY path and the bulk-create path alike."""
    import boto3

    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto_endpoint)
    iam.create_role(RoleName="web", AssumeRolePolicyDocument="{}")
    profile = iam.create_instance_profile(InstanceProfileName="web")["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName="web", RoleName="web")
    ec2 = ec2_in(moto_endpoint, AMBIENT_ACCOUNT, "us-east-1")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
    run = dict(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro")
    public = ec2.run_instances(**run, IamInstanceProfile={"Arn": profile})["Instances"][0]["InstanceId"]
    private = ec2.run_instances(
        **run, NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet, "AssociatePublicIpAddress": False}]
    )["Instances"][0]["InstanceId"]
    account = register(AMBIENT_ACCOUNT)

    assert sync.sync_region(account, "us-east-1").status == SyncStatus.SUCCEEDED
    rows = {i.instance_id: (i.iam_instance_profile_arn, i.public_ip) for i in Instance.objects.all()}
    assert rows[public][0] == profile and rows[public][1]
    assert rows[private] == (None, None)
    assert RegionPosture.objects.get(account=account, region="us-east-1").risk_role_public == 1

    # The bulk-create path (SQLite) stores the same values from the same page.
    page = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    Instance.objects.all().delete()
    sync._upsert_bulk_create(account, "us-east-1", [sync.instance_fields(i) for i in page], sync.timezone.now())
    assert {i.instance_id: (i.iam_instance_profile_arn, i.public_ip) for i in Instance.objects.all()} == rows
