"""Per-account health: can imdsweb assume the role, and may it make each call it needs?

One check per :class:`~fleet.choices.HealthCheck`, made in the account's first region: a fresh
AssumeRole, one small DescribeInstances, GetInstanceMetadataDefaults, one GetMetricData, the first
page of DescribeLaunchTemplates and of DescribeAutoScalingGroups (what a sync reads of the launch
sources), and the two write actions with ``DryRun`` (``DryRunOperation`` means permitted, ``UnauthorizedOperation``
refused). AWS's exact code and message are stored for every refusal. When the role cannot be
assumed nothing else is tried (it cannot be): those checks stay unknown, never "ok".
"""

import logging

from django.db.models import Count, Q
from django.utils import timezone

from . import aws
from .choices import HealthCheck
from .models import Account, AccountHealth

log = logging.getLogger(__name__)

# A syntactically valid id no account has: the DryRun target when the region has no instance.
# IAM is evaluated before the instance is looked up, so a refusal is still UnauthorizedOperation.
PLACEHOLDER_INSTANCE = "i-00000000000000000"
# Answers that prove the call itself was permitted (the request was judged on its merits).
PERMITTED_CODES = ("InvalidInstanceID.NotFound", "IncorrectInstanceState")


def _error(exc):
    return f"{exc.code}: {exc.message}"


def _probe(fn, *args, **kwargs):
    """(ok, error, result) of one call; DryRunSucceeded counts as permitted."""
    try:
        return True, "", fn(*args, **kwargs)
    except aws.DryRunSucceeded:
        return True, "", None
    except aws.PermanentAwsError as exc:
        if exc.code in PERMITTED_CODES:
            return True, "", None
        return False, _error(exc), None
    except aws.RetryableAwsError as exc:
        # Throttled or unavailable: we learnt nothing about the permission.
        return None, _error(exc), None


def _first_page(pages, account, region):
    return next(pages(account, region), None)


def check_account(account):
    """Run every check on ``account`` and store the result; returns the AccountHealth row."""
    region = account.regions[0] if account.regions else "us-east-1"
    checks = {check.value: {"ok": None, "error": ""} for check in HealthCheck}

    def record(check, ok, error):
        checks[check.value] = {"ok": ok, "error": error}

    ok, error, _ = _probe(aws.sts.assume_role, account)
    record(HealthCheck.ASSUME_ROLE, ok, error)
    if ok:
        ok, error, instance_id = _probe(aws.first_instance_id, account, region)
        record(HealthCheck.DESCRIBE_INSTANCES, ok, error)
        record(HealthCheck.GET_DEFAULTS, *_probe(aws.get_instance_metadata_defaults, account, region)[:2])
        target = instance_id or PLACEHOLDER_INSTANCE
        record(HealthCheck.GET_METRIC_DATA, *_probe(aws.get_metadata_usage, account, region, [target], 1)[:2])
        record(HealthCheck.DESCRIBE_LAUNCH_TEMPLATES,
               *_probe(_first_page, aws.describe_launch_template_pages, account, region)[:2])
        record(HealthCheck.DESCRIBE_AUTO_SCALING_GROUPS,
               *_probe(_first_page, aws.describe_auto_scaling_group_pages, account, region)[:2])
        record(HealthCheck.MODIFY_OPTIONS, *_probe(
            aws.modify_instance_metadata_options, account, region, target, {"http_tokens": "required"}, dry_run=True
        )[:2])
        record(HealthCheck.MODIFY_DEFAULTS, *_probe(
            aws.modify_instance_metadata_defaults, account, region, {"http_tokens": "required"}, dry_run=True
        )[:2])
    readable = bool(checks[HealthCheck.ASSUME_ROLE]["ok"]) and bool(checks[HealthCheck.DESCRIBE_INSTANCES]["ok"])
    healthy = all(result["ok"] for result in checks.values())
    health, _ = AccountHealth.objects.update_or_create(
        account=account,
        defaults={"checked_at": timezone.now(), "region": region, "healthy": healthy, "readable": readable,
                  "checks": checks},
    )
    if not healthy:
        failing = "; ".join(f"{name}: {r['error']}" for name, r in checks.items() if r["ok"] is False)
        log.warning("account %s is not healthy: %s", account.account_id, failing or "some checks could not run")
    return health


def check_all():
    """Check every enabled account (the command and the beat task); returns the rows."""
    return [check_account(account) for account in Account.objects.filter(enabled=True)]


def accounts_by_health(accounts=None):
    """Enabled accounts (of ``accounts``, default all) with their health, failing first:
    unreadable, then missing a permission, then never checked, then healthy. One query."""
    accounts = list((accounts or Account.objects.all()).filter(enabled=True).select_related("health"))

    def rank(account):
        health = getattr(account, "health", None)
        if health is None:
            return (2, account.name)
        return (0 if not health.readable else 1 if not health.healthy else 3, account.name)

    return sorted(accounts, key=rank)


def summary():
    """{"unreadable", "failing", "unchecked"} counts over enabled accounts, for the overview tile (one query)."""
    return Account.objects.filter(enabled=True).aggregate(
        unreadable=Count("id", filter=Q(health__readable=False)),
        failing=Count("id", filter=Q(health__healthy=False)),
        unchecked=Count("id", filter=Q(health__isnull=True)),
    )
