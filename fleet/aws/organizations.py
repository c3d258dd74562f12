"""AWS Organizations: the accounts of an organization and its OU tree (discovery reads these).

Called from the management account or a delegated administrator, reached through ``source``: any
object with ``account_id``, ``role_arn`` and ``external_id`` (see :class:`OrgCaller`). Organizations
is a global service answered in us-east-1; its throttling (``TooManyRequestsException``) is
retried by botocore's standard retry mode and, if it persists, surfaces as RetryableAwsError.
"""

from dataclasses import dataclass

from .call import call
from .session import client

REGION = "us-east-1"


@dataclass(frozen=True)
class OrgCaller:
    """Who calls Organizations: a role in the management account, or imdsweb's own identity."""

    role_arn: str = ""
    external_id: str = ""

    @property
    def account_id(self):
        return self.role_arn.split(":")[4] if self.role_arn else ""


def _organizations(source):
    return call(client, source, REGION, "organizations")


def describe_organization(source):
    """{"Id", "MasterAccountId", ...} of the caller's organization."""
    return call(_organizations(source).describe_organization)["Organization"]


def list_accounts(source):
    """Every account of the organization (ListAccounts, all pages): {"Id", "Name", "Status", ...}."""
    paginator = _organizations(source).get_paginator("list_accounts")
    return [account for page in call(list, paginator.paginate()) for account in page["Accounts"]]


def list_roots(source):
    """The organization's roots (one in practice): [{"Id", "Name", ...}]."""
    paginator = _organizations(source).get_paginator("list_roots")
    return [root for page in call(list, paginator.paginate()) for root in page["Roots"]]


def list_organizational_units_for_parent(source, parent_id):
    """The OUs directly under ``parent_id`` (a root or an OU), all pages: [{"Id", "Name", "Arn"}]."""
    paginator = _organizations(source).get_paginator("list_organizational_units_for_parent")
    pages = call(list, paginator.paginate(ParentId=parent_id))
    return [ou for page in pages for ou in page["OrganizationalUnits"]]


def list_parents(source, child_id):
    """The parent of an account or OU: {"Id", "Type": "ROOT" | "ORGANIZATIONAL_UNIT"}."""
    parents = call(_organizations(source).list_parents, ChildId=child_id)["Parents"]
    return parents[0] if parents else None

