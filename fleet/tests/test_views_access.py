"""Who may see and do what: every page with an outsider, a viewer and an operator."""

import pytest
from django.test import Client
from django.urls import reverse

from fleet.tests.factories import (
    AccountFactory,
    ChangeItemFactory,
    InstanceFactory,
    MetadataDefaultsFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet():
    account = AccountFactory(account_id="111111111111", name="prod")
    instance = InstanceFactory(account=account, instance_id="i-0123456789abcdef0")
    MetadataDefaultsFactory(account=account, region="us-east-1")
    item = ChangeItemFactory(instance=instance, state="applied", previous={"http_tokens": "optional"})
    return {"account": account, "instance": instance, "batch": item.batch}


def client_for(role):
    client = Client()
    if role:
        client.force_login(UserFactory(role=role))
    return client


def read_urls(fleet):
    return [
        reverse("fleet:overview"),
        reverse("fleet:instance_list"),
        reverse("fleet:instance_export"),
        reverse("fleet:instance_detail", args=[fleet["instance"].instance_id]),
        reverse("fleet:defaults"),
        reverse("fleet:account_health"),
        reverse("fleet:change_list"),
        reverse("fleet:change_detail", args=[fleet["batch"].pk]),
        reverse("fleet:change_progress", args=[fleet["batch"].pk]),
    ]


def operator_urls(fleet):
    return [
        reverse("fleet:change_new") + f"?ids={fleet['instance'].instance_id}&http_tokens=required",
        reverse("fleet:defaults_change") + "?targets=111111111111/us-east-1",
    ]


def test_outsider_is_sent_to_login_everywhere(fleet):
    client = client_for(None)
    for url in read_urls(fleet) + operator_urls(fleet):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login") + "?next="), url


def test_outsider_cannot_post_actions(fleet):
    client = client_for(None)
    batch = fleet["batch"]
    for name in ("fleet:change_cancel", "fleet:change_retry", "fleet:change_rollback", "fleet:change_approve",
                 "fleet:change_refuse", "fleet:change_promote", "fleet:change_abort"):
        response = client.post(reverse(name, args=[batch.pk]))
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    assert batch.rollbacks.count() == 0


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_read_pages_for_every_role(fleet, role):
    client = client_for(role)
    for url in read_urls(fleet):
        assert client.get(url).status_code == 200, url


def test_viewer_gets_friendly_403_on_changes(fleet):
    client = client_for("viewer")
    for url in operator_urls(fleet):
        response = client.get(url)
        assert response.status_code == 403, url
        assert b"Not allowed" in response.content
        assert b"operator role" in response.content
    batch = fleet["batch"]
    for name in ("fleet:change_cancel", "fleet:change_retry", "fleet:change_rollback", "fleet:change_approve",
                 "fleet:change_refuse", "fleet:change_promote", "fleet:change_abort"):
        assert client.post(reverse(name, args=[batch.pk])).status_code == 403
    response = client.post(
        reverse("fleet:instance_detail", args=[fleet["instance"].instance_id]),
        {"http_tokens": "required", "hop_limit": 1, "http_endpoint": "enabled", "http_protocol_ipv6": "disabled",
         "instance_metadata_tags": "disabled"},
    )
    assert response.status_code == 403
    response = client.post(reverse("fleet:change_new"), {"ids": fleet["instance"].instance_id, "http_tokens": "required"})
    assert response.status_code == 403
    assert batch.rollbacks.count() == 0


def test_operator_reaches_change_pages(fleet):
    client = client_for("operator")
    for url in operator_urls(fleet):
        assert client.get(url).status_code == 200, url


def test_buttons_follow_the_role(fleet):
    url = reverse("fleet:change_detail", args=[fleet["batch"].pk])
    assert b"Roll back" in client_for("operator").get(url).content
    viewer_page = client_for("viewer").get(url).content
    assert b"Roll back" not in viewer_page
    assert b"need the operator role" in viewer_page
    instances = client_for("viewer").get(reverse("fleet:instance_list")).content.decode()
    assert 'disabled title="Changing the fleet needs the operator role"' in instances


def test_admin_link_only_for_staff(fleet):
    admin_url = reverse("admin:index").encode()
    assert admin_url in client_for("admin").get(reverse("fleet:overview")).content
    assert admin_url not in client_for("operator").get(reverse("fleet:overview")).content


def test_posts_need_csrf(fleet):
    client = Client(enforce_csrf_checks=True)
    client.force_login(UserFactory(role="operator"))
    response = client.post(reverse("fleet:change_rollback", args=[fleet["batch"].pk]))
    assert response.status_code == 403
    assert b"expired" in response.content
    assert fleet["batch"].rollbacks.count() == 0


def test_login_page_and_logout():
    client = Client()
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b"csrfmiddlewaretoken" in page.content
    user = UserFactory(role="viewer")
    response = client.post(reverse("login"), {"username": user.username, "password": "pw-imdsweb-test"})
    assert response.status_code == 302
    assert client.get(reverse("fleet:overview")).status_code == 200
    assert client.get(reverse("logout")).status_code == 405  # logging out is a POST (a form button)
    client.post(reverse("logout"))
    assert client.get(reverse("fleet:overview")).status_code == 302


def test_custom_404(fleet):
    client = client_for("viewer")
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert b"Not found" in response.content
    assert client.get(reverse("fleet:change_detail", args=[999999])).status_code == 404
    assert client.get(reverse("fleet:change_progress", args=[999999])).status_code == 404


def test_500_page_renders_without_a_request_context():
    from django.template import loader

    html = loader.get_template("500.html").render()
    assert "Something went wrong" in html
    assert "/static/imdsweb/imdsweb.css" in html


def test_no_cdn_links(fleet):
    html = client_for("operator").get(reverse("fleet:overview")).content.decode()
    assert "https://" not in html and "http://" not in html.replace("http://www.w3.org", "")
    assert "/static/django_htmx/htmx-2.min.js" in html


def test_refusals_name_the_users_role_and_what_the_page_needs(fleet):
    viewer = client_for("viewer")
    page = viewer.get(operator_urls(fleet)[0]).content.decode()
    assert "Changing the fleet needs the operator role." in page
    assert "with the viewer role: viewers look at the fleet" in page
    assert "Ask an admin for the operator role" in page

    admin = client_for("admin")
    for url in ("/admin/auth/user/", "/admin/fleet/instance/add/", "/admin/fleet/changebatch/add/"):
        response = admin.get(url)
        assert response.status_code == 403, url
        page = response.content.decode()
        assert "closed to every role" in page and "manage.py fleet_user" in page, url
        assert "with the admin role: admins do what operators do and manage the accounts" in page, url
        assert "operator role" not in page and "Ask an admin" not in page, url

    roleless = Client()
    roleless.force_login(UserFactory())
    page = roleless.get(operator_urls(fleet)[0]).content.decode()
    assert "a login without a role" in page and "Ask an admin for the operator role" in page


def test_a_refusal_is_logged_once_without_a_traceback(fleet, settings, capsys):
    """As in the demo (DEBUG on): Django's own console handler used to print each line a second time."""
    from django.utils.log import configure_logging

    settings.DEBUG = True
    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)  # handlers write to the captured stderr
    try:
        assert client_for("admin").get("/admin/auth/user/").status_code == 403
        assert client_for("viewer").get(operator_urls(fleet)[0]).status_code == 403
        assert client_for("viewer").get("/no/such/page/").status_code == 404
        err = capsys.readouterr().err
    finally:
        configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
    lines = err.splitlines()
    assert [line.split(" ", 2)[2] for line in lines if "django.request" in line] == [
        "WARNING django.request: Forbidden (Permission denied): /admin/auth/user/",
        "WARNING django.request: Forbidden (Permission denied): /changes/new/",
        "WARNING django.request: Not Found: /no/such/page/",
    ], err
    assert "Traceback" not in err, err
