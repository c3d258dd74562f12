"""The external id (a shared secret with the account owner) and AWS credentials are never rendered
nor logged: an account registered with both goes through a sync, a change applied by a real
worker, and every page including the admin's; the secret strings appear in none of them."""

import io
import logging
from pathlib import Path

import pytest
from django.core.management import call_command
from django.urls import reverse

from fleet import urls as fleet_urls
from fleet.choices import ItemState
from fleet.models import Account, ChangeBatch, Instance, SyncRun
from fleet.tests.live import LiveStack, wait_for
from imdssim.testing import image_id

from .conftest import client_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ACCOUNT = "444444444444"
EXTERNAL_ID = "extid-never-shown-5d41402abc4b2a76"
SECRET_KEY = "secret-access-key-never-shown-7e2b9c"


class SecretStack(LiveStack):
    """The usual live stack, with an AWS secret key we can search for."""

    def env(self):
        return {**super().env(), "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


@pytest.fixture
def stack(settings):
    live = SecretStack(settings, time_scale=10, apply_delay=0.2)
    live.start(workers=1, beat=True)
    yield live
    live.stop()


def every_page(client, account, instance, batch):
    from datetime import timedelta

    from django.utils import timezone

    from fleet.models import LaunchSource, Waiver

    source = LaunchSource.objects.filter(account=account).first()
    waiver = Waiver.objects.create(scope="account", account=account, owner="vendor team", reason="appliance",
                                   expires_on=timezone.now().date() + timedelta(days=30))
    ids = {"instance_id": instance.instance_id, "pk": batch.pk}
    for pattern in fleet_urls.urlpatterns:
        if pattern.name == "source_detail" and source is None:
            continue  # the account has no launch sources
        kwargs = {name: ids[name] for name in pattern.pattern.converters}
        if pattern.name == "source_detail":
            kwargs["pk"] = source.pk
        elif pattern.name.startswith("waiver_") and "pk" in kwargs:
            kwargs["pk"] = waiver.pk
        yield client.get(reverse(f"fleet:{pattern.name}", kwargs=kwargs))
    for name in ("changelist", "add"):
        yield client.get(reverse(f"admin:fleet_account_{name}"))
    for name in ("change", "history", "delete"):
        yield client.get(reverse(f"admin:fleet_account_{name}", args=[account.pk]))
    yield client.get(reverse("admin:fleet_account_changelist"), {"q": ACCOUNT})
    yield client.get(reverse("admin:fleet_syncrun_changelist"))
    yield client.get(reverse("admin:fleet_changebatch_change", args=[batch.pk]))


def test_external_id_and_credentials_never_logged_nor_rendered(stack, role_groups, caplog):
    caplog.set_level(logging.DEBUG)  # everything our loggers emit, at the most verbose level
    ec2 = stack.ec2(ACCOUNT, "us-east-1")
    image = image_id(ec2)
    ec2.run_instances(ImageId=image, MinCount=4, MaxCount=4, MetadataOptions={"HttpTokens": "optional"})

    out = io.StringIO()
    call_command("fleet_account", "add", ACCOUNT, "--name", "secretive", "--regions", "us-east-1",
                 "--role-arn", f"arn:aws:iam::{ACCOUNT}:role/imdsweb-reader", "--external-id", EXTERNAL_ID,
                 stdout=out, stderr=out)
    call_command("fleet_sync", "--account", ACCOUNT, stdout=out, stderr=out)
    call_command("fleet_account", "list", stdout=out, stderr=out)
    account = Account.objects.get(account_id=ACCOUNT)
    assert account.external_id == EXTERNAL_ID and Instance.objects.filter(account=account).count() == 4

    # A change through the web, applied by the worker (which assumes the role with the external id).
    operator = client_for("operator")
    instance = Instance.objects.filter(account=account).first()
    response = operator.post(reverse("fleet:change_new"), {"filter": f"account={ACCOUNT}", "http_tokens": "required"})
    assert response.status_code == 302
    batch = ChangeBatch.objects.latest("pk")
    wait_for(lambda: not batch.items.filter(state__in=ItemState.active()).exists(), timeout=90,
             message="change applied", stack=stack)
    assert batch.counts()[ItemState.APPLIED] == 4

    admin = client_for("admin")
    pages = [page for page in every_page(admin, account, instance, batch) if page.status_code != 405]
    assert all(page.status_code == 200 for page in pages), [(p.request["PATH_INFO"], p.status_code) for p in pages]
    change_form = admin.get(reverse("admin:fleet_account_change", args=[account.pk])).content.decode()
    assert 'name="external_id"' in change_form  # the field is there, empty: it can be set, never read

    worker_logs = "\n".join(path.read_text() for path in sorted(Path(stack.tmp).glob("*.log")))
    assert "fleet.tasks.apply_region" in worker_logs  # the logs searched are the ones of the real work
    haystacks = {
        "pages": b"".join(b"".join(p.streaming_content) if p.streaming else p.content for p in pages).decode(),
        "command output": out.getvalue(),
        "test process logs": caplog.text,
        "worker and beat logs": worker_logs,
        "sync runs": " ".join(SyncRun.objects.values_list("error", flat=True)),
        "change items": " ".join(f"{i.error_message} {i.reason}" for i in batch.items.all()),
    }
    for secret in (EXTERNAL_ID, SECRET_KEY):
        for where, text in haystacks.items():
            assert secret not in text, f"{secret} appears in the {where}"
    assert "secretive" in haystacks["pages"]  # the pages did render the account
