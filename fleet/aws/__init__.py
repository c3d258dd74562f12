"""The only code in imdsweb that talks to AWS (and the only importer of boto3).

One function per API call, every call rate-limited through the shared buckets, every failure
translated into :class:`RetryableAwsError` or :class:`PermanentAwsError`.
"""

from . import organizations, sts
from .autoscaling import (
    describe_auto_scaling_group_pages,
    describe_launch_configuration_pages,
    update_auto_scaling_group,
    update_mixed_group_templates,
)
from .cloudwatch import get_metadata_usage, get_rejected_calls
from .ec2 import (
    create_launch_template_version,
    describe_images,
    describe_instance_pages,
    describe_instances_by_ids,
    describe_launch_template_pages,
    describe_launch_template_version_pages,
    describe_regions,
    first_instance_id,
    get_instance_metadata_defaults,
    modify_instance_metadata_defaults,
    modify_instance_metadata_options,
    modify_launch_template,
    prepare_modify,
)
from .errors import AwsError, DryRunSucceeded, PermanentAwsError, RetryableAwsError
from .session import warm_up

__all__ = [
    "AwsError",
    "DryRunSucceeded",
    "PermanentAwsError",
    "RetryableAwsError",
    "create_launch_template_version",
    "describe_auto_scaling_group_pages",
    "describe_images",
    "describe_instance_pages",
    "describe_instances_by_ids",
    "describe_regions",
    "first_instance_id",
    "describe_launch_configuration_pages",
    "describe_launch_template_pages",
    "describe_launch_template_version_pages",
    "get_instance_metadata_defaults",
    "get_metadata_usage",
    "get_rejected_calls",
    "modify_instance_metadata_defaults",
    "modify_instance_metadata_options",
    "modify_launch_template",
    "organizations",
    "prepare_modify",
    "sts",
    "update_auto_scaling_group",
    "update_mixed_group_templates",
    "warm_up",
]
