"""The only code in imdsweb that talks to AWS (and the only importer of boto3).

One function per API call, every call rate-limited through the shared buckets, every failure
translated into :class:`RetryableAwsError` or :class:`PermanentAwsError`.
"""

from . import organizations, sts
from .cloudwatch import get_metadata_usage
from .ec2 import (
    describe_instance_pages,
    describe_instances_by_ids,
    describe_regions,
    first_instance_id,
    get_instance_metadata_defaults,
    modify_instance_metadata_defaults,
    modify_instance_metadata_options,
    prepare_modify,
)
from .errors import AwsError, DryRunSucceeded, PermanentAwsError, RetryableAwsError
from .session import warm_up

__all__ = [
    "AwsError",
    "DryRunSucceeded",
    "PermanentAwsError",
    "RetryableAwsError",
    "describe_instance_pages",
    "describe_instances_by_ids",
    "describe_regions",
    "first_instance_id",
    "get_instance_metadata_defaults",
    "get_metadata_usage",
    "modify_instance_metadata_defaults",
    "modify_instance_metadata_options",
    "organizations",
    "prepare_modify",
    "sts",
    "warm_up",
]
