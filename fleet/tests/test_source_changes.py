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


def test_each_step_spends_the_token_of_the_action_it_calls(region, monkeypatch):
    """The fix's DryRun preflight and its new version each spend a CreateLaunchTemplateVersion
    token the runner took, and repointing the default takes its own ModifyLaunchTemplate token; the
    rollback (preflight, then the repoint) only ever spends ModifyLaunchTemplate tokens, which the
    runner takes."""
    a, account, _web, _eks = region
    spent = []
    real_take, real_acquire = ratelimit.take_some, ratelimit.acquire

    def take(account_id, region_name, action, *args, **kwargs):
        taken, wait = real_take(account_id, region_name, action, *args, **kwargs)
        spent.extend([("runner", action)] * taken)
        return taken, wait

    def acquire(account_id, region_name, action, *args, already_taken=False, **kwargs):
        if not already_taken:
            spent.append(("call", action))
        return real_acquire(account_id, region_name, action, *args, already_taken=already_taken, **kwargs)

    monkeypatch.setattr(ratelimit, "take_some", take)
    monkeypatch.setattr(ratelimit, "acquire", acquire)
    batch = source_changes.request_source_fix(None, sources_named(account, "web"))
    assert run(batch, account)["web"].state == ItemState.APPLIED
    writes = [step for step in spent if step[1] in ("CreateLaunchTemplateVersion", "ModifyLaunchTemplate")]
    assert writes == [("runner", "CreateLaunchTemplateVersion"), ("runner", "CreateLaunchTemplateVersion"),
                      ("call", "ModifyLaunchTemplate")]

    spent.clear()
    assert run(changes.rollback(batch, None), account)["web"].state == ItemState.APPLIED
    writes = [step for step in spent if step[1] in ("CreateLaunchTemplateVersion", "ModifyLaunchTemplate")]
    assert writes == [("runner", "ModifyLaunchTemplate"), ("runner", "ModifyLaunchTemplate")]


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


# ---------------------------------------------------------------- MixedInstancesPolicy overrides


@pytest.fixture
def mixed(region):
    """A mixed group whose own template requires IMDSv2 but whose priority override launches
    c5.large from a pinned version of a template that leaves HttpTokens unset."""
    a, account, _web, _eks = region
    image = a.ec2.register_image(Name="mixed-ami")["ImageId"]
    main = a.ec2.create_launch_template(
        LaunchTemplateName="mixed-main", LaunchTemplateData={"ImageId": image, "MetadataOptions": {"HttpTokens": "required"}},
    )["LaunchTemplate"]["LaunchTemplateId"]
    legacy = a.ec2.create_launch_template(
        LaunchTemplateName="mixed-legacy", LaunchTemplateData={"ImageId": image, "InstanceType": "c5.large"},
    )["LaunchTemplate"]["LaunchTemplateId"]
    a.group("mixed-asg", 1, MixedInstancesPolicy={"LaunchTemplate": {
        "LaunchTemplateSpecification": {"LaunchTemplateId": main, "Version": "$Default"},
        "Overrides": [
            {"InstanceType": "c5.large", "LaunchTemplateSpecification": {"LaunchTemplateName": "mixed-legacy",
                                                                          "Version": "1"}},
            {"InstanceType": "m5.large"},
        ],
    }})
    sync.sync_region(account, "us-east-1")
    return a, account, main, legacy


def overrides_in_aws(a, name="mixed-asg"):
    group = a.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    return group["MixedInstancesPolicy"]["LaunchTemplate"]


def test_a_mixed_group_is_as_bad_as_its_worst_override(mixed):
    _a, account, main, legacy = mixed
    group = LaunchSource.objects.get(account=account, source_id="mixed-asg")
    assert group.mixed_instances_policy and group.template.source_id == main
    first, second = group.override_templates
    # Named by template name in AWS: attributed to the template's id.
    assert (first["template_id"], first["version"], first["instance_type"]) == (legacy, "1", "c5.large")
    assert (first["verdict"], first["next_version"], first["next_http_tokens"]) == (LaunchVerdict.IMDSV1, 1, "optional")
    assert not second["own_template"] and "verdict" not in second
    assert (group.verdict, group.next_http_tokens) == (LaunchVerdict.IMDSV1, "optional")
    assert any("override c5.large (1) → LT mixed-legacy" in step for step in group.chain)
    assert "its verdict is the worst of them, IMDSv1 allowed" in group.chain[-1]
    # The template the override names is launched by the group: the fix covers it.
    assert LaunchSource.objects.get(account=account, source_id=main).verdict == LaunchVerdict.IMDSV2


def test_the_source_pages_show_the_overrides(mixed, client):
    from django.urls import reverse

    from fleet.tests.factories import UserFactory

    _a, account, _main, _legacy = mixed
    client.force_login(UserFactory(role="operator"))
    group = LaunchSource.objects.get(account=account, source_id="mixed-asg")
    html = client.get(group.get_absolute_url()).content.decode()
    assert 'id="overrides"' in html and 'data-override="0"' in html and 'data-override="1"' in html
    assert "mixed-legacy" in html and "the group's launch template" in html
    assert f"{reverse('fleet:source_fix')}?ids={group.pk}" in html
    legacy = LaunchSource.objects.get(account=account, name="mixed-legacy")
    page = client.get(legacy.get_absolute_url())
    assert [g.name for g in page.context["groups"]] == ["mixed-asg"]
    assert "override c5.large" in page.content.decode()
    # Choosing the group on the fix page means the templates it launches from.
    fix = client.get(f"{reverse('fleet:source_fix')}?ids={group.pk}&update_pinned=on")
    assert fix.status_code == 200
    rows = {source.name: (reason, [g.pinned_as for g in groups]) for source, reason, groups in fix.context["preview"]}
    assert rows == {"mixed-legacy": ("", ["override #1 v1"]), "mixed-main": ("its default version already requires IMDSv2", [])}


def test_fixing_an_override_template_repoints_the_pinned_override_and_rollback_puts_it_back(mixed):
    a, account, main, legacy = mixed
    before = set(tokens_of_group(a, "mixed-asg"))
    template = LaunchSource.objects.get(account=account, source_id=legacy)
    batch = source_changes.request_source_fix(None, [template], update_pinned=True)
    item = run(batch, account)["mixed-legacy"]
    assert item.state == ItemState.APPLIED, (item.error_code, item.error_message)
    launch = overrides_in_aws(a)
    assert launch["LaunchTemplateSpecification"] == {"LaunchTemplateId": main, "LaunchTemplateName": "mixed-main",
                                                     "Version": "$Default"}  # its own template: untouched
    assert launch["Overrides"][0]["LaunchTemplateSpecification"]["Version"] == "2"
    assert launch["Overrides"][1] == {"InstanceType": "m5.large"}
    group = LaunchSource.objects.get(account=account, source_id="mixed-asg")
    assert group.verdict == LaunchVerdict.IMDSV2 and group.override_templates[0]["next_version"] == 2

    a.autoscaling.set_desired_capacity(AutoScalingGroupName="mixed-asg", DesiredCapacity=2)
    after = tokens_of_group(a, "mixed-asg")
    assert {after[i] for i in set(after) - before} == {"required"}

    undone = run(changes.rollback(batch, None), account)
    assert undone["mixed-legacy"].state == ItemState.APPLIED
    assert overrides_in_aws(a)["Overrides"][0]["LaunchTemplateSpecification"]["Version"] == "1"
    group.refresh_from_db()
    assert group.verdict == LaunchVerdict.IMDSV1 and group.override_templates[0]["version"] == "1"


def test_a_pinned_mixed_group_is_repointed_through_its_policy(mixed):
    """A mixed group pinned to a version of its own template is updated through its
    MixedInstancesPolicy (UpdateAutoScalingGroup's LaunchTemplate is for plain groups)."""
    a, account, main, _legacy = mixed
    launch = overrides_in_aws(a)
    launch["LaunchTemplateSpecification"] = {"LaunchTemplateId": main, "Version": "1"}
    a.autoscaling.update_auto_scaling_group(AutoScalingGroupName="mixed-asg", MixedInstancesPolicy={"LaunchTemplate": launch})
    a.ec2.create_launch_template_version(LaunchTemplateId=main, SourceVersion="1",
                                         LaunchTemplateData={"MetadataOptions": {"HttpTokens": "optional"}})
    a.ec2.modify_launch_template(LaunchTemplateId=main, DefaultVersion="2")
    sync.sync_region(account, "us-east-1")
    batch = source_changes.request_source_fix(None, sources_named(account, "mixed-main"), update_pinned=True)
    assert batch.items.get().previous["mixed"] == {"mixed-asg": {"main": "1", "overrides": {}}}
    assert run(batch, account)["mixed-main"].state == ItemState.APPLIED
    launch = overrides_in_aws(a)
    assert launch["LaunchTemplateSpecification"]["Version"] == "3"
    assert launch["Overrides"][0]["LaunchTemplateSpecification"]["Version"] == "1"  # another template's
