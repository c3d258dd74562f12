"""The admin site: the admin role manages accounts; rows from AWS and the audit trail are read-only."""

import pytest

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
        "external_id": "", "regions": '["us-east-1"]', "enabled": "on",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    account.refresh_from_db()
    assert account.name == "renamed" and account.external_id == "very-secret-ext-id"  # kept


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_non_admin_roles_have_no_admin_site(client, role):
    client.force_login(UserFactory(role=role))
    response = client.get("/admin/fleet/instance/")
    assert response.status_code == 302 and "/admin/login/" in response.url
