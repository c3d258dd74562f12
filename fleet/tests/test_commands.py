"""The operator commands: exact syntax, one-line errors with exit status 2, nothing written."""

import io

import pytest
from django.core.management import CommandError, call_command

from fleet.models import Account
from fleet.tests.factories import AccountFactory, ChangeItemFactory

pytestmark = pytest.mark.django_db


def run(*args):
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_add_list_update_remove():
    out = run("fleet_account", "add", "123456789012", "--name", "prod", "--regions", "us-east-1,eu-west-1",
              "--role-arn", "arn:aws:iam::123456789012:role/imdsweb-reader", "--external-id", "secret-ext")
    assert out.startswith("added 123456789012 prod")
    account = Account.objects.get()
    assert account.regions == ["us-east-1", "eu-west-1"] and account.external_id == "secret-ext"

    listing = run("fleet_account", "list")
    assert "123456789012" in listing and "secret-ext" not in listing  # the external id is never shown

    assert run("fleet_account", "add", "123456789012", "--name", "prod2", "--regions", "us-east-1").startswith("updated")
    assert Account.objects.get().name == "prod2"
    assert run("fleet_account", "remove", "123456789012") == "removed 123456789012\n"
    assert not Account.objects.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["add", "12345", "--name", "x", "--regions", "us-east-1"], "account_id"),
        (["add", "123456789012", "--name", "x", "--regions", "nowhere"], "region"),
        (["add", "123456789012", "--name", "x", "--regions", ""], "region"),
        (["add", "123456789012", "--name", "x", "--regions", "us-east-1", "--role-arn", "arn:bad"], "role"),
        (["add", "123456789012", "--name", "x", "--regions", "us-east-1",
          "--role-arn", "arn:aws:iam::999999999999:role/r"], "--role-arn: The role ARN is in account 999999999999, not in account 123456789012"),
        # The account id appearing elsewhere in the ARN does not make it the role's account.
        (["add", "123456789012", "--name", "x", "--regions", "us-east-1",
          "--role-arn", "arn:aws:iam::999999999999:role/123456789012"], "not in account 123456789012"),
        (["add", "123456789012", "--name", "x", "--regions", "us-east-1", "--external-id", "abc"],
         "--external-id: An external id is only sent when assuming a role: give a role ARN"),
        (["remove", "123456789012"], "not registered"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(args, message):
    with pytest.raises(CommandError) as exc:
        call_command("fleet_account", *args)
    assert exc.value.returncode == 2
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert not Account.objects.exists()


def test_remove_refuses_an_account_with_change_history():
    item = ChangeItemFactory()
    with pytest.raises(CommandError) as exc:
        call_command("fleet_account", "remove", item.account.account_id)
    assert exc.value.returncode == 2 and "disable" in str(exc.value)
    run("fleet_account", "disable", item.account.account_id)
    assert not Account.objects.get(pk=item.account.pk).enabled


def test_sync_of_unknown_account_exits_2():
    AccountFactory(account_id="123456789012")
    with pytest.raises(CommandError) as exc:
        call_command("fleet_sync", "--account", "999999999999")
    assert exc.value.returncode == 2


def test_change_of_unknown_account_exits_2():
    with pytest.raises(CommandError) as exc:
        call_command("fleet_change", "require-imdsv2", "--account", "999999999999")
    assert exc.value.returncode == 2


def test_fleet_user_applies_the_password_validators():
    from django.contrib.auth.models import User

    with pytest.raises(CommandError) as exc:
        call_command("fleet_user", "set", "alice", "--role", "viewer", "--password", "x")
    message = str(exc.value)
    assert exc.value.returncode == 2 and "\n" not in message
    assert message.startswith("error: password refused: ")
    assert "This password is too short. It must contain at least 8 characters." in message
    assert not User.objects.filter(username="alice").exists()

    assert run("fleet_user", "set", "alice", "--role", "viewer", "--password", "kept-Secret-41") == "alice: viewer\n"
    for weak in ("12345678", "password", "alice123"):
        with pytest.raises(CommandError):
            call_command("fleet_user", "set", "alice", "--role", "operator", "--password", weak)
    alice = User.objects.get(username="alice")
    assert alice.check_password("kept-Secret-41") and [g.name for g in alice.groups.all()] == ["viewer"]
