"""Organization discovery and account health against the simulator's organization, over HTTP."""

import io

import boto3
import pytest
from django.core.management import CommandError, call_command

from fleet import discovery, health
from fleet.choices import DiscoveryChange, HealthCheck, OrgAccountStatus, SyncStatus
from fleet.models import Account, AccountHealth, DiscoveryRun, OrganizationSource, SyncRun
from imdssim.organization import DEFAULT_REGIONS
from imdssim.testing import SimulatorProcess

pytestmark = pytest.mark.django_db(transaction=True)

MEMBERS = 24  # more than one ListAccounts page (AWS and the simulator answer at most 20)
MANAGEMENT_ROLE = "arn:aws:iam::900000000000:role/imdsweb-org-reader"


@pytest.fixture
def org_sim(aws_env, monkeypatch):
    from fleet.aws.session import reset_caches

    with SimulatorProcess(apply_delay=0.5, extra_args=("--seed-org", str(MEMBERS), "--org-instances", "2")) as sim:
        monkeypatch.setenv("AWS_ENDPOINT_URL", sim.endpoint_url)
        reset_caches()
        yield sim
    reset_caches()


def run(*args):
    out = io.StringIO()
    call_command("fleet_account", *args, stdout=out)
    return out.getvalue()


def discover(*extra):
    return run("discover", "--management-role-arn", MANAGEMENT_ROLE, "--external-id", "org-secret", *extra)


def management_client(sim):
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=sim.endpoint_url)
    creds = sts.assume_role(RoleArn=MANAGEMENT_ROLE, RoleSessionName="test")["Credentials"]
    return boto3.client(
        "organizations", region_name="us-east-1", endpoint_url=sim.endpoint_url,
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def test_one_command_onboards_the_organization(org_sim):
    first_page = management_client(org_sim).list_accounts()
    assert len(first_page["Accounts"]) == 20 and first_page["NextToken"]  # discovery must follow it
    out = discover()

    seeded = {a["account_id"]: a for a in org_sim.organization()["accounts"]}
    accounts = {a.account_id: a for a in Account.objects.all()}
    assert set(accounts) == set(seeded)  # every member, the management account left out
    for account_id, expected in seeded.items():
        account = accounts[account_id]
        assert account.ou_path == expected["ou_path"]
        assert account.role_arn == f"arn:aws:iam::{account_id}:role/imdsweb-reader"
        assert account.external_id == "org-secret"
        assert account.org_status == expected["status"]
        assert account.enabled == (expected["status"] == "ACTIVE")
        assert account.source.name == "organization"
    # Enabled regions: the 17 default ones plus what each account opted in to.
    five = accounts["500000000005"]
    assert five.regions == sorted([*DEFAULT_REGIONS, "af-south-1"])
    assert accounts["500000000004"].regions == sorted(DEFAULT_REGIONS)
    assert "eu-south-1" in accounts["500000000007"].regions
    # The account without a role is registered, and why its regions are unknown is said.
    assert "500000000002  " in out and "AccessDenied" in out
    assert accounts["500000000002"].regions == ["us-east-1"]  # the home region until they can be read
    assert f"discovered {MEMBERS + 1} accounts: {MEMBERS} added" in out
    run_row = DiscoveryRun.objects.get()
    assert run_row.status == SyncStatus.SUCCEEDED and run_row.count(DiscoveryChange.ADDED) == MEMBERS
    assert OrganizationSource.objects.get().management_account_id == "900000000000"


def test_allow_and_deny_lists_and_the_management_account(org_sim):
    discover("--regions", "us-east-1,eu-west-1,af-south-1", "--exclude-regions", "eu-west-1",
             "--include-management")
    assert Account.objects.get(account_id="500000000005").regions == ["af-south-1", "us-east-1"]
    assert Account.objects.get(account_id="500000000004").regions == ["us-east-1"]
    assert Account.objects.filter(account_id="900000000000", ou_path="").exists()
    # Left out again later: kept as it is, not taken for an account that left the organization.
    discover("--exclude-management")
    management = Account.objects.get(account_id="900000000000")
    assert management.enabled and management.org_status == OrgAccountStatus.ACTIVE


def test_rediscovery_adds_disables_moves_and_follows_regions(org_sim):
    discover("--regions", "us-east-1,eu-west-1,me-south-1")
    orgs = management_client(org_sim)
    ou_ids = org_sim.organization()["ou_ids"]
    sandbox = next(a for a in org_sim.organization()["accounts"] if a["ou_path"] == "Sandbox")["account_id"]
    orgs.move_account(AccountId=sandbox, SourceParentId=ou_ids["Sandbox"], DestinationParentId=ou_ids["Security"])
    orgs.close_account(AccountId="500000000006")
    orgs.remove_account_from_organization(AccountId="500000000008")
    new_id = orgs.create_account(AccountName="brand-new", Email="new@example.com")["CreateAccountStatus"]["AccountId"]
    org_sim.set_region("500000000004", "me-south-1")
    Account.objects.filter(account_id="500000000010").update(enabled=False)  # an operator's choice

    out = discover()

    accounts = {a.account_id: a for a in Account.objects.all()}
    assert accounts[sandbox].ou_path == "Security"
    assert f"{sandbox}" in out and "Sandbox → Security" in out
    assert (accounts["500000000006"].enabled, accounts["500000000006"].org_status) == (False, "SUSPENDED")
    assert (accounts["500000000008"].enabled, accounts["500000000008"].org_status) == (False, "DEPARTED")
    assert accounts[new_id].enabled and accounts[new_id].ou_path == ""
    assert accounts["500000000004"].regions == ["eu-west-1", "me-south-1", "us-east-1"]
    assert accounts["500000000010"].enabled is False  # not re-enabled: discovery did not disable it
    changes = {(c["account_id"], c["change"]) for c in DiscoveryRun.objects.first().changes}
    assert {(sandbox, "moved"), ("500000000006", "disabled"), ("500000000008", "disabled"),
            (new_id, "added"), ("500000000004", "regions")} <= changes
    assert Account.objects.count() == MEMBERS + 1  # nothing deleted

    # Back in the organization: enabled again. A run with nothing new changes nothing.
    org_sim.set_role("500000000002", "full")
    orgs.move_account(AccountId=sandbox, SourceParentId=ou_ids["Security"], DestinationParentId=ou_ids["Sandbox"])
    discover()
    discover()
    assert DiscoveryRun.objects.first().changes == []


def test_discovery_of_an_unreachable_organization_fails_with_aws_reason(org_sim):
    org_sim.set_role("900000000000", "missing")
    with pytest.raises(CommandError, match="AccessDenied"):
        discover()
    assert DiscoveryRun.objects.get().status == SyncStatus.FAILED
    assert not Account.objects.exists()


def test_bad_template_is_refused_before_any_call(org_sim):
    with pytest.raises(CommandError, match="must contain"):
        run("discover", "--role-template", "arn:aws:iam::123456789012:role/x")
    assert not DiscoveryRun.objects.exists()


def test_health_names_each_broken_account_with_aws_error(org_sim):
    discover("--regions", "us-east-1")
    Account.objects.filter(account_id="500000000001").update(enabled=True)  # suspended, forced on
    out = run("health")

    rows = {h.account.account_id: h for h in AccountHealth.objects.select_related("account")}
    missing = rows["500000000002"]
    assert (missing.readable, missing.healthy) == (False, False)
    assert missing.checks[HealthCheck.ASSUME_ROLE]["error"].startswith(
        "AccessDenied: User: arn:aws:iam::123456789012:user/imdsweb is not authorized to perform: sts:AssumeRole"
    )
    assert missing.checks[HealthCheck.DESCRIBE_INSTANCES]["ok"] is None  # not tried, not "ok"
    read_only = rows["500000000003"]
    assert (read_only.readable, read_only.healthy) == (True, False)
    for check in (HealthCheck.ASSUME_ROLE, HealthCheck.DESCRIBE_INSTANCES, HealthCheck.GET_DEFAULTS,
                  HealthCheck.GET_METRIC_DATA, HealthCheck.DESCRIBE_LAUNCH_TEMPLATES,
                  HealthCheck.DESCRIBE_AUTO_SCALING_GROUPS):
        assert read_only.checks[check]["ok"] is True
    for check in (HealthCheck.MODIFY_OPTIONS, HealthCheck.MODIFY_DEFAULTS):
        assert read_only.checks[check]["ok"] is False
        assert read_only.checks[check]["error"].startswith("UnauthorizedOperation: You are not authorized")
    assert rows["500000000004"].healthy
    assert rows["500000000001"].readable is False
    assert "3 accounts failing" in out
    # Failing accounts first: unreadable, then missing permissions, then healthy.
    order = [a.account_id for a in health.accounts_by_health()]
    assert order.index("500000000002") < order.index("500000000003") < order.index("500000000004")
    assert health.summary() == {"unreadable": 2, "failing": 3, "unchecked": 0}


def test_a_broken_account_never_fails_the_whole_sync(org_sim):
    discover("--regions", "us-east-1")
    with pytest.raises(CommandError, match=f"1 of {MEMBERS - 1} account/regions failed"):
        call_command("fleet_sync", stdout=io.StringIO())
    failed = SyncRun.objects.get(status=SyncStatus.FAILED)
    assert failed.account.account_id == "500000000002" and failed.error.startswith("AccessDenied:")
    assert SyncRun.objects.filter(status=SyncStatus.SUCCEEDED).count() == MEMBERS - 2
    assert Account.objects.get(account_id="500000000004").instances.count() == 2


def test_discover_all_runs_every_enabled_source(org_sim):
    source = OrganizationSource.objects.create(name="org", management_role_arn=MANAGEMENT_ROLE)
    OrganizationSource.objects.create(name="off", management_role_arn=MANAGEMENT_ROLE, enabled=False)
    runs = discovery.discover_all()
    assert [r.source for r in runs] == [source]
    assert Account.objects.filter(source=source, org_status=OrgAccountStatus.ACTIVE).count() == MEMBERS - 1
