"""What a new instance gets, over HTTP: precedence, enforcement, launch templates, ASGs, AMIs."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from .conftest import error_of, metadata_options

AMI = "ami-12345678"


def options_of(ec2, instance_id):
    found = metadata_options(ec2, instance_id)
    return {k: found[k] for k in ("HttpTokens", "HttpPutResponseHopLimit", "HttpEndpoint", "HttpProtocolIpv6", "InstanceMetadataTags")}


def run(ec2, **kwargs):
    kwargs.setdefault("ImageId", AMI)
    return ec2.run_instances(MinCount=1, MaxCount=1, **kwargs)["Instances"][0]["InstanceId"]


def v2_ami(ec2, via="register"):
    if via == "register":
        return ec2.register_image(Name="v2-only", ImdsSupport="v2.0")["ImageId"]
    image_id = ec2.register_image(Name="plain")["ImageId"]
    ec2.modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v2.0"})
    return image_id


def template(ec2, name, metadata=None, image_id=AMI):
    data = {"ImageId": image_id, "InstanceType": "t3.micro"}
    if metadata is not None:
        data["MetadataOptions"] = metadata
    return ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData=data)["LaunchTemplate"]


# --- precedence ---------------------------------------------------------------------------------
def test_plain_launch_gets_ec2_defaults(account):
    _, client = account
    ec2 = client("ec2")
    assert options_of(ec2, run(ec2)) == {
        "HttpTokens": "optional",
        "HttpPutResponseHopLimit": 1,
        "HttpEndpoint": "enabled",
        "HttpProtocolIpv6": "disabled",
        "InstanceMetadataTags": "disabled",
    }


@pytest.mark.parametrize("via", ["register", "modify"])
def test_ami_v2_gives_required_and_hop_limit_2(account, via):
    _, client = account
    ec2 = client("ec2")
    image_id = v2_ami(ec2, via)
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["ImdsSupport"] == "v2.0"
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="imdsSupport")["ImdsSupport"] == {"Value": "v2.0"}
    options = options_of(ec2, run(ec2, ImageId=image_id))
    assert (options["HttpTokens"], options["HttpPutResponseHopLimit"]) == ("required", 2)


def test_ami_without_imds_support_has_none(account):
    _, client = account
    ec2 = client("ec2")
    image_id = ec2.register_image(Name="plain")["ImageId"]
    assert "ImdsSupport" not in ec2.describe_images(ImageIds=[image_id])["Images"][0]


def test_ami_imds_support_cannot_be_undone_or_bogus(account):
    _, client = account
    ec2 = client("ec2")
    image_id = v2_ami(ec2)
    with pytest.raises(ClientError) as excinfo:
        ec2.modify_image_attribute(ImageId=image_id, ImdsSupport={"Value": "v1.0"})
    assert error_of(excinfo)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as excinfo:
        ec2.register_image(Name="bogus-imds", ImdsSupport="v3")
    assert error_of(excinfo)[0] == "InvalidParameterValue"


def test_account_default_beats_ami_and_launch_beats_account(account, unthrottled):
    _, client = account
    ec2 = client("ec2")
    image_id = v2_ami(ec2)
    ec2.modify_instance_metadata_defaults(HttpTokens="optional")
    options = options_of(ec2, run(ec2, ImageId=image_id))
    # The seed's example: AMI v2.0 + account default optional -> optional; the hop limit, which
    # the account leaves unset, still comes from the AMI.
    assert (options["HttpTokens"], options["HttpPutResponseHopLimit"]) == ("optional", 2)
    launched = run(ec2, ImageId=image_id, MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 3})
    assert options_of(ec2, launched)["HttpTokens"] == "required"
    assert options_of(ec2, launched)["HttpPutResponseHopLimit"] == 3
    ec2.modify_instance_metadata_defaults(HttpTokens="no-preference")
    assert options_of(ec2, run(ec2, ImageId=image_id))["HttpTokens"] == "required"


def test_template_options_reach_the_instance_and_launch_overrides_them(account):
    _, client = account
    ec2 = client("ec2")
    lt = template(ec2, "web", {"HttpTokens": "required", "HttpPutResponseHopLimit": 2})
    spec = {"LaunchTemplateId": lt["LaunchTemplateId"]}
    from_template = run(ec2, LaunchTemplate=spec)
    assert options_of(ec2, from_template)["HttpTokens"] == "required"
    assert options_of(ec2, from_template)["HttpPutResponseHopLimit"] == 2
    tags = ec2.describe_instances(InstanceIds=[from_template])["Reservations"][0]["Instances"][0]["Tags"]
    assert {"Key": "aws:ec2launchtemplate:id", "Value": lt["LaunchTemplateId"]} in tags
    overridden = run(ec2, LaunchTemplate=spec, MetadataOptions={"HttpTokens": "optional"})
    assert options_of(ec2, overridden)["HttpTokens"] == "optional"
    assert options_of(ec2, overridden)["HttpPutResponseHopLimit"] == 2  # unset in the launch: the template's


def test_template_leaving_tokens_unset_falls_through_to_account_default(account, unthrottled):
    _, client = account
    ec2 = client("ec2")
    lt = template(ec2, "api", {"HttpPutResponseHopLimit": 3})
    ec2.modify_instance_metadata_defaults(HttpTokens="required")
    launched = run(ec2, LaunchTemplate={"LaunchTemplateName": "api"})
    assert options_of(ec2, launched)["HttpTokens"] == "required"
    assert options_of(ec2, launched)["HttpPutResponseHopLimit"] == 3
    assert lt["LaunchTemplateName"] == "api"


def test_bad_launch_values_are_refused(account):
    _, client = account
    ec2 = client("ec2")
    with pytest.raises(ClientError) as excinfo:
        run(ec2, MetadataOptions={"HttpPutResponseHopLimit": 99})
    assert error_of(excinfo)[0] == "InvalidParameterValue"


# --- enforcement --------------------------------------------------------------------------------
def test_enforcement_is_read_back_and_cleared(account, unthrottled):
    _, client = account
    ec2 = client("ec2")
    ec2.modify_instance_metadata_defaults(HttpTokensEnforced="enabled")
    assert ec2.get_instance_metadata_defaults()["AccountLevel"]["HttpTokensEnforced"] == "enabled"
    ec2.modify_instance_metadata_defaults(HttpTokensEnforced="no-preference")
    assert "HttpTokensEnforced" not in ec2.get_instance_metadata_defaults()["AccountLevel"]
    with pytest.raises(ClientError) as excinfo:
        ec2.modify_instance_metadata_defaults(HttpTokensEnforced="yes")
    assert error_of(excinfo)[0] == "InvalidParameterValue"


def test_enforcement_refuses_launches_that_resolve_to_optional(account, unthrottled):
    _, client = account
    ec2 = client("ec2")
    existing = run(ec2)
    ec2.modify_instance_metadata_defaults(HttpTokensEnforced="enabled")
    with pytest.raises(ClientError) as excinfo:
        run(ec2)
    code, status, message = error_of(excinfo)
    assert (code, status) == ("UnsupportedOperation", 400)
    assert "httpTokensEnforced" in message
    lt = template(ec2, "optional-lt", {"HttpTokens": "optional"})
    with pytest.raises(ClientError):
        run(ec2, LaunchTemplate={"LaunchTemplateId": lt["LaunchTemplateId"]})
    # Resolving to required by any level is fine: the launch, the AMI, the account default.
    assert options_of(ec2, run(ec2, MetadataOptions={"HttpTokens": "required"}))["HttpTokens"] == "required"
    assert options_of(ec2, run(ec2, ImageId=v2_ami(ec2)))["HttpTokens"] == "required"
    # Existing instances keep running, but IMDSv1 cannot be switched back on.
    ec2.modify_instance_metadata_options(InstanceId=existing, HttpTokens="required")
    with pytest.raises(ClientError) as excinfo:
        ec2.modify_instance_metadata_options(InstanceId=existing, HttpTokens="optional")
    assert error_of(excinfo)[0] == "UnsupportedOperation"


# --- launch templates ---------------------------------------------------------------------------
def test_source_version_is_honoured_and_sent_data_replaces_whole_parameters(account):
    _, client = account
    ec2 = client("ec2")
    lt = template(ec2, "src", {"HttpTokens": "optional", "HttpPutResponseHopLimit": 2})
    lt_id = lt["LaunchTemplateId"]
    ec2.create_launch_template_version(LaunchTemplateId=lt_id, LaunchTemplateData={"InstanceType": "m5.large"})
    created = ec2.create_launch_template_version(
        LaunchTemplateId=lt_id, SourceVersion="1", VersionDescription="by imdsweb batch #1",
        LaunchTemplateData={"MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2}},
    )["LaunchTemplateVersion"]
    assert created["VersionNumber"] == 3
    data = created["LaunchTemplateData"]
    assert data["ImageId"] == AMI and data["InstanceType"] == "t3.micro"  # from version 1, not 2
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    described = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id, Versions=["3"])
    assert described["LaunchTemplateVersions"][0]["VersionDescription"] == "by imdsweb batch #1"
    with pytest.raises(ClientError) as excinfo:
        ec2.create_launch_template_version(LaunchTemplateId=lt_id, SourceVersion="9", LaunchTemplateData={})
    assert error_of(excinfo)[0].startswith("InvalidLaunchTemplate")


def test_default_and_latest_versions_launch_what_they_say(account):
    _, client = account
    ec2 = client("ec2")
    lt_id = template(ec2, "versions", {"HttpTokens": "optional"})["LaunchTemplateId"]
    ec2.create_launch_template_version(
        LaunchTemplateId=lt_id, SourceVersion="1", LaunchTemplateData={"MetadataOptions": {"HttpTokens": "required"}}
    )
    default = run(ec2, LaunchTemplate={"LaunchTemplateId": lt_id, "Version": "$Default"})
    latest = run(ec2, LaunchTemplate={"LaunchTemplateId": lt_id, "Version": "$Latest"})
    assert options_of(ec2, default)["HttpTokens"] == "optional"
    assert options_of(ec2, latest)["HttpTokens"] == "required"
    ec2.modify_launch_template(LaunchTemplateId=lt_id, DefaultVersion="2")
    assert options_of(ec2, run(ec2, LaunchTemplate={"LaunchTemplateId": lt_id}))["HttpTokens"] == "required"


def test_describe_launch_templates_filters_and_pages(account):
    _, client = account
    ec2 = client("ec2")
    for n in range(7):
        ec2.create_launch_template(
            LaunchTemplateName=f"{'web' if n % 2 else 'batch'}-{n}", LaunchTemplateData={"ImageId": AMI},
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": "Team", "Value": f"t{n % 3}"}]}],
        )
    names = [t["LaunchTemplateName"] for t in ec2.describe_launch_templates(
        Filters=[{"Name": "launch-template-name", "Values": ["web-*"]}])["LaunchTemplates"]]
    assert names == ["web-1", "web-3", "web-5"]
    tagged = ec2.describe_launch_templates(Filters=[{"Name": "tag:Team", "Values": ["t0"]}])["LaunchTemplates"]
    assert [t["LaunchTemplateName"] for t in tagged] == ["batch-0", "web-3", "batch-6"]
    assert tagged[0]["Tags"] == [{"Key": "Team", "Value": "t0"}]
    first = ec2.describe_launch_templates(MaxResults=3)
    assert len(first["LaunchTemplates"]) == 3 and first["NextToken"]
    paged = [t["LaunchTemplateName"] for p in ec2.get_paginator("describe_launch_templates").paginate(
        PaginationConfig={"PageSize": 2}) for t in p["LaunchTemplates"]]
    assert paged == [f"{'web' if n % 2 else 'batch'}-{n}" for n in range(7)]
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_launch_templates(Filters=[{"Name": "bogus", "Values": ["x"]}])
    assert error_of(excinfo)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_launch_templates(LaunchTemplateIds=["lt-0123456789abcdef0"])
    assert error_of(excinfo)[0] == "InvalidLaunchTemplateId.NotFound"


def test_describe_launch_template_versions_pages_instead_of_truncating(account):
    _, client = account
    ec2 = client("ec2")
    lt_id = template(ec2, "many", {"HttpTokens": "optional"})["LaunchTemplateId"]
    for _ in range(19):
        ec2.create_launch_template_version(LaunchTemplateId=lt_id, SourceVersion="$Latest", LaunchTemplateData={})
    numbers = [v["VersionNumber"] for p in ec2.get_paginator("describe_launch_template_versions").paginate(
        LaunchTemplateId=lt_id, PaginationConfig={"PageSize": 6}) for v in p["LaunchTemplateVersions"]]
    assert numbers == list(range(1, 21))
    # $Default and $Latest of every template in one call, each version once.
    both = ec2.describe_launch_template_versions(Versions=["$Default", "$Latest"])["LaunchTemplateVersions"]
    assert sorted(v["VersionNumber"] for v in both if v["LaunchTemplateId"] == lt_id) == [1, 20]


# --- Auto Scaling -------------------------------------------------------------------------------
def asg(client, name, **spec):
    autoscaling = client("autoscaling")
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=name, MinSize=0, MaxSize=10, DesiredCapacity=spec.pop("desired", 1),
        AvailabilityZones=["us-east-1a"], **spec,
    )
    return autoscaling


def group_instances(autoscaling, name):
    group = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    return [i["InstanceId"] for i in group["Instances"]]


def test_asg_scale_out_follows_the_template_version_it_names(account):
    _, client = account
    ec2 = client("ec2")
    lt_id = template(ec2, "asg-lt")["LaunchTemplateId"]  # leaves HttpTokens unset
    ec2.create_launch_template_version(
        LaunchTemplateId=lt_id, SourceVersion="1", LaunchTemplateData={"MetadataOptions": {"HttpTokens": "required"}}
    )
    autoscaling = asg(client, "on-default", LaunchTemplate={"LaunchTemplateId": lt_id, "Version": "$Default"})
    (first,) = group_instances(autoscaling, "on-default")
    assert options_of(ec2, first)["HttpTokens"] == "optional"
    asg(client, "on-latest", LaunchTemplate={"LaunchTemplateId": lt_id, "Version": "$Latest"})
    (latest,) = group_instances(autoscaling, "on-latest")
    assert options_of(ec2, latest)["HttpTokens"] == "required"
    tags = {t["Key"]: t["Value"] for t in ec2.describe_instances(InstanceIds=[latest])["Reservations"][0]["Instances"][0]["Tags"]}
    assert tags["aws:ec2launchtemplate:version"] == "2"
    assert tags["aws:autoscaling:groupName"] == "on-latest"

    # Fix at the source, then scale out: new instances get the new default; old ones keep theirs.
    ec2.modify_launch_template(LaunchTemplateId=lt_id, DefaultVersion="2")
    autoscaling.set_desired_capacity(AutoScalingGroupName="on-default", DesiredCapacity=3)
    new = [i for i in group_instances(autoscaling, "on-default") if i != first]
    assert len(new) == 2 and all(options_of(ec2, i)["HttpTokens"] == "required" for i in new)
    assert options_of(ec2, first)["HttpTokens"] == "optional"
    autoscaling.update_auto_scaling_group(
        AutoScalingGroupName="on-default", LaunchTemplate={"LaunchTemplateId": lt_id, "Version": "1"}, DesiredCapacity=4
    )
    newest = [i for i in group_instances(autoscaling, "on-default") if i != first and i not in new]
    assert [options_of(ec2, i)["HttpTokens"] for i in newest] == ["optional"]


def test_mixed_instances_policy_launches_its_priority_override_from_the_override_template(account):
    """A MixedInstancesPolicy override with its own LaunchTemplateSpecification launches from that
    template (moto ignores it); the first override has the priority."""
    _, client = account
    ec2 = client("ec2")
    main = template(ec2, "mixed-main", {"HttpTokens": "required"})["LaunchTemplateId"]
    legacy = template(ec2, "mixed-override")["LaunchTemplateId"]  # leaves HttpTokens unset
    ec2.create_launch_template_version(
        LaunchTemplateId=legacy, SourceVersion="1", LaunchTemplateData={"MetadataOptions": {"HttpTokens": "required"}}
    )

    def policy(first_version):
        return {"LaunchTemplate": {
            "LaunchTemplateSpecification": {"LaunchTemplateId": main, "Version": "$Default"},
            "Overrides": [
                {"InstanceType": "c5.large", "LaunchTemplateSpecification": {"LaunchTemplateId": legacy,
                                                                              "Version": first_version}},
                {"InstanceType": "m5.large"},
            ],
        }}

    autoscaling = asg(client, "mixed", MixedInstancesPolicy=policy("1"))
    described = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["mixed"])["AutoScalingGroups"][0]
    overrides = described["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert overrides[0]["LaunchTemplateSpecification"] == {"LaunchTemplateId": legacy, "Version": "1"}
    (first,) = group_instances(autoscaling, "mixed")
    instance = ec2.describe_instances(InstanceIds=[first])["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert (tags["aws:ec2launchtemplate:id"], tags["aws:ec2launchtemplate:version"]) == (legacy, "1")
    assert instance["InstanceType"] == "c5.large"
    assert options_of(ec2, first)["HttpTokens"] == "optional"  # v1 of the override leaves it unset

    # Point the override at v2 (UpdateAutoScalingGroup takes the whole MixedInstancesPolicy): new launches follow.
    autoscaling.update_auto_scaling_group(AutoScalingGroupName="mixed", MixedInstancesPolicy=policy("2"),
                                          DesiredCapacity=2)
    (second,) = [i for i in group_instances(autoscaling, "mixed") if i != first]
    assert options_of(ec2, second)["HttpTokens"] == "required"
    assert options_of(ec2, first)["HttpTokens"] == "optional"


def test_launch_configuration_options_reach_asg_instances(account):
    _, client = account
    ec2 = client("ec2")
    autoscaling = client("autoscaling")
    autoscaling.create_launch_configuration(
        LaunchConfigurationName="legacy", ImageId=AMI, InstanceType="t3.micro",
        MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
    )
    described = autoscaling.describe_launch_configurations(LaunchConfigurationNames=["legacy"])
    assert described["LaunchConfigurations"][0]["MetadataOptions"]["HttpTokens"] == "required"
    asg(client, "legacy-asg", LaunchConfigurationName="legacy", desired=2)
    ids = group_instances(autoscaling, "legacy-asg")
    assert [options_of(ec2, i)["HttpPutResponseHopLimit"] for i in ids] == [2, 2]
    assert {options_of(ec2, i)["HttpTokens"] for i in ids} == {"required"}


def test_enforcement_makes_asg_launches_fail_not_the_api_call(account, unthrottled):
    _, client = account
    ec2 = client("ec2")
    lt_id = template(ec2, "enf")["LaunchTemplateId"]
    autoscaling = asg(client, "enf-asg", LaunchTemplate={"LaunchTemplateId": lt_id}, desired=0)
    ec2.modify_instance_metadata_defaults(HttpTokensEnforced="enabled")
    autoscaling.set_desired_capacity(AutoScalingGroupName="enf-asg", DesiredCapacity=2)
    assert group_instances(autoscaling, "enf-asg") == []
    ec2.create_launch_template_version(
        LaunchTemplateId=lt_id, SourceVersion="1", LaunchTemplateData={"MetadataOptions": {"HttpTokens": "required"}}
    )
    ec2.modify_launch_template(LaunchTemplateId=lt_id, DefaultVersion="2")
    autoscaling.set_desired_capacity(AutoScalingGroupName="enf-asg", DesiredCapacity=1)
    (launched,) = group_instances(autoscaling, "enf-asg")
    assert options_of(ec2, launched)["HttpTokens"] == "required"
