"""The admin site: the admin role manages accounts; rows from AWS and the audit trail are read-only."""

import re

import pytest
from django.core.management import CommandError, call_command

from fleet.models import Account
from fleet.tests.factories import AccountFactory, ChangeItemFactory, InstanceFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(UserFactory(role="admin"))
    return client


def test_admin_lists_instances_read_only(admin_client):
    instances = [InstanceFactory() for _ in range(3)]
    page = admin_client.get("/admin/fleet/instance/")
    assert page.status_code == 200
    for instance in instances:
        assert instance.instance_id in page.content.decode()
    assert admin_client.get("/admin/fleet/instance/add/").status_code == 403
    detail = admin_client.get(f"/admin/fleet/instance/{instances[0].pk}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
    assert admin_client.post(f"/admin/fleet/instance/{instances[0].pk}/delete/", {"post": "yes"}).status_code == 403


def test_audit_rows_cannot_be_deleted_or_edited(admin_client):
    item = ChangeItemFactory()
    assert admin_client.get("/admin/fleet/changeitem/").status_code == 200
    assert admin_client.get("/admin/fleet/changebatch/").status_code == 200
    assert admin_client.post(f"/admin/fleet/changeitem/{item.pk}/delete/", {"post": "yes"}).status_code == 403
    assert admin_client.post(f"/admin/fleet/changebatch/{item.batch.pk}/delete/", {"post": "yes"}).status_code == 403


def test_admin_edits_accounts_without_revealing_the_external_id(admin_client):
    account = AccountFactory(role_arn="arn:aws:iam::100000000099:role/r", account_id="100000000099",
                             external_id="very-secret-ext-id")
    page = admin_client.get(f"/admin/fleet/account/{account.pk}/change/")
    assert page.status_code == 200 and b"very-secret-ext-id" not in page.content
    response = admin_client.post(f"/admin/fleet/account/{account.pk}/change/", {
        "account_id": account.account_id, "name": "renamed", "role_arn": account.role_arn,
        "external_id": "", "regions": ["us-east-1"], "enabled": "on",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    account.refresh_from_db()
    assert account.name == "renamed" and account.external_id == "very-secret-ext-id"  # kept


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_non_admin_roles_have_no_admin_site(client, role):
    client.force_login(UserFactory(role=role))
    response = client.get("/admin/fleet/instance/")
    assert response.status_code == 302 and "/admin/login/" in response.url


def account_form(**fields):
    return {"account_id": "100000000099", "name": "prod", "role_arn": "", "external_id": "",
            "regions": ["us-east-1"], "enabled": "on", **fields}


@pytest.mark.parametrize("fields, field, message", [
    ({"role_arn": "arn:aws:iam::999999999999:role/r"}, "role_arn",
     "The role ARN is in account 999999999999, not in account 100000000099"),
    ({"role_arn": "arn:aws:iam::999999999999:role/100000000099"}, "role_arn", "not in account 100000000099"),
    ({"external_id": "secret-ext"}, "external_id", "An external id is only sent when assuming a role"),
])
def test_admin_refuses_what_fleet_account_add_refuses(admin_client, fields, field, message):
    response = admin_client.post("/admin/fleet/account/add/", account_form(**fields))
    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors[field])
    assert not Account.objects.exists()
    with pytest.raises(CommandError) as exc:
        call_command("fleet_account", "add", "100000000099", "--name", "prod", "--regions", "us-east-1",
                     *(f"--{name.replace('_', '-')}={value}" for name, value in fields.items()))
    assert message in str(exc.value)


def test_admin_judges_the_kept_external_id_and_can_clear_it(admin_client):
    account = AccountFactory(account_id="100000000099", role_arn="arn:aws:iam::100000000099:role/r",
                             external_id="very-secret-ext-id")
    url = f"/admin/fleet/account/{account.pk}/change/"
    # Dropping the role while the (unshown, kept) external id stays would store an id without a role.
    response = admin_client.post(url, account_form())
    assert response.status_code == 200
    assert "An external id is only sent" in " ".join(response.context["adminform"].form.errors["external_id"])
    account.refresh_from_db()
    assert account.role_arn and account.external_id == "very-secret-ext-id"
    response = admin_client.post(url, account_form(clear_external_id="on"))
    assert response.status_code == 302, response.content.decode()[:2000]
    account.refresh_from_db()
    assert account.role_arn == "" and account.external_id == ""


def test_admin_regions_are_a_multi_select_of_real_region_names(admin_client):
    page = admin_client.get("/admin/fleet/account/add/").content.decode()
    select = page[page.index('name="regions"') - 200:]
    select = select[:select.index("</select>")]
    options = set(re.findall(r'<option value="([a-z0-9-]+)"', select))
    assert {"us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1"} <= options
    assert "multiple" in select
    response = admin_client.post("/admin/fleet/account/add/", account_form(regions=["eu-west-1", "us-east-1"]))
    assert response.status_code == 302
    assert Account.objects.get().regions == ["eu-west-1", "us-east-1"]
    bad = admin_client.post("/admin/fleet/account/add/", account_form(account_id="100000000098", regions=["mars-1"]))
    assert bad.status_code == 200 and "mars-1 is not one of the available choices" in bad.content.decode()


def test_admin_keeps_a_region_botocore_does_not_know(admin_client):
    account = AccountFactory(regions=["us-east-1", "xx-future-1"])
    page = admin_client.get(f"/admin/fleet/account/{account.pk}/change/").content.decode()
    assert '<option value="xx-future-1" selected>' in page
