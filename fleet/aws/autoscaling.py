"""Auto Scaling calls: read groups and launch configurations, point a group at a template version.

Auto Scaling has its own API and limits (not EC2's buckets); its calls are paced by their own
buckets in ``IMDSWEB_RATE_LIMITS``.
"""

from .. import ratelimit
from .call import call
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
