"""Register, list, enable/disable and remove the AWS accounts imdsweb watches."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from fleet import discovery, health
from fleet.models import Account, ChangeItem, OrganizationSource

# Errors name the option the user typed, not the model field.
OPTION_OF_FIELD = {"role_arn": "--role-arn", "external_id": "--external-id", "regions": "--regions", "name": "--name"}


def _fail(message):
    # Exit status 2 like argparse's own usage errors; one line, nothing written.
    return CommandError(message, returncode=2)


class Command(BaseCommand):
    help = "Manage the AWS accounts imdsweb watches."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="register an account (or update it if already registered)")
        add.add_argument("account_id")
        add.add_argument("--name", required=True)
        add.add_argument("--regions", required=True, help="comma-separated, e.g. us-east-1,eu-west-1")
        add.add_argument("--role-arn", default="")
        add.add_argument("--external-id", default="")
        sub.add_parser("list", help="list registered accounts")
        remove = sub.add_parser("remove", help="remove an account and its cached instances")
        remove.add_argument("account_id")
        for name in ("enable", "disable"):
            toggle = sub.add_parser(name, help=f"{name} syncing and changes for an account")
            toggle.add_argument("account_id")
        discover = sub.add_parser(
            "discover",
            help="register every account of an AWS Organization (and keep the list current on re-runs)",
            description="Options given are saved on the organization source and used by the daily re-discovery.",
        )
        discover.add_argument("--source", default="organization", help="name of the organization source")
        discover.add_argument("--management-role-arn", help="role in the management/delegated-admin account")
        discover.add_argument("--management-external-id")
        discover.add_argument("--role-template", help="e.g. arn:aws:iam::{account_id}:role/imdsweb-reader")
        discover.add_argument("--external-id", help="external id registered for each discovered account")
        discover.add_argument("--regions", help="allow list, comma-separated (default: every enabled region)")
        discover.add_argument("--exclude-regions", help="deny list, comma-separated")
        discover.add_argument("--include-management", action="store_true", default=None,
                              help="also register the management account")
        discover.add_argument("--exclude-management", dest="include_management", action="store_false")
        discover.add_argument("--home-region", help="region of the DescribeRegions call (default us-east-1)")
        check = sub.add_parser("health", help="check the role and each permission of every enabled account")
        check.add_argument("--account", dest="only_account", help="only this account id")

    def handle(self, *args, action, **options):
        return getattr(self, f"handle_{action}")(**options)

    def handle_add(self, account_id, name, regions, role_arn, external_id, **_):
        region_list = [region.strip() for region in regions.split(",") if region.strip()]
        account = Account.objects.filter(account_id=account_id).first() or Account(account_id=account_id)
        account.name = name
        account.regions = region_list
        account.role_arn = role_arn
        account.external_id = external_id
        try:
            # Account.clean holds the rules between fields (the role's account, the external id's
            # role), the same the admin form applies.
            account.full_clean()
        except ValidationError as exc:
            messages = "; ".join(
                f"{OPTION_OF_FIELD.get(field, field)}: {' '.join(errors)}" for field, errors in exc.message_dict.items()
            )
            raise _fail(f"error: {messages}") from exc
        created = account.pk is None
        account.save()
        verb = "added" if created else "updated"
        self.stdout.write(f"{verb} {account.account_id} {account.name} regions={','.join(account.regions)}")

    def handle_list(self, **_):
        accounts = Account.objects.order_by("account_id")
        if not accounts:
            self.stdout.write("no accounts registered")
        for account in accounts:
            role = account.role_arn or "(ambient credentials)"
            state = "enabled" if account.enabled else "disabled"
            ou = f"  ou={account.ou_path}" if account.ou_path else ""
            self.stdout.write(
                f"{account.account_id}  {account.name:<20} {state:<8} {','.join(account.regions):<40} {role}{ou}"
            )

    def _get(self, account_id):
        account = Account.objects.filter(account_id=account_id).first()
        if account is None:
            raise _fail(f"error: account {account_id} is not registered")
        return account

    def handle_remove(self, account_id, **_):
        account = self._get(account_id)
        history = ChangeItem.objects.filter(account=account).count()
        if history:
            raise _fail(
                f"error: account {account_id} has {history} change records, which are kept for audit; "
                f"use 'fleet_account disable {account_id}' instead"
            )
        with transaction.atomic():
            account.delete()
        self.stdout.write(f"removed {account_id}")

    def _set_enabled(self, account_id, enabled):
        account = self._get(account_id)
        account.enabled = enabled
        account.save(update_fields=["enabled"])
        self.stdout.write(f"{'enabled' if enabled else 'disabled'} {account_id}")

    def handle_enable(self, account_id, **_):
        self._set_enabled(account_id, True)

    def handle_disable(self, account_id, **_):
        self._set_enabled(account_id, False)

    def handle_discover(self, source, **options):
        organization = OrganizationSource.objects.filter(name=source).first() or OrganizationSource(name=source)
        fields = {
            "management_role_arn": options["management_role_arn"],
            "management_external_id": options["management_external_id"],
            "role_template": options["role_template"],
            "external_id": options["external_id"],
            "regions_allow": _region_list(options["regions"]),
            "regions_deny": _region_list(options["exclude_regions"]),
            "include_management": options["include_management"],
            "home_region": options["home_region"],
        }
        for field, value in fields.items():
            if value is not None:
                setattr(organization, field, value)
        try:
            organization.full_clean()
        except ValidationError as exc:
            messages = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.message_dict.items())
            raise _fail(f"error: {messages}") from exc
        organization.save()
        run = discovery.discover(organization)
        for change in run.changes:
            self.stdout.write(f"{change['account_id']}  {change['name']:<20} {change['change']:<10} {change['detail']}")
        if run.status != "succeeded":
            raise CommandError(f"discovery failed: {run.error}")
        self.stdout.write(
            f"discovered {run.accounts_seen} accounts: {run.count('added')} added, {run.count('disabled')} disabled, "
            f"{run.count('re-enabled')} enabled again, {run.count('moved')} moved, "
            f"{run.count('regions')} with new regions, {run.count('error')} unreadable"
        )

    def handle_health(self, only_account, **_):
        accounts = [self._get(only_account)] if only_account else Account.objects.filter(enabled=True)
        failing = 0
        for account in accounts:
            result = health.check_account(account)
            state = "ok" if result.healthy else "unreadable" if not result.readable else "missing permissions"
            self.stdout.write(f"{account.account_id}  {account.name:<20} {state}")
            for check, _label, ok, error in result.results:
                if ok is not True:
                    self.stdout.write(f"    {check}: {error or 'not checked'}")
            failing += not result.healthy
        self.stdout.write(f"{failing} account{'s' if failing != 1 else ''} failing")


def _region_list(text):
    if text is None:
        return None
    return [region.strip() for region in text.split(",") if region.strip()]
