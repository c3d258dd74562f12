"""Issue 15: instances whose source a managed service owns (EKS, Elastic Beanstalk, EMR,
CloudFormation) are held by default in instance bulk changes, by the one decision rule
(fleet.changes.decision), with the owner as the reason; an explicit per-batch override queues
them. Runs on PostgreSQL (INSERT ... SELECT) and SQLite (bulk_create): see scripts/test.sh."""

import pytest
from django.urls import reverse

from fleet import changes
from fleet.changes.decision import Outcome
from fleet.choices import ItemState, ManagedOwner, SourceKind
from fleet.models import ChangeBatch, Instance
from fleet.tests.factories import AccountFactory, InstanceFactory, LaunchSourceFactory

pytestmark = pytest.mark.django_db
NEW = reverse("fleet:change_new")
HOP_TWO = {"hop_limit": 2}
TAIL = ": a change made outside the owner breaks or drifts it; tick the owner override to change it anyway"


@pytest.fixture
def fleet():
    account = AccountFactory(name="prod")
    eks_template = LaunchSourceFactory(
        account=account, name="eks-nodes", owner=ManagedOwner.EKS, owner_detail="cluster prod, node group ng-1"
    )
    stack_group = LaunchSourceFactory(
        account=account, kind=SourceKind.AUTO_SCALING_GROUP, source_id="web-asg", name="web-asg",
        owner=ManagedOwner.CLOUDFORMATION, owner_detail="web-stack",
    )
    plain_template = LaunchSourceFactory(account=account, name="plain")
    gone_owned = LaunchSourceFactory(account=account, name="old-eks", owner=ManagedOwner.EKS, owner_detail="old",
                                     gone_at=plain_template.last_seen)
    other_region = LaunchSourceFactory(account=account, region="eu-west-1", name="eu-eks", owner=ManagedOwner.EKS,
                                       owner_detail="eu")
    return {
        "eks": InstanceFactory(account=account, launch_template_id=eks_template.source_id),
        "stack": InstanceFactory(account=account, autoscaling_group="web-asg",
                                 launch_template_id=plain_template.source_id),
        "emr_tags": InstanceFactory(account=account, tags={"aws:elasticmapreduce:job-flow-id": "j-1ABC"}),
        "plain": InstanceFactory(account=account, launch_template_id=plain_template.source_id),
        "gone_source": InstanceFactory(account=account, launch_template_id=gone_owned.source_id),
        # The same template id in another region is another template: not this instance's source.
        "other_region": InstanceFactory(account=account, launch_template_id=other_region.source_id),
        "stack_group": stack_group,
    }


EXPECTED = {
    "eks": "Amazon EKS (cluster prod, node group ng-1) owns launch template eks-nodes",
    "stack": "CloudFormation (web-stack) owns Auto Scaling group web-asg",
    "emr_tags": "Amazon EMR (aws:elasticmapreduce:job-flow-id j-1ABC) manages this instance",
}


def selected(fleet):
    return Instance.objects.filter(pk__in=[v.pk for k, v in fleet.items() if k != "stack_group"])


@pytest.mark.parametrize("desired", [changes.REQUIRE_IMDSV2, HOP_TWO], ids=["require-imdsv2", "hop-limit"])
def test_owned_instances_are_held_with_the_owner_as_reason(fleet, desired):
    """Items (this database's insert path) and the plan agree, instance by instance."""
    plan = changes.plan_change(selected(fleet), desired)
    batch = changes.request_change(None, selected(fleet), desired)
    assert not batch.override_owner
    for name, instance in fleet.items():
        if name == "stack_group":
            continue
        item = batch.items.get(instance=instance)
        if name in EXPECTED:
            assert (item.state, item.outcome, item.reason) == (ItemState.HELD, Outcome.HELD_OWNER,
                                                                EXPECTED[name] + TAIL), name
        else:
            assert (item.state, item.outcome) == (ItemState.QUEUED, Outcome.QUEUED), name
    assert plan.outcomes[Outcome.HELD_OWNER] == 3
    assert (plan.total, plan.to_change, plan.held) == (6, 3, 3)
    assert plan.reconciles
    assert {code: batch.items.filter(outcome=code).count() for code in Outcome.values} == plan.outcomes


def test_the_override_queues_them_and_is_recorded_on_the_batch(fleet):
    plan = changes.plan_change(selected(fleet), HOP_TWO, override_owner=True)
    assert (plan.to_change, plan.held) == (6, 0)
    batch = changes.request_change(None, selected(fleet), HOP_TWO, override_owner=True)
    assert batch.override_owner
    assert batch.items.filter(state=ItemState.QUEUED).count() == 6


def test_the_owner_holds_before_the_readiness_gate(fleet):
    """An owned instance with IMDSv1 calls is held for its owner first (one reason, the stronger);
    with the owner overridden the readiness gate still holds it."""
    Instance.objects.filter(pk=fleet["eks"].pk).update(v1_calls=5)
    only = Instance.objects.filter(pk=fleet["eks"].pk)
    assert changes.plan_change(only, changes.REQUIRE_IMDSV2).outcomes[Outcome.HELD_OWNER] == 1
    plan = changes.plan_change(only, changes.REQUIRE_IMDSV2, override_owner=True)
    assert plan.outcomes[Outcome.HELD_OWNER] == 0 and plan.outcomes[Outcome.HELD_CALLS] == 1


def test_only_owned_instances_selected_refuses_without_the_override(fleet):
    owned = Instance.objects.filter(pk__in=[fleet[name].pk for name in EXPECTED])
    with pytest.raises(changes.ChangeRefused, match="3 owned by a managed service"):
        changes.request_change(None, owned, HOP_TWO)


def test_confirmation_page_warns_links_exactly_them_and_offers_the_override(operator, fleet):
    instances = [v for k, v in fleet.items() if k != "stack_group"]
    query = "&".join(f"ids={i.instance_id}" for i in instances)
    response = operator.get(f"{NEW}?{query}&http_tokens=required")
    assert response.status_code == 200
    plan, links = response.context["preview"], response.context["outcome_links"]
    html = response.content.decode()
    assert "3 instance(s) are launched from a source a managed service owns" in html
    assert links["held_owner"].replace("&", "&amp;") in html
    listed = operator.get(links["held_owner"])
    assert listed.status_code == 200
    assert listed.context["total"] == 3
    assert {row.record.instance_id for row in listed.context["table"].paginated_rows} == {
        fleet[name].instance_id for name in EXPECTED}
    assert 'name="override_owner"' in html
    assert plan.outcomes[Outcome.HELD_OWNER] == 3
    with_override = operator.get(f"{NEW}?{query}&http_tokens=required&override_owner=on")
    assert with_override.context["preview"].outcomes[Outcome.HELD_OWNER] == 0
    posted = operator.post(NEW, {"ids": [i.instance_id for i in instances], "http_tokens": "required",
                                 "override_owner": "on", "request_token": "t-owner"})
    assert posted.status_code == 302
    batch = ChangeBatch.objects.get(request_token="t-owner")
    assert batch.override_owner and not batch.items.filter(outcome=Outcome.HELD_OWNER).exists()


def test_api_plan_and_queue_take_the_override(client, fleet):
    from fleet.models import ApiToken
    from fleet.tests.factories import UserFactory

    _token, key = ApiToken.issue(UserFactory(role="operator"), "script")
    headers = {"Authorization": f"Bearer {key}"}
    instances = [v.instance_id for k, v in fleet.items() if k != "stack_group"]

    def post(path, body):
        return client.post(f"/api/v1/{path}", body, content_type="application/json", headers=headers)

    held = post("changes/plan/", {"ids": instances, "hop_limit": 2})
    assert held.status_code == 200, held.content
    assert held.json()["outcomes"]["held_owner"] == 3
    overridden = post("changes/plan/", {"ids": instances, "hop_limit": 2, "override_owner": True}).json()
    assert overridden["outcomes"]["held_owner"] == 0 and overridden["to_change"] == 6
    queued = post("changes/", {"plan_token": overridden["plan_token"]})
    assert queued.status_code == 201, queued.content
    assert queued.json()["override_owner"] is True


def test_the_instance_page_names_the_owner_as_the_rule_does(operator, fleet):
    from fleet.choices import ManagedOwner as Owner

    page = operator.get(reverse("fleet:instance_detail", args=[fleet["eks"].instance_id]))
    assert page.context["owner"] == Owner.EKS.label
    assert page.context["owner_detail"] == "cluster prod, node group ng-1, owns launch template eks-nodes"
    assert "bulk changes hold it unless you tick the owner override" in page.content.decode()
    emr = operator.get(reverse("fleet:instance_detail", args=[fleet["emr_tags"].instance_id]))
    assert (emr.context["owner"], emr.context["owner_detail"]) == (Owner.EMR.label, "j-1ABC")
    plain = operator.get(reverse("fleet:instance_detail", args=[fleet["plain"].instance_id]))
    assert plain.context["owner"] == ""
