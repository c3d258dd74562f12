"""Require IMDSv2 at the source, end to end: the simulator as AWS, a real Celery worker and beat.

An ASG on a template that leaves HttpTokens unset shows "next launch: IMDSv1 allowed"; fixing it
at the source through the same service the UI uses makes the next scale-out launch IMDSv2-only
instances; rollback restores the previous default version.
"""

import pytest
from django.test import Client

from fleet import changes, source_changes, sync
from fleet.choices import ItemState, LaunchVerdict
from fleet.models import Account, LaunchSource
from fleet.tests.factories import UserFactory
from fleet.tests.live import module_stack, wait_for
from fleet.tests.test_sources_sync import Aws

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


# One stack for the module; each test works in a simulator account of its own (``Aws``).
live_stack = module_stack(time_scale=10, apply_delay=0.5)


@pytest.fixture
def stack(live_stack):
    return live_stack.fresh()


def final(batch):
    def check():
        counts = batch.counts()
        return counts["total"] and not any(counts[s] for s in ItemState.active())
    return check


def group_tokens(a, name):
    group = a.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    ids = [i["InstanceId"] for i in group["Instances"]]
    return {
        i["InstanceId"]: i["MetadataOptions"]["HttpTokens"]
        for r in a.ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]
    }


def test_fix_at_the_source_scale_out_and_roll_back_through_a_worker(stack):
    a = Aws(stack.sim.endpoint_url)
    image = a.ec2.register_image(Name="legacy")["ImageId"]
    template_id = a.ec2.create_launch_template(
        LaunchTemplateName="web", LaunchTemplateData={"ImageId": image, "InstanceType": "m5.large"}
    )["LaunchTemplate"]["LaunchTemplateId"]
    a.group("web-asg", 2, LaunchTemplate={"LaunchTemplateId": template_id, "Version": "$Default"})
    account = Account.objects.create(account_id=a.account_id, name="live", regions=["us-east-1"], role_arn=a.role_arn)
    sync.sync_region(account, "us-east-1")

    group = LaunchSource.objects.get(account=account, source_id="web-asg")
    viewer = Client()
    viewer.force_login(UserFactory(role="viewer"))
    assert "next launch: IMDSv1 allowed" in viewer.get(group.get_absolute_url()).content.decode()

    template = LaunchSource.objects.get(account=account, source_id=template_id)
    batch = source_changes.request_source_fix(None, [template], comment="fix at the source")
    wait_for(final(batch), message="fix applied", stack=stack)
    assert batch.items.get().state == ItemState.APPLIED
    group.refresh_from_db()
    assert (group.verdict, group.next_version) == (LaunchVerdict.IMDSV2, 2)

    before = set(group_tokens(a, "web-asg"))
    a.autoscaling.set_desired_capacity(AutoScalingGroupName="web-asg", DesiredCapacity=3)
    after = group_tokens(a, "web-asg")
    (new,) = set(after) - before
    assert after[new] == "required"
    assert {after[i] for i in before} == {"optional"}  # a source change never touches running instances

    undo = changes.rollback(batch, None)
    wait_for(final(undo), message="rollback applied", stack=stack)
    assert undo.items.get().state == ItemState.APPLIED
    described = a.ec2.describe_launch_templates(LaunchTemplateIds=[template_id])["LaunchTemplates"][0]
    assert (described["DefaultVersionNumber"], described["LatestVersionNumber"]) == (1, 2)
    group.refresh_from_db()
    assert group.verdict == LaunchVerdict.IMDSV1


def test_enforcement_is_held_while_a_source_resolves_to_optional_then_enabled_once_fixed(stack):
    from fleet import enforcement

    a = Aws(stack.sim.endpoint_url)
    image = a.ec2.register_image(Name="legacy")["ImageId"]
    template_id = a.ec2.create_launch_template(
        LaunchTemplateName="api", LaunchTemplateData={"ImageId": image}
    )["LaunchTemplate"]["LaunchTemplateId"]
    account = Account.objects.create(account_id=a.account_id, name="enf", regions=["us-east-1"], role_arn=a.role_arn)
    sync.sync_region(account, "us-east-1")

    held = enforcement.request_enforcement(None, [(account, "us-east-1")])
    item = held.items.get()
    assert item.state == ItemState.HELD
    assert "1 launch source(s) would stop launching: api (IMDSv1 allowed)" in item.reason
    assert "HttpTokensEnforced" not in a.ec2.get_instance_metadata_defaults()["AccountLevel"]  # nothing sent

    fix = source_changes.request_source_fix(None, [LaunchSource.objects.get(account=account, source_id=template_id)])
    wait_for(final(fix), message="fix applied", stack=stack)
    enforce = enforcement.request_enforcement(None, [(account, "us-east-1")])
    wait_for(final(enforce), message="enforcement applied", stack=stack)
    assert enforce.items.get().state == ItemState.APPLIED
    assert a.ec2.get_instance_metadata_defaults()["AccountLevel"]["HttpTokensEnforced"] == "enabled"
    assert account.defaults.get(region="us-east-1").http_tokens_enforced == "enabled"

    launched = a.ec2.run_instances(
        MinCount=1, MaxCount=1, LaunchTemplate={"LaunchTemplateId": template_id}
    )["Instances"][0]
    assert launched["MetadataOptions"]["HttpTokens"] == "required"
    # A launch that would allow IMDSv1 is refused now.
    with pytest.raises(Exception, match="UnsupportedOperation"):
        a.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)

    undo = changes.rollback(enforce, None)
    wait_for(final(undo), message="rollback applied", stack=stack)
    assert "HttpTokensEnforced" not in a.ec2.get_instance_metadata_defaults()["AccountLevel"]


def test_a_pinned_mixed_policy_override_is_fixed_and_rolled_back_through_a_worker(stack):
    """A group whose own template requires IMDSv2 but whose priority override launches from a
    pinned version of a template leaving HttpTokens unset: IMDSv1 allowed, worst of its templates;
    fixing that template with "repoint pinned groups" repoints the override through a worker."""
    a = Aws(stack.sim.endpoint_url)
    image = a.ec2.register_image(Name="legacy")["ImageId"]
    main = a.ec2.create_launch_template(
        LaunchTemplateName="main", LaunchTemplateData={"ImageId": image, "MetadataOptions": {"HttpTokens": "required"}}
    )["LaunchTemplate"]["LaunchTemplateId"]
    legacy = a.ec2.create_launch_template(
        LaunchTemplateName="legacy", LaunchTemplateData={"ImageId": image}
    )["LaunchTemplate"]["LaunchTemplateId"]
    a.group("mixed-asg", 1, MixedInstancesPolicy={"LaunchTemplate": {
        "LaunchTemplateSpecification": {"LaunchTemplateId": main, "Version": "$Default"},
        "Overrides": [{"InstanceType": "c5.large", "LaunchTemplateSpecification": {"LaunchTemplateId": legacy,
                                                                                    "Version": "1"}}],
    }})
    account = Account.objects.create(account_id=a.account_id, name="live", regions=["us-east-1"], role_arn=a.role_arn)
    sync.sync_region(account, "us-east-1")
    group = LaunchSource.objects.get(account=account, source_id="mixed-asg")
    assert group.verdict == LaunchVerdict.IMDSV1
    assert set(group_tokens(a, "mixed-asg").values()) == {"optional"}

    template = LaunchSource.objects.get(account=account, source_id=legacy)
    batch = source_changes.request_source_fix(None, [template], update_pinned=True, comment="fix the override")
    wait_for(final(batch), message="fix applied", stack=stack)
    item = batch.items.get()
    assert item.state == ItemState.APPLIED, (item.error_code, item.error_message)
    described = a.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["mixed-asg"])["AutoScalingGroups"][0]
    assert described["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"][0]["LaunchTemplateSpecification"][
        "Version"] == "2"
    group.refresh_from_db()
    assert group.verdict == LaunchVerdict.IMDSV2

    before = set(group_tokens(a, "mixed-asg"))
    a.autoscaling.set_desired_capacity(AutoScalingGroupName="mixed-asg", DesiredCapacity=2)
    after = group_tokens(a, "mixed-asg")
    (new,) = set(after) - before
    assert after[new] == "required"

    undo = changes.rollback(batch, None)
    wait_for(final(undo), message="rollback applied", stack=stack)
    assert undo.items.get().state == ItemState.APPLIED
    described = a.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["mixed-asg"])["AutoScalingGroups"][0]
    assert described["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"][0]["LaunchTemplateSpecification"][
        "Version"] == "1"
    group.refresh_from_db()
    assert group.verdict == LaunchVerdict.IMDSV1
