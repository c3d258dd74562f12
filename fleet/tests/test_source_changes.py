"""Require IMDSv2 at the source, through the change engine's runner against the simulator: a new
version from the version in use, the new default, pinned groups only when asked, managed owners
refused by default, retries without a second version, rollback to the previous default."""

import time

import pytest

from fleet import aws, changes, ratelimit, source_changes, sync
from fleet.choices import ChangeKind, ItemState, LaunchVerdict, SourceKind
from fleet.engine import runner
from fleet.models import LaunchSource
from fleet.tests.factories import AccountFactory
from fleet.tests.test_sources_sync import Aws, sim, simulator  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def engine(settings, monkeypatch):
    settings.IMDSWEB_REDIS_URL = ""  # in-process buckets
    monkeypatch.setattr(ratelimit, "_redis", None)
    monkeypatch.setattr(ratelimit, "_local", ratelimit._LocalBuckets())
    monkeypatch.setattr(source_changes, "_dispatch_on_commit", lambda batch: None)  # the test runs the runner


def run(batch, account):
    deadline = time.monotonic() + 30
    while batch.items.filter(state__in=ItemState.active()).exists() and time.monotonic() < deadline:
        again = runner.run_region(account.pk, "us-east-1", budget=5)
        if again:
            time.sleep(min(again, 1))
    return {item.source.name: item for item in batch.items.select_related("source")}


@pytest.fixture
def region(sim, engine):  # noqa: F811 - the fixture imported above
    a = Aws(sim.endpoint_url)
    image = a.ec2.register_image(Name="legacy")["ImageId"]
    web = a.ec2.create_launch_template(
        LaunchTemplateName="web",
        LaunchTemplateData={"ImageId": image, "InstanceType": "m5.large", "MetadataOptions": {"HttpPutResponseHopLimit": 2}},
    )["LaunchTemplate"]["LaunchTemplateId"]
    eks = a.ec2.create_launch_template(
        LaunchTemplateName="eks-nodes", LaunchTemplateData={"ImageId": image},
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": "eks:cluster-name", "Value": "prod"}]}],
    )["LaunchTemplate"]["LaunchTemplateId"]
    a.group("web-default", 1, LaunchTemplate={"LaunchTemplateId": web, "Version": "$Default"})
    a.group("web-pinned", 1, LaunchTemplate={"LaunchTemplateId": web, "Version": "1"})
    account = AccountFactory(account_id=a.account_id, role_arn=a.role_arn, regions=["us-east-1"])
    sync.sync_region(account, "us-east-1")
    return a, account, web, eks


def sources_named(account, *names):
    return list(LaunchSource.objects.filter(account=account, name__in=names).order_by("name"))


def tokens_of_group(a, name):
    group = a.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    ids = [i["InstanceId"] for i in group["Instances"]]
    reservations = a.ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i["MetadataOptions"]["HttpTokens"] for r in reservations for i in r["Instances"]}


def test_fix_at_the_source_then_scale_out_then_roll_back(region):
    a, account, web, _eks = region
    group = LaunchSource.objects.get(account=account, kind=SourceKind.AUTO_SCALING_GROUP, source_id="web-default")
    assert group.verdict == LaunchVerdict.IMDSV1  # the template leaves HttpTokens unset
    before = set(tokens_of_group(a, "web-default"))

    batch = source_changes.request_source_fix(None, sources_named(account, "web"), comment="fix web")
    assert batch.kind == ChangeKind.LAUNCH_TEMPLATE
    items = run(batch, account)
    assert items["web"].state == ItemState.APPLIED, (items["web"].error_code, items["web"].error_message)

    template = a.ec2.describe_launch_templates(LaunchTemplateIds=[web])["LaunchTemplates"][0]
    assert (template["DefaultVersionNumber"], template["LatestVersionNumber"]) == (2, 2)
    new = a.ec2.describe_launch_template_versions(LaunchTemplateId=web, Versions=["2"])["LaunchTemplateVersions"][0]
    assert new["VersionDescription"].startswith(f"made by imdsweb batch #{batch.pk}")
    data = new["LaunchTemplateData"]
    # Only HttpTokens changed: the source version's hop limit, AMI and type are kept.
    assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 2}
    assert data["InstanceType"] == "m5.large"
    # The pinned group was not ticked: it stays on version 1.
    pinned = a.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["web-pinned"])["AutoScalingGroups"][0]
    assert pinned["LaunchTemplate"]["Version"] == "1"
    group.refresh_from_db()
    assert (group.verdict, group.next_version) == (LaunchVerdict.IMDSV2, 2)

    # Scale out: the new instances require IMDSv2, the old one keeps its options.
    a.autoscaling.set_desired_capacity(AutoScalingGroupName="web-default", DesiredCapacity=3)
    after = tokens_of_group(a, "web-default")
    assert {after[i] for i in set(after) - before} == {"required"}
    assert {after[i] for i in before} == {"optional"}

    undo = changes.rollback(batch, None)
    undone = run(undo, account)
    assert undone["web"].state == ItemState.APPLIED
    template = a.ec2.describe_launch_templates(LaunchTemplateIds=[web])["LaunchTemplates"][0]
    assert (template["DefaultVersionNumber"], template["LatestVersionNumber"]) == (1, 2)  # no version deleted
    group.refresh_from_db()
    assert group.verdict == LaunchVerdict.IMDSV1


def test_pinned_groups_follow_when_ticked_and_rollback_puts_them_back(region):
    a, account, web, _eks = region
    batch = source_changes.request_source_fix(None, sources_named(account, "web"), update_pinned=True, hop_limit=3)
    assert run(batch, account)["web"].state == ItemState.APPLIED
    pinned = a.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["web-pinned"])["AutoScalingGroups"][0]
    assert pinned["LaunchTemplate"]["Version"] == "2"
    options = a.ec2.describe_launch_template_versions(LaunchTemplateId=web, Versions=["2"])["LaunchTemplateVersions"][0]
    assert options["LaunchTemplateData"]["MetadataOptions"]["HttpPutResponseHopLimit"] == 3
    assert LaunchSource.objects.get(account=account, source_id="web-pinned").verdict == LaunchVerdict.IMDSV2

    run(changes.rollback(batch, None), account)
    pinned = a.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["web-pinned"])["AutoScalingGroups"][0]
    assert pinned["LaunchTemplate"]["Version"] == "1"


def test_managed_templates_are_skipped_unless_overridden(region):
    a, account, _web, eks = region
    batch = source_changes.request_source_fix(None, sources_named(account, "eks-nodes"))
    (item,) = batch.items.all()
    assert item.state == ItemState.SKIPPED and item.reason.startswith("Owned by Amazon EKS")
    forced = source_changes.request_source_fix(None, sources_named(account, "eks-nodes"), override_owner=True)
    assert run(forced, account)["eks-nodes"].state == ItemState.APPLIED


def test_a_retry_after_a_throttled_step_does_not_create_a_second_version(region, monkeypatch):
    a, account, web, _eks = region
    real = aws.modify_launch_template
    failures = iter([aws.RetryableAwsError("RequestLimitExceeded", "Request limit exceeded.")])

    def flaky(*args, **kwargs):
        error = next(failures, None)
        if error is not None and not kwargs.get("dry_run"):
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(aws, "modify_launch_template", flaky)
    monkeypatch.setattr(runner, "backoff", lambda *args: 0.01)
    batch = source_changes.request_source_fix(None, sources_named(account, "web"))
    item = run(batch, account)["web"]
    assert item.state == ItemState.APPLIED and item.attempts == 2
    template = a.ec2.describe_launch_templates(LaunchTemplateIds=[web])["LaunchTemplates"][0]
    assert (template["DefaultVersionNumber"], template["LatestVersionNumber"]) == (2, 2)


def test_a_second_active_change_of_one_template_is_refused(region):
    _a, account, _web, _eks = region
    source_changes.request_source_fix(None, sources_named(account, "web"))
    with pytest.raises(changes.ChangeRefused):
        source_changes.request_source_fix(None, sources_named(account, "web"))


def test_launch_configurations_and_groups_are_not_changed_in_place(region):
    _a, account, _web, _eks = region
    group = LaunchSource.objects.get(account=account, source_id="web-default")
    batch = source_changes.request_source_fix(None, [group])
    (item,) = batch.items.all()
    assert item.state == ItemState.SKIPPED and "through its launch template" in item.reason
