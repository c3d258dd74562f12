"""Keep the registered accounts in step with an AWS Organization.

One discovery lists every account (``ListAccounts``), finds its OU path (the OU tree walked from
the root with ``ListOrganizationalUnitsForParent``, each account placed with ``ListParents``) and
the regions enabled for it (``DescribeRegions`` in the account, with its opt-in status), then:

- registers accounts it has not seen, with the source's role ARN template and external id;
- disables accounts that are suspended, pending closure or no longer in the organization (never
  deletes them: their instances, history and change audit stay), and enables again the ones it
  disabled itself once they are active again (an account an operator disabled stays disabled);
- records OU moves, renames and region changes (a region opted in to appears, one opted out of goes).

Every change is a row in the run's ``changes`` and a log line. A role ARN or external id set on an
existing account is never overwritten: operators may have pointed it elsewhere by hand.
"""

import logging

from django.db import transaction
from django.utils import timezone

from . import aws
from .choices import DiscoveryChange, OrgAccountStatus, SyncStatus
from .models import Account, DiscoveryRun, OrganizationSource

log = logging.getLogger(__name__)

READABLE_OPT_IN = ("opt-in-not-required", "opted-in")


def caller_of(source):
    return aws.organizations.OrgCaller(source.management_role_arn, source.management_external_id)


def ou_paths(caller):
    """{parent id: OU path} for the root ("") and every OU under it, walked breadth first."""
    paths = {}
    queue = []
    for root in aws.organizations.list_roots(caller):
        paths[root["Id"]] = ""
        queue.append(root["Id"])
    while queue:
        parent = queue.pop(0)
        for ou in aws.organizations.list_organizational_units_for_parent(caller, parent):
            prefix = paths[parent]
            paths[ou["Id"]] = f"{prefix}/{ou['Name']}" if prefix else ou["Name"]
            queue.append(ou["Id"])
    return paths


def regions_for(source, account):
    """The account's enabled regions, narrowed by the source's allow and deny lists.

    Returns (regions, error): error is AWS's reason when DescribeRegions could not be called.
    """
    try:
        listed = aws.describe_regions(account, source.home_region)
    except aws.AwsError as exc:
        return None, f"{exc.code}: {exc.message}"
    enabled = [r["region"] for r in listed if r["opt_in_status"] in READABLE_OPT_IN]
    if source.regions_allow:
        enabled = [region for region in enabled if region in source.regions_allow]
    return sorted(region for region in enabled if region not in source.regions_deny), ""


class _Recorder:
    def __init__(self, run):
        self.run = run

    def __call__(self, account, change, detail=""):
        self.run.changes.append(
            {"account_id": account.account_id, "name": account.name, "change": change, "detail": detail}
        )
        log.info("discovery %s: %s %s %s", self.run.source, account.account_id, change, detail)


def discover(source):
    """Run one discovery of ``source``; returns the finished DiscoveryRun (succeeded or failed).

    Only a failure to read the organization itself fails the run; an account whose regions cannot
    be read is registered (or kept) and the reason recorded as an ``error`` change.
    """
    run = DiscoveryRun.objects.create(source=source, started_at=timezone.now())
    record = _Recorder(run)
    try:
        caller = caller_of(source)
        organization = aws.organizations.describe_organization(caller)
        listed = aws.organizations.list_accounts(caller)
        paths = ou_paths(caller)
        source.management_account_id = organization.get("MasterAccountId", "")
        source.save(update_fields=["management_account_id"])
        run.accounts_seen = len(listed)
        seen = set()
        for data in listed:
            if data["Id"] == source.management_account_id and not source.include_management:
                seen.add(data["Id"])  # left alone, not "departed", if it was registered before
                continue
            parent = aws.organizations.list_parents(caller, data["Id"])
            ou_id = parent["Id"] if parent and parent["Type"] == "ORGANIZATIONAL_UNIT" else ""
            seen.add(data["Id"])
            _apply(source, data, ou_id, paths.get(parent["Id"], "") if parent else "", record)
        for account in Account.objects.filter(source=source).exclude(account_id__in=seen):
            if account.org_status != OrgAccountStatus.DEPARTED:
                _leave(account, record)
        run.status = SyncStatus.SUCCEEDED
    except aws.AwsError as exc:
        log.warning("discovery of %s failed: %s", source, exc)
        run.status = SyncStatus.FAILED
        run.error = f"{exc.code}: {exc.message}"[:4000]
    finally:
        run.finished_at = timezone.now()
        run.save()
    return run


def _apply(source, data, ou_id, ou_path, record):
    """Create or update one listed account."""
    status = data.get("Status") or data.get("State") or OrgAccountStatus.ACTIVE
    active = status == OrgAccountStatus.ACTIVE
    now = timezone.now()
    account = Account.objects.filter(account_id=data["Id"]).first()
    if account is None:
        account = Account(
            account_id=data["Id"], name=(data.get("Name") or data["Id"])[:100], source=source,
            role_arn=source.role_arn_for(data["Id"]), external_id=source.external_id,
            enabled=active, ou_id=ou_id, ou_path=ou_path, org_status=status, discovered_at=now,
            # Until its regions can be read: the allow list, or the home region, so that the
            # account's syncs (and their AWS error) show on the overview like any other's.
            regions=list(source.regions_allow) or [source.home_region],
        )
        if active:
            regions, error = regions_for(source, account)
            if regions is not None:
                account.regions = regions
        with transaction.atomic():
            account.save()
        record(account, DiscoveryChange.ADDED,
               f"OU {ou_path or '(root)'}, regions {','.join(account.regions) or 'none'}"
               + ("" if active else f"; {status}, so disabled"))
        if active and regions is None:
            record(account, DiscoveryChange.ERROR, f"regions not read: {error}")
        return

    updates = {"discovered_at": now, "org_status": status}
    if account.source_id is None:
        updates["source"] = source  # registered by hand, now found in the organization
    if account.ou_path != ou_path or account.ou_id != ou_id:
        record(account, DiscoveryChange.MOVED, f"{account.ou_path or '(root)'} → {ou_path or '(root)'}")
        updates.update(ou_path=ou_path, ou_id=ou_id)
    name = (data.get("Name") or account.name)[:100]
    if name != account.name:
        record(account, DiscoveryChange.RENAMED, f"{account.name} → {name}")
        updates["name"] = name
    if not active and account.enabled:
        record(account, DiscoveryChange.DISABLED, f"status {status}")
        updates["enabled"] = False
    elif active and not account.enabled and account.org_status in _DISABLED_BY_DISCOVERY:
        record(account, DiscoveryChange.REENABLED, f"status ACTIVE again (was {account.org_status})")
        updates["enabled"] = True
    if active:
        regions, error = regions_for(source, account)
        if regions is None:
            record(account, DiscoveryChange.ERROR, f"regions not read: {error}")
        elif regions != sorted(account.regions):
            added = sorted(set(regions) - set(account.regions))
            removed = sorted(set(account.regions) - set(regions))
            record(account, DiscoveryChange.REGIONS,
                   "; ".join(part for part in (
                       f"added {','.join(added)}" if added else "",
                       f"removed {','.join(removed)}" if removed else "") if part))
            updates["regions"] = regions
    for field, value in updates.items():
        setattr(account, field, value)
    account.save(update_fields=list(updates))


# Statuses under which discovery itself disabled an account, so it may enable it again.
_DISABLED_BY_DISCOVERY = (OrgAccountStatus.SUSPENDED, OrgAccountStatus.PENDING_CLOSURE, OrgAccountStatus.DEPARTED)


def _leave(account, record):
    record(account, DiscoveryChange.DISABLED, "no longer in the organization")
    account.org_status = OrgAccountStatus.DEPARTED
    account.enabled = False
    account.save(update_fields=["org_status", "enabled"])


def discover_all():
    """Every enabled source (the beat task); returns the runs."""
    return [discover(source) for source in OrganizationSource.objects.filter(enabled=True)]
