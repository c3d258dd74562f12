"""Register, list, enable/disable and remove the AWS accounts imdsweb watches."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from fleet.models import Account, ChangeItem

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
            self.stdout.write(
                f"{account.account_id}  {account.name:<20} {state:<8} {','.join(account.regions):<40} {role}"
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
