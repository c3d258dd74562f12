"""EC2 calls: read the fleet, the account defaults, launch templates and AMIs; modify metadata
options, defaults and launch templates."""

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
# ModifyInstanceMetadataDefaults also takes the account-level enforcement switch.
DEFAULTS_WRITE_PARAMS = {**DEFAULTS_PARAMS, "http_tokens_enforced": "HttpTokensEnforced"}

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


def describe_instance_pages(account, region, filters=None, max_attempts=None):
    """Yield DescribeInstances pages (lists of instance dicts) of up to 1,000 instances."""
    ec2 = call(client, account, region, "ec2", max_attempts=max_attempts)
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


def describe_instances_by_ids(account, region, instance_ids, max_attempts=None):
    """Yield instance dicts for the given ids, ≤ 200 ids per call through the instance-id filter.

    ``max_attempts=1``: the change engine's client (the one its modify calls use, so a worker
    builds one client per account/region for both), for a caller that retries by itself."""
    ids = list(instance_ids)
    for start in range(0, len(ids), IDS_PER_FILTER):
        chunk = ids[start : start + IDS_PER_FILTER]
        for page in describe_instance_pages(account, region, [{"Name": "instance-id", "Values": chunk}],
                                            max_attempts=max_attempts):
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
    values["http_tokens_enforced"] = _present(level.get("HttpTokensEnforced"))
    values["managed_by"] = level.get("ManagedBy") or ""
    values["managed_exception_message"] = level.get("ManagedExceptionMessage") or ""
    return values


def modify_instance_metadata_defaults(account, region, changes, dry_run=False, token_taken=False):
    """Send only ``changes``; ``no-preference`` / hop ``-1`` clear a setting. Returns the request id."""
    params = {DEFAULTS_WRITE_PARAMS[field]: value for field, value in changes.items()}
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


# --- launch sources: launch templates and AMIs ------------------------------------------------
LT_PAGE_SIZE = 200  # DescribeLaunchTemplates / DescribeLaunchTemplateVersions MaxResults maximum


def _pages(account, region, operation, action, page_size, **kwargs):
    """Yield the pages of a paginated EC2 describe, one rate-limit token per page."""
    ec2 = call(client, account, region, "ec2")
    pages = iter(ec2.get_paginator(operation).paginate(PaginationConfig={"PageSize": page_size}, **kwargs))
    while True:
        ratelimit.acquire(account.account_id, region, action)
        page = call(next, pages, None)
        if page is None:
            return
        yield page


def describe_launch_template_pages(account, region):
    """Yield DescribeLaunchTemplates pages (lists of template dicts)."""
    for page in _pages(account, region, "describe_launch_templates", "DescribeLaunchTemplates", LT_PAGE_SIZE):
        yield page.get("LaunchTemplates", [])


def describe_launch_template_version_pages(account, region, template_id=None, versions=("$Default", "$Latest")):
    """Yield DescribeLaunchTemplateVersions pages (lists of version dicts).

    Without ``template_id``, ``versions`` must be ``$Default`` and/or ``$Latest``: AWS then lists
    them for every launch template in the region, which is how a sync reads 2,000 templates'
    default and latest versions in a few calls.
    """
    kwargs = {"Versions": list(versions)}
    if template_id:
        kwargs["LaunchTemplateId"] = template_id
    for page in _pages(
        account, region, "describe_launch_template_versions", "DescribeLaunchTemplateVersions", LT_PAGE_SIZE, **kwargs
    ):
        yield page.get("LaunchTemplateVersions", [])


def describe_images(account, region, image_ids):
    """Yield image dicts for the given AMI ids (≤ 200 ids per call through the image-id filter);
    an AMI that is deregistered or no longer shared is simply not returned."""
    ids = list(image_ids)
    for start in range(0, len(ids), IDS_PER_FILTER):
        chunk = ids[start : start + IDS_PER_FILTER]
        filters = [{"Name": "image-id", "Values": chunk}]
        for page in _pages(
            account, region, "describe_images", "DescribeImages", PAGE_SIZE, Filters=filters, IncludeDeprecated=True
        ):
            yield from page.get("Images", [])


def create_launch_template_version(
    account, region, template_id, source_version, metadata_options, description, dry_run=False, token_taken=False
):
    """A new version from ``source_version`` whose only change is ``MetadataOptions``.

    AWS replaces each top-level parameter sent, so ``metadata_options`` must be the whole
    structure wanted (the source's options with the change applied). Returns the new version dict.
    """
    ratelimit.acquire(account.account_id, region, "CreateLaunchTemplateVersion", already_taken=token_taken)
    ec2 = call(client, account, region, "ec2", max_attempts=1)
    response = call(
        ec2.create_launch_template_version,
        LaunchTemplateId=template_id,
        SourceVersion=str(source_version),
        VersionDescription=description[:255],
        LaunchTemplateData={"MetadataOptions": metadata_options},
        DryRun=dry_run,
    )
    return response["LaunchTemplateVersion"]


def modify_launch_template(account, region, template_id, default_version, dry_run=False, token_taken=False):
    """Make ``default_version`` the template's default. Returns the request id."""
    ratelimit.acquire(account.account_id, region, "ModifyLaunchTemplate", already_taken=token_taken)
    ec2 = call(client, account, region, "ec2", max_attempts=1)
    response = call(
        ec2.modify_launch_template, LaunchTemplateId=template_id, DefaultVersion=str(default_version), DryRun=dry_run
    )
    return response.get("ResponseMetadata", {}).get("RequestId", "")
