"""EC2 calls: read the fleet and the account defaults, modify metadata options and defaults."""

from django.conf import settings

from .. import ratelimit
from .call import call
from .session import client

# Model field name -> the AWS parameter / response member.
OPTION_PARAMS = {
    "http_tokens": "HttpTokens",
    "hop_limit": "HttpPutResponseHopLimit",
    "http_endpoint": "HttpEndpoint",
    "http_protocol_ipv6": "HttpProtocolIpv6",
    "instance_metadata_tags": "InstanceMetadataTags",
}
DEFAULTS_PARAMS = {k: v for k, v in OPTION_PARAMS.items() if k != "http_protocol_ipv6"}

PAGE_SIZE = 1000
IDS_PER_FILTER = 200


def _present(value):
    """A member AWS left out, or sent empty, is absent: ``None``, the one value stored for it."""
    return None if value in (None, "") else value


def options_from_aws(metadata_options):
    """AWS MetadataOptions -> our field names (plus ``metadata_state``); absent members are None."""
    options = {field: _present(metadata_options.get(param)) for field, param in OPTION_PARAMS.items()}
    options["metadata_state"] = _present(metadata_options.get("State"))
    return options


def describe_instance_pages(account, region, filters=None):
    """Yield DescribeInstances pages (lists of instance dicts) of up to 1,000 instances."""
    ec2 = call(client, account, region, "ec2")
    paginator = ec2.get_paginator("describe_instances")
    kwargs = {"PaginationConfig": {"PageSize": PAGE_SIZE}}
    if filters:
        kwargs["Filters"] = filters
    pages = iter(paginator.paginate(**kwargs))
    while True:
        ratelimit.acquire(account.account_id, region, "DescribeInstances")
        page = call(next, pages, None)
        if page is None:
            return
        yield [instance for reservation in page.get("Reservations", []) for instance in reservation["Instances"]]


def describe_instances_by_ids(account, region, instance_ids):
    """Yield instance dicts for the given ids, ≤ 200 ids per call through the instance-id filter."""
    ids = list(instance_ids)
    for start in range(0, len(ids), IDS_PER_FILTER):
        chunk = ids[start : start + IDS_PER_FILTER]
        for page in describe_instance_pages(account, region, [{"Name": "instance-id", "Values": chunk}]):
            yield from page


def prepare_modify(account, region):
    """Build the client the modify calls use (AssumeRole included), before any token is taken.

    The change engine takes a token and calls at once; a client built in between would hold the
    token while AWS's bucket, which only sees the call, refills on its own schedule.
    """
    call(client, account, region, "ec2", max_attempts=1)


def modify_instance_metadata_options(account, region, instance_id, changes, dry_run=False, token_taken=False):
    """Send only ``changes`` (our field names). Returns the response's options and request id.

    Raises DryRunSucceeded for an accepted dry run, else Retryable/PermanentAwsError.
    """
    params = {OPTION_PARAMS[field]: value for field, value in changes.items()}
    ratelimit.acquire(account.account_id, region, "ModifyInstanceMetadataOptions", already_taken=token_taken)
    # One attempt only: throttling is paced by our buckets and retried by the change engine,
    # which records attempts on the item.
    ec2 = call(client, account, region, "ec2", max_attempts=1)
    response = call(ec2.modify_instance_metadata_options, InstanceId=instance_id, DryRun=dry_run, **params)
    result = options_from_aws(response.get("InstanceMetadataOptions", {}))
    result["request_id"] = response.get("ResponseMetadata", {}).get("RequestId", "")
    return result


def get_instance_metadata_defaults(account, region, token_taken=False):
    """Account-level defaults in our field names; settings never set are absent (None)."""
    ratelimit.acquire(account.account_id, region, "GetInstanceMetadataDefaults", already_taken=token_taken)
    ec2 = call(client, account, region, "ec2", max_attempts=settings.IMDSWEB_AWS_MAX_ATTEMPTS)
    level = call(ec2.get_instance_metadata_defaults).get("AccountLevel", {})
    values = {field: _present(level.get(param)) for field, param in DEFAULTS_PARAMS.items()}
    values["managed_by"] = level.get("ManagedBy") or ""
    values["managed_exception_message"] = level.get("ManagedExceptionMessage") or ""
    return values


def modify_instance_metadata_defaults(account, region, changes, dry_run=False, token_taken=False):
    """Send only ``changes``; ``no-preference`` / hop ``-1`` clear a setting. Returns the request id."""
    params = {DEFAULTS_PARAMS[field]: value for field, value in changes.items()}
    ratelimit.acquire(account.account_id, region, "ModifyInstanceMetadataDefaults", already_taken=token_taken)
    ec2 = call(client, account, region, "ec2", max_attempts=1)
    response = call(ec2.modify_instance_metadata_defaults, DryRun=dry_run, **params)
    return response.get("ResponseMetadata", {}).get("RequestId", "")


def describe_regions(account, region):
    """Every region with its opt-in status (DescribeRegions, AllRegions=True):
    [{"region": "us-east-1", "opt_in_status": "opt-in-not-required" | "opted-in" | "not-opted-in"}].

    Only the first two can be called; ``not-opted-in`` regions are listed so that discovery can say
    which regions it left out and why.
    """
    ratelimit.acquire(account.account_id, region, "DescribeRegions")
    ec2 = call(client, account, region, "ec2", max_attempts=settings.IMDSWEB_AWS_MAX_ATTEMPTS)
    regions = call(ec2.describe_regions, AllRegions=True)["Regions"]
    return [{"region": r["RegionName"], "opt_in_status": r.get("OptInStatus", "opt-in-not-required")} for r in regions]


def first_instance_id(account, region):
    """One DescribeInstances call of the smallest page: an instance id, or None in an empty region.

    The health check's read probe, and the instance its write DryRun is aimed at.
    """
    ratelimit.acquire(account.account_id, region, "DescribeInstances")
    ec2 = call(client, account, region, "ec2", max_attempts=settings.IMDSWEB_AWS_MAX_ATTEMPTS)
    reservations = call(ec2.describe_instances, MaxResults=5)["Reservations"]
    return next((i["InstanceId"] for r in reservations for i in r["Instances"]), None)
