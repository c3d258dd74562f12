"""Sync of launch sources against the simulator over HTTP: templates and their versions, ASGs,
launch configurations, AMIs, attribution, owners, what the next launch gets, failing closed."""

import itertools

import boto3
import pytest

from fleet import aws, sources, sync
from fleet.aws.session import reset_caches
from fleet.choices import LaunchVerdict, ManagedOwner, SourceKind, SyncStatus
from fleet.models import Image, Instance, LaunchSource, SourceSyncState
from fleet.tests.factories import AccountFactory
from imdssim.testing import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)
_account_ids = (f"5555{n:08d}" for n in itertools.count(1))


@pytest.fixture(scope="module")
def simulator():
    with SimulatorProcess(throttle=False) as sim:
        yield sim


@pytest.fixture
def sim(simulator, monkeypatch):
    for name, value in {
        "AWS_ENDPOINT_URL": simulator.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    reset_caches()
    yield simulator
    reset_caches()


class Aws:
    """Clients inside a fresh simulator account, as its owner would use them."""

    def __init__(self, endpoint):
        self.account_id = next(_account_ids)
        self.role_arn = f"arn:aws:iam::{self.account_id}:role/imdsweb-reader"
        sts = boto3.client("sts", region_name="us-east-1", endpoint_url=endpoint)
        creds = sts.assume_role(RoleArn=self.role_arn, RoleSessionName="seed")["Credentials"]
        kwargs = dict(
            region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"],
        )
        self.ec2 = boto3.client("ec2", **kwargs)
        self.autoscaling = boto3.client("autoscaling", **kwargs)

    def group(self, name, size=1, **spec):
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name, MinSize=0, MaxSize=10, DesiredCapacity=size, AvailabilityZones=["us-east-1a"],
            **spec,
        )


@pytest.fixture
def fleet(sim):
    """One account/region with every kind of source in mixed posture."""
    a = Aws(sim.endpoint_url)
    v2 = a.ec2.register_image(Name="al2023-v2", ImdsSupport="v2.0")["ImageId"]
    legacy = a.ec2.register_image(Name="legacy")["ImageId"]
    gone = a.ec2.register_image(Name="retired")["ImageId"]
    web = a.ec2.create_launch_template(
        LaunchTemplateName="web", LaunchTemplateData={"ImageId": legacy, "MetadataOptions": {"HttpTokens": "optional"}}
    )["LaunchTemplate"]["LaunchTemplateId"]
    a.ec2.create_launch_template_version(
        LaunchTemplateId=web, SourceVersion="1", LaunchTemplateData={"MetadataOptions": {"HttpPutResponseHopLimit": 2}}
    )
    a.ec2.create_launch_template_version(
        LaunchTemplateId=web, SourceVersion="1",
        LaunchTemplateData={"ImageId": v2, "MetadataOptions": {"HttpTokens": "required"}},
    )
    a.ec2.create_launch_template_version(LaunchTemplateId=web, SourceVersion="1", LaunchTemplateData={"ImageId": gone})
    a.ec2.modify_launch_template(LaunchTemplateId=web, DefaultVersion="2")  # leaves HttpTokens unset
    eks = a.ec2.create_launch_template(
        LaunchTemplateName="eks-nodes", LaunchTemplateData={"ImageId": v2},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": [
            {"Key": "eks:cluster-name", "Value": "prod"}, {"Key": "eks:nodegroup-name", "Value": "general"}]}],
    )["LaunchTemplate"]["LaunchTemplateId"]
    a.autoscaling.create_launch_configuration(
        LaunchConfigurationName="bastion-lc", ImageId=legacy, InstanceType="t3.micro",
        MetadataOptions={"HttpTokens": "optional", "HttpPutResponseHopLimit": 1},
    )
    a.group("web-default", 2, LaunchTemplate={"LaunchTemplateId": web, "Version": "$Default"})
    a.group("web-latest", 1, LaunchTemplate={"LaunchTemplateId": web, "Version": "$Latest"})
    a.group("web-pinned", 1, MixedInstancesPolicy={"LaunchTemplate": {
        "LaunchTemplateSpecification": {"LaunchTemplateId": web, "Version": "3"},
        "Overrides": [{"InstanceType": "c5.large"}]}})
    a.group("eks-general", 1, LaunchTemplate={"LaunchTemplateId": eks, "Version": "1"})
    a.group("bastion", 1, LaunchConfigurationName="bastion-lc")
    a.ec2.deregister_image(ImageId=gone)
    account = AccountFactory(account_id=a.account_id, role_arn=a.role_arn, regions=["us-east-1"])
    return a, account, {"web": web, "eks": eks, "v2": v2, "legacy": legacy, "gone": gone}


def source(account, kind, source_id):
    return LaunchSource.objects.get(account=account, region="us-east-1", kind=kind, source_id=source_id)


def test_sync_reads_every_kind_of_source_and_resolves_the_next_launch(fleet):
    a, account, ids = fleet
    run = sync.sync_region(account, "us-east-1")
    assert run.status == SyncStatus.SUCCEEDED

    web = source(account, SourceKind.LAUNCH_TEMPLATE, ids["web"])
    assert (web.name, web.default_version, web.latest_version) == ("web", 2, 4)
    # Default and latest, plus version 3 because an ASG names it; version 1 nobody uses.
    assert sorted(web.versions.values_list("version_number", flat=True)) == [2, 3, 4]
    v2 = web.versions.get(version_number=2)
    assert (v2.http_tokens, v2.hop_limit, v2.image_id) == ("", 2, ids["legacy"])
    assert (web.verdict, web.next_version, web.next_http_tokens, web.next_hop_limit) == (
        LaunchVerdict.IMDSV1, 2, "optional", 2,
    )
    assert web.chain[0] == (
        f"LT web ({ids['web']}) v2 leaves HttpTokens unset → account default in us-east-1 is no-preference → "
        f"AMI {ids['legacy']} has no ImdsSupport → EC2 default: HttpTokens optional → optional"
    )

    groups = {g.source_id: g for g in LaunchSource.objects.filter(account=account, kind=SourceKind.AUTO_SCALING_GROUP)}
    assert groups["web-default"].template == web and groups["web-default"].version_spec == "$Default"
    assert groups["web-default"].verdict == LaunchVerdict.IMDSV1
    # v4 keeps v1's HttpTokens optional; its hop limit falls to the AMI, which is deregistered.
    latest = groups["web-latest"]
    assert (latest.next_version, latest.verdict, latest.next_hop_limit) == (4, LaunchVerdict.IMDSV1, None)
    assert "not known (not synced, deregistered or not shared): cannot tell" in latest.chain[1]
    pinned = groups["web-pinned"]
    assert (pinned.mixed_instances_policy, pinned.version_spec, pinned.verdict) == (True, "3", LaunchVerdict.IMDSV2)
    assert groups["bastion"].launch_configuration.name == "bastion-lc"
    assert groups["bastion"].verdict == LaunchVerdict.IMDSV1
    assert groups["eks-general"].verdict == LaunchVerdict.IMDSV2  # the AMI's ImdsSupport v2.0

    eks = source(account, SourceKind.LAUNCH_TEMPLATE, ids["eks"])
    assert (eks.owner, eks.owner_detail) == (ManagedOwner.EKS, "cluster prod, node group general")
    assert eks.read_only_reason.startswith("Owned by Amazon EKS")
    configuration = source(account, SourceKind.LAUNCH_CONFIGURATION, "bastion-lc")
    assert (configuration.http_tokens, configuration.verdict) == ("optional", LaunchVerdict.IMDSV1)
    assert "cannot be modified" in configuration.read_only_reason

    images = {i.image_id: i for i in Image.objects.filter(account=account)}
    assert images[ids["v2"]].imds_support == "v2.0" and images[ids["v2"]].found
    assert images[ids["legacy"]].imds_support == "" and images[ids["legacy"]].found
    assert not images[ids["gone"]].found

    attributed = Instance.objects.filter(account=account, autoscaling_group="web-default")
    assert attributed.count() == 2
    assert set(attributed.values_list("launch_template_id", "launch_template_version")) == {(ids["web"], "2")}
    assert SourceSyncState.objects.get(account=account, region="us-east-1").error == ""


def test_account_default_and_enforcement_change_the_verdicts(fleet):
    a, account, ids = fleet
    a.ec2.modify_instance_metadata_defaults(HttpTokens="required")
    sync.sync_region(account, "us-east-1")
    web = source(account, SourceKind.LAUNCH_TEMPLATE, ids["web"])
    assert web.verdict == LaunchVerdict.IMDSV2
    assert "account default in us-east-1 is HttpTokens required" in web.chain[0]
    # The launch configuration states optional itself: the account default does not reach it.
    assert source(account, SourceKind.LAUNCH_CONFIGURATION, "bastion-lc").verdict == LaunchVerdict.IMDSV1

    a.ec2.modify_instance_metadata_defaults(HttpTokensEnforced="enabled")
    sync.sync_region(account, "us-east-1")
    configuration = source(account, SourceKind.LAUNCH_CONFIGURATION, "bastion-lc")
    assert configuration.verdict == LaunchVerdict.REFUSED
    assert "HttpTokensEnforced is enabled" in configuration.chain[1]
    assert account.defaults.get(region="us-east-1").http_tokens_enforced == "enabled"


def test_resync_keeps_rows_and_marks_deleted_sources_gone(fleet):
    a, account, ids = fleet
    sync.sync_region(account, "us-east-1")
    before = dict(LaunchSource.objects.filter(account=account).values_list("source_id", "pk"))
    a.autoscaling.delete_auto_scaling_group(AutoScalingGroupName="web-latest", ForceDelete=True)
    sync.sync_region(account, "us-east-1")
    after = dict(LaunchSource.objects.filter(account=account).values_list("source_id", "pk"))
    assert after == before
    assert LaunchSource.objects.get(account=account, source_id="web-latest").gone_at is not None
    assert LaunchSource.objects.get(account=account, source_id="web-default").gone_at is None


def test_a_source_read_failure_is_recorded_and_keeps_the_inventory(fleet, monkeypatch):
    a, account, ids = fleet
    sync.sync_region(account, "us-east-1")
    count = LaunchSource.objects.filter(account=account).count()

    def denied(*args, **kwargs):
        raise aws.PermanentAwsError("AccessDenied", "not authorized to perform autoscaling:DescribeAutoScalingGroups")
        yield

    monkeypatch.setattr(aws, "describe_auto_scaling_group_pages", denied)
    run = sync.sync_region(account, "us-east-1")
    assert run.status == SyncStatus.SUCCEEDED  # the instances were read
    state = SourceSyncState.objects.get(account=account, region="us-east-1")
    assert state.error.startswith("AccessDenied:")
    assert LaunchSource.objects.filter(account=account, gone_at__isnull=True).count() == count


def test_sources_sync_costs_pages_not_sources(fleet, sim):
    """Describe calls grow with pages (and the versions only ASGs or instances name), never
    with one call per template."""
    a, account, ids = fleet
    for n in range(30):
        a.ec2.create_launch_template(LaunchTemplateName=f"bulk-{n}", LaunchTemplateData={"ImageId": ids["legacy"]})
    sim.reset_stats()
    sources.sync_sources(account, "us-east-1")
    calls = {name: entry["calls"] for name, entry in sim.stats()["actions"].items()}
    assert calls["DescribeLaunchTemplates"] == 1
    # One call for every $Default/$Latest, one for web's version 3 named by an ASG.
    assert calls["DescribeLaunchTemplateVersions"] == 2
    assert calls["DescribeImages"] == 1
    assert LaunchSource.objects.filter(account=account, name__startswith="bulk-").count() == 30
