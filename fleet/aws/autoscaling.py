"""Auto Scaling calls: read groups and launch configurations, point a group at a template version.

Auto Scaling has its own API and limits (not EC2's buckets); its calls are paced by their own
buckets in ``IMDSWEB_RATE_LIMITS``.
"""

import copy

from .. import ratelimit
from .call import call
from .errors import PermanentAwsError
from .session import client

GROUP_PAGE_SIZE = 100  # DescribeAutoScalingGroups MaxRecords maximum
CONFIGURATION_PAGE_SIZE = 100  # DescribeLaunchConfigurations MaxRecords maximum


def _pages(account, region, operation, action, page_size):
    autoscaling = call(client, account, region, "autoscaling")
    pages = iter(autoscaling.get_paginator(operation).paginate(PaginationConfig={"PageSize": page_size}))
    while True:
        ratelimit.acquire(account.account_id, region, action)
        page = call(next, pages, None)
        if page is None:
            return
        yield page


def describe_auto_scaling_group_pages(account, region):
    """Yield DescribeAutoScalingGroups pages (lists of group dicts)."""
    for page in _pages(
        account, region, "describe_auto_scaling_groups", "DescribeAutoScalingGroups", GROUP_PAGE_SIZE
    ):
        yield page.get("AutoScalingGroups", [])


def describe_launch_configuration_pages(account, region):
    """Yield DescribeLaunchConfigurations pages (lists of launch configuration dicts)."""
    for page in _pages(
        account, region, "describe_launch_configurations", "DescribeLaunchConfigurations", CONFIGURATION_PAGE_SIZE
    ):
        yield page.get("LaunchConfigurations", [])


def update_auto_scaling_group(account, region, group_name, template_id, version, token_taken=False):
    """Point the group's launch template at ``version`` ($Default, $Latest or a number); only
    new launches are affected. Returns the request id."""
    ratelimit.acquire(account.account_id, region, "UpdateAutoScalingGroup", already_taken=token_taken)
    autoscaling = call(client, account, region, "autoscaling", max_attempts=1)
    response = call(
        autoscaling.update_auto_scaling_group,
        AutoScalingGroupName=group_name,
        LaunchTemplate={"LaunchTemplateId": template_id, "Version": str(version)},
    )
    return response.get("ResponseMetadata", {}).get("RequestId", "")


def update_mixed_group_templates(account, region, group_name, template_id, main_version=None, override_versions=None):
    """Point a MixedInstancesPolicy group's own launch template (``main_version``) and/or some of
    its overrides (``override_versions`` {override index: version}) at versions of ``template_id``.

    UpdateAutoScalingGroup replaces the policy's ``LaunchTemplate`` (its Overrides list whole), so
    the group is read first and sent back with only those versions changed. Refused (permanent)
    when the group no longer names the template there: a sync shows what it names now."""
    ratelimit.acquire(account.account_id, region, "DescribeAutoScalingGroups")
    autoscaling = call(client, account, region, "autoscaling", max_attempts=1)
    found = call(autoscaling.describe_auto_scaling_groups, AutoScalingGroupNames=[group_name]).get(
        "AutoScalingGroups", [])
    policy = found[0].get("MixedInstancesPolicy") if found else None
    if not policy:
        raise PermanentAwsError("ValidationError", f"Auto Scaling group {group_name} has no mixed instances policy")
    launch = copy.deepcopy(policy["LaunchTemplate"])
    overrides = launch.get("Overrides") or []
    # Describe answers both the id and the name; a request takes one of them, not both.
    for spec in [launch.get("LaunchTemplateSpecification"), *(o.get("LaunchTemplateSpecification") for o in overrides)]:
        if spec and spec.get("LaunchTemplateId"):
            spec.pop("LaunchTemplateName", None)

    def repoint(spec, where, version):
        if not spec or spec.get("LaunchTemplateId", template_id) != template_id:
            raise PermanentAwsError(
                "ValidationError", f"{where} of Auto Scaling group {group_name} no longer names {template_id}: sync first")
        spec["Version"] = str(version)

    if main_version is not None:
        repoint(launch.get("LaunchTemplateSpecification"), "the launch template", main_version)
    for index, version in (override_versions or {}).items():
        index = int(index)
        override = overrides[index] if index < len(overrides) else {}
        repoint(override.get("LaunchTemplateSpecification"), f"override #{index + 1}", version)
    ratelimit.acquire(account.account_id, region, "UpdateAutoScalingGroup")
    response = call(autoscaling.update_auto_scaling_group, AutoScalingGroupName=group_name,
                    MixedInstancesPolicy={"LaunchTemplate": launch})
    return response.get("ResponseMetadata", {}).get("RequestId", "")
