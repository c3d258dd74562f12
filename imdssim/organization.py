"""An AWS Organization for discovery: accounts in nested OUs, broken roles and opt-in regions.

moto implements Organizations (accounts, OUs, ListParents, pagination) and ``sts:AssumeRole``;
this module adds what it lacks for imdsweb's discovery and per-account health checks:

- ``DescribeRegions`` per account with ``AllRegions``, ``RegionName.N`` and the ``opt-in-status``,
  ``region-name`` and ``endpoint`` filters, answering ``OptInStatus`` (moto ignores ``AllRegions``
  and ``Filters`` and knows no opt-in). Follows "DescribeRegions - Amazon EC2 API Reference".
- roles that do not exist (``AssumeRole`` answers 403 ``AccessDenied``), and read-only roles whose
  EC2 write actions answer 403 ``UnauthorizedOperation``, ``DryRun`` included (IAM is evaluated
  before the dry-run check, "Amazon EC2 API Reference: DryRun"). moto allows every call.
- ListAccounts pages of at most 20 accounts, AWS's maximum (``MaxResults`` 1-20, "ListAccounts -
  AWS Organizations API Reference"); moto's default page of 100 would let a client that never
  follows ``NextToken`` pass against any organization of under 100 accounts.
- a seeded organization (``--seed-org``) with deterministic account ids: moto's CreateAccount draws
  random ones, so accounts are made on moto's backend directly, as its own CreateAccount would.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import timedelta
from xml.sax.saxutils import escape

from moto.core.utils import utcnow
from moto.organizations.models import FakeAccount, FakeOrganizationalUnit, organizations_backends
from moto.organizations.utils import PAGINATION_MODEL

from .awsquery import Ec2Error, QueryRequest, ec2_response, new_request_id, xml_elements

log = logging.getLogger(__name__)

# "Regions and Zones" (Amazon EC2 User Guide): enabled by default in every account.
DEFAULT_REGIONS = (
    "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-south-1", "ap-southeast-1", "ap-southeast-2",
    "ca-central-1", "eu-central-1", "eu-north-1", "eu-west-1", "eu-west-2", "eu-west-3", "sa-east-1",
    "us-east-1", "us-east-2", "us-west-1", "us-west-2",
)
# Regions introduced after March 20, 2019: disabled until the account opts in.
OPT_IN_REGIONS = (
    "af-south-1", "ap-east-1", "ap-south-2", "ap-southeast-3", "ap-southeast-4", "ap-southeast-5",
    "ap-southeast-7", "ca-west-1", "eu-central-2", "eu-south-1", "eu-south-2", "il-central-1",
    "me-central-1", "me-south-1", "mx-central-1",
)
ALL_REGIONS = tuple(sorted(DEFAULT_REGIONS + OPT_IN_REGIONS))

# moto's paginator reads its model on every call, so this holds for every ListAccounts.
LIST_ACCOUNTS_MAX_RESULTS = 20
PAGINATION_MODEL["list_accounts"]["limit_default"] = LIST_ACCOUNTS_MAX_RESULTS

ROLE_ACCESS = ("full", "read-only", "missing")
READ_PREFIXES = ("Describe", "Get", "List")


def _filters(params: dict[str, str]) -> dict[str, list[str]]:
    """``Filter.1.Name=x&Filter.1.Value.1=y`` -> ``{"x": ["y"]}``."""
    found: dict[str, list[str]] = {}
    index = 1
    while f"Filter.{index}.Name" in params:
        values, v = [], 1
        while f"Filter.{index}.Value.{v}" in params:
            values.append(params[f"Filter.{index}.Value.{v}"])
            v += 1
        found.setdefault(params[f"Filter.{index}.Name"], []).extend(values)
        index += 1
    return found


class OrganizationModel:
    """Per-account opt-in regions and role access; thread-safe (the server is threaded)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._opted_in: dict[str, set[str]] = {}
        self._role_access: dict[str, str] = {}  # account id -> "read-only" | "missing"

    # --- state --------------------------------------------------------------------------------
    def set_region(self, account_id: str, region: str, opted_in: bool) -> None:
        if region not in OPT_IN_REGIONS:
            raise ValueError(f"{region} is not an opt-in region (one of {', '.join(OPT_IN_REGIONS)})")
        with self._lock:
            regions = self._opted_in.setdefault(account_id, set())
            (regions.add if opted_in else regions.discard)(region)

    def opted_in(self, account_id: str) -> set[str]:
        with self._lock:
            return set(self._opted_in.get(account_id, ()))

    def set_role_access(self, account_id: str, access: str) -> None:
        if access not in ROLE_ACCESS:
            raise ValueError(f"access must be one of {', '.join(ROLE_ACCESS)}")
        with self._lock:
            if access == "full":
                self._role_access.pop(account_id, None)
            else:
                self._role_access[account_id] = access

    def role_access(self, account_id: str) -> str:
        with self._lock:
            return self._role_access.get(account_id, "full")

    # --- STS ----------------------------------------------------------------------------------
    def assume_role_denied(self, request: QueryRequest) -> bytes | None:
        """AccessDenied for a role that does not exist or an account that is suspended."""
        role_arn = request.params.get("RoleArn", "")
        parts = role_arn.split(":")
        account_id = parts[4] if len(parts) > 5 else ""
        if self.role_access(account_id) != "missing" and not _suspended(account_id):
            return None
        log.info("AssumeRole of %s refused: no such role, or the account is suspended", role_arn)
        caller = f"arn:aws:iam::{request.account_id}:user/imdsweb"
        message = escape(f"User: {caller} is not authorized to perform: sts:AssumeRole on resource: {role_arn}")
        return (
            '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            f"<Code>AccessDenied</Code><Message>{message}</Message></Error>"
            f"<RequestId>{new_request_id()}</RequestId></ErrorResponse>"
        ).encode()

    # --- EC2 ----------------------------------------------------------------------------------
    def check_authorized(self, request: QueryRequest) -> None:
        """A read-only role may read but not write; EC2 says so before looking at DryRun."""
        action = request.action or ""
        if action.startswith(READ_PREFIXES) or self.role_access(request.account_id) != "read-only":
            return
        raise Ec2Error(
            "UnauthorizedOperation",
            f"You are not authorized to perform this operation. User: arn:aws:sts::{request.account_id}:"
            f"assumed-role/imdsweb-reader/imdsweb is not authorized to perform: ec2:{action} because no "
            f"identity-based policy allows the ec2:{action} action",
            403,
        )

    def describe_regions(self, request: QueryRequest) -> bytes:
        opted_in = self.opted_in(request.account_id)
        params = request.params
        all_regions = params.get("AllRegions", "").lower() == "true"
        names = request.indexed("RegionName")
        unknown = [name for name in names if name not in ALL_REGIONS]
        if unknown:
            raise Ec2Error("InvalidParameterValue", f"Invalid region: {unknown[0]}")
        filters = _filters(params)
        for name in filters:
            if name not in ("opt-in-status", "region-name", "endpoint"):
                raise Ec2Error("InvalidParameterValue", f"The filter '{name}' is invalid")
        items = []
        for region in ALL_REGIONS:
            status = (
                "opt-in-not-required" if region in DEFAULT_REGIONS
                else "opted-in" if region in opted_in else "not-opted-in"
            )
            endpoint = f"ec2.{region}.amazonaws.com"
            # Without AllRegions only the regions enabled for the account are listed, even when
            # named (an opt-in region named but not enabled is simply absent).
            if status == "not-opted-in" and not all_regions:
                continue
            if names and region not in names:
                continue
            if any(
                value not in values
                for key, value in (("opt-in-status", status), ("region-name", region), ("endpoint", endpoint))
                if (values := filters.get(key)) is not None
            ):
                continue
            fields = xml_elements({"regionName": region, "regionEndpoint": endpoint, "optInStatus": status})
            items.append(f"<item>{fields}</item>")
        return ec2_response("DescribeRegions", f"<regionInfo>{''.join(items)}</regionInfo>")


def _suspended(account_id: str) -> bool:
    owner = organizations_backends.master_accounts.get(account_id)
    if owner is None:
        return False
    backend = organizations_backends[owner[0]][owner[1]]
    account = next((a for a in backend.accounts if a.id == account_id), None)
    return account is not None and account.status == "SUSPENDED"


# --- the seeded organization ---------------------------------------------------------------------

MANAGEMENT_ACCOUNT_ID = "900000000000"
ORG_ROLE_NAME = "imdsweb-reader"
ORG_MANAGEMENT_ROLE = f"arn:aws:iam::{MANAGEMENT_ACCOUNT_ID}:role/imdsweb-org-reader"
# OU tree: path -> parent path ("" is the root).
OU_TREE = (
    ("Workloads", ""),
    ("Workloads/Prod", "Workloads"),
    ("Workloads/NonProd", "Workloads"),
    ("Workloads/NonProd/Dev", "Workloads/NonProd"),
    ("Workloads/NonProd/Test", "Workloads/NonProd"),
    ("Security", ""),
    ("Sandbox", ""),
)
LEAF_OUS = ("Workloads/Prod", "Workloads/NonProd/Dev", "Workloads/NonProd/Test", "Security", "Sandbox")


@dataclass(frozen=True)
class OrgAccount:
    account_id: str
    name: str
    ou_path: str
    status: str = "ACTIVE"
    role_access: str = "full"
    opted_in: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {
            "account_id": self.account_id, "name": self.name, "ou_path": self.ou_path, "status": self.status,
            "role_arn": f"arn:aws:iam::{self.account_id}:role/{ORG_ROLE_NAME}", "role_access": self.role_access,
            "opted_in_regions": list(self.opted_in),
        }


def org_accounts(count: int) -> list[OrgAccount]:
    """The member accounts of a seeded organization of ``count`` members (at least 4).

    Deterministic: account n is ``5000000000nn``; the first is suspended, the second has no role,
    the third a read-only role; every fifth has opted in to af-south-1, every seventh to eu-south-1.
    """
    if count < 4:
        raise ValueError("an organization needs at least 4 member accounts")
    accounts = []
    for n in range(1, count + 1):
        ou = LEAF_OUS[n % len(LEAF_OUS)]
        opted = tuple(region for region, every in (("af-south-1", 5), ("eu-south-1", 7)) if n % every == 0)
        accounts.append(
            OrgAccount(
                account_id=f"{500000000000 + n:012d}",
                name=f"{ou.rsplit('/', 1)[-1].lower()}-{n:03d}",
                ou_path=ou,
                status="SUSPENDED" if n == 1 else "ACTIVE",
                role_access={2: "missing", 3: "read-only"}.get(n, "full"),
                opted_in=opted,
            )
        )
    return accounts


def seed_organization(model: OrganizationModel, imds, count: int = 40, instances_per_region: int = 3) -> dict:
    """Create the organization in moto, and ``instances_per_region`` instances in us-east-1,
    eu-west-1 and each opted-in region of every readable member; returns what
    ``/_imdssim/organization`` shows."""
    import random

    from .seed import SEED, DemoAccount, _Clock, _seed_region

    backend = organizations_backends[MANAGEMENT_ACCOUNT_ID]["aws"]
    backend.create_organization(region="us-east-1", FeatureSet="ALL")
    org = backend.org
    backend.accounts[0].name = "management"
    ou_ids = {"": org.root_id}
    for path, parent in OU_TREE:
        ou = FakeOrganizationalUnit(org, Name=path.rsplit("/", 1)[-1], ParentId=ou_ids[parent])
        backend.ou.append(ou)
        ou_ids[path] = ou.id
    members = org_accounts(count)
    joined = utcnow() - timedelta(days=400)
    for index, member in enumerate(members):
        account = FakeAccount(org, AccountName=member.name, Email=f"aws+{member.name}@example.com")
        account.id = member.account_id
        # ListAccounts pages by JoinedTimestamp: keep them distinct.
        account.create_time = joined + timedelta(hours=index)
        account.parent_id = ou_ids[member.ou_path]
        account.joined_method = "INVITED" if index % 4 else "CREATED"
        if member.status == "SUSPENDED":
            account.status = account.state = "SUSPENDED"
        backend.accounts.append(account)
        organizations_backends.master_accounts[account.id] = (MANAGEMENT_ACCOUNT_ID, "aws")
        if member.role_access != "full":
            model.set_role_access(member.account_id, member.role_access)
        for region in member.opted_in:
            model.set_region(member.account_id, region, True)
    rng = random.Random(SEED + 1)
    clock = _Clock(utcnow())
    for member in members:
        if instances_per_region and member.status == "ACTIVE" and member.role_access != "missing":
            regions = ("us-east-1", "eu-west-1", *member.opted_in)
            # The demo seed's posture mixes are per environment: prod, staging or sandbox.
            env = {"Workloads/Prod": "prod", "Security": "prod", "Sandbox": "sandbox"}.get(member.ou_path, "staging")
            demo = DemoAccount(member.account_id, env, dict.fromkeys(regions, instances_per_region))
            for region in regions:
                _seed_region(imds, demo, region, instances_per_region, rng, clock, sources=False)
    log.info("seeded an organization of %d member accounts in %d OUs", len(members), len(OU_TREE))
    return {
        "management_account_id": MANAGEMENT_ACCOUNT_ID,
        "management_role_arn": ORG_MANAGEMENT_ROLE,
        "ou_ids": ou_ids,
        "accounts": [member.as_dict() for member in members],
    }
