"""Create or update a dashboard login with one of the three roles (viewer, operator, admin)."""

import getpass
import sys

from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from fleet.roles import ROLE_ORDER as ROLES
from fleet.roles import assign_role


class Command(BaseCommand):
    help = "Create or update a user and put it in exactly one role group."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        set_user = sub.add_parser("set", help="create or update a user")
        set_user.add_argument("username")
        set_user.add_argument("--role", choices=ROLES, required=True)
        set_user.add_argument("--password", help="default: prompt (or keep the current one)")

    def handle(self, *args, action, username, role, password=None, **options):
        user = User.objects.filter(username=username).first()
        if password is None and user is None:
            if not sys.stdin.isatty():
                raise CommandError("error: --password is required when not on a terminal", returncode=2)
            password = getpass.getpass(f"password for {username}: ")
        user = user or User(username=username)
        if password is not None:
            try:
                # AUTH_PASSWORD_VALIDATORS, as Django's own password forms apply them.
                validate_password(password, user=user)
            except ValidationError as exc:
                raise CommandError(f"error: password refused: {' '.join(exc.messages)}", returncode=2) from None
        with transaction.atomic():
            if password is not None:
                user.set_password(password)
            user.save()
            assign_role(user, role)
        self.stdout.write(f"{username}: {role}")
