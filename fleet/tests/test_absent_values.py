"""One representation for "absent": a member AWS left out is NULL on every path (sync, the change
engine's tracking, account defaults, rows stored as "" before), and the list's filters, the
posture summary and the CSV export count it the same way."""

import csv
import importlib
import io
from datetime import UTC, datetime

import pytest
from django.apps import apps
from django.urls import reverse

from fleet import aws, posture, sync
from fleet.models import Instance, MetadataDefaults
from fleet.tests.factories import AccountFactory, InstanceFactory, MetadataDefaultsFactory

pytestmark = pytest.mark.django_db
OPTION_FIELDS = ("http_tokens", "hop_limit", "http_endpoint", "http_protocol_ipv6", "instance_metadata_tags",
                 "metadata_state")


def described(instance_id, **options):
    """An instance as DescribeInstances returns it, with only the MetadataOptions members given."""
    return {
        "InstanceId": instance_id, "State": {"Name": "running"}, "InstanceType": "t3.micro", "ImageId": "ami-1",
        "LaunchTime": datetime(2026, 1, 1, tzinfo=UTC), "MetadataOptions": options,
    }


def test_members_aws_left_out_or_sent_empty_are_none():
    assert aws.ec2.options_from_aws({"HttpTokens": "", "HttpEndpoint": "enabled"}) == {
        "http_tokens": None, "hop_limit": None, "http_endpoint": "enabled", "http_protocol_ipv6": None,
        "instance_metadata_tags": None, "metadata_state": None,
    }


@pytest.mark.parametrize("vendor_path", ["bulk_create", "postgresql"])
def test_sync_stores_absent_members_as_null(vendor_path, monkeypatch):
    from django.db import connection

    if vendor_path == "postgresql" and connection.vendor != "postgresql":
        pytest.skip("the COPY path is PostgreSQL's")
    if vendor_path == "bulk_create":
        monkeypatch.setattr(connection, "vendor", "sqlite")  # take the portable upsert on any database
    account = AccountFactory()
    now = datetime(2026, 1, 2, tzinfo=UTC)
    sync.upsert_instances(account, "us-east-1", [described("i-00000000000000001"),
                                                   described("i-00000000000000002", HttpTokens="", State="")], now)
    rows = Instance.objects.filter(account=account).values_list(*OPTION_FIELDS)
    assert list(rows) == [(None,) * len(OPTION_FIELDS)] * 2
    assert not Instance.objects.filter(http_tokens="").exists()
    # A later page with the members present fills them in, and counts the row as changed.
    new, changed = sync.upsert_instances(
        account, "us-east-1", [described("i-00000000000000001", HttpTokens="required", HttpEndpoint="enabled")], now)
    assert (new, changed) == (0, 1)
    assert Instance.objects.get(instance_id="i-00000000000000001").http_tokens == "required"


def test_account_defaults_absent_from_account_level_are_null(monkeypatch):
    account = AccountFactory()
    monkeypatch.setattr(aws, "get_instance_metadata_defaults", lambda account, region, **kwargs: {
        "http_tokens": None, "hop_limit": None, "http_endpoint": "enabled", "instance_metadata_tags": None,
        "managed_by": "account", "managed_exception_message": "",
    })
    defaults = sync.sync_defaults(account, "us-east-1")
    defaults.refresh_from_db()
    assert (defaults.http_tokens, defaults.http_endpoint, defaults.instance_metadata_tags) == (None, "enabled", None)
    assert defaults.values["http_tokens"] == "no-preference"


def test_the_migration_turns_stored_empty_strings_into_null():
    migration = importlib.import_module("fleet.migrations.0008_absent_is_null_posture_counted")
    kept = InstanceFactory(http_tokens="required")
    old = InstanceFactory()
    Instance.objects.filter(pk=old.pk).update(
        http_tokens="", http_endpoint="", http_protocol_ipv6="", instance_metadata_tags="", metadata_state="")
    defaults = MetadataDefaultsFactory()
    MetadataDefaults.objects.filter(pk=defaults.pk).update(http_tokens="", http_endpoint="", instance_metadata_tags="")
    migration.empty_to_null(apps, None)
    old.refresh_from_db()
    defaults.refresh_from_db()
    assert (old.http_tokens, old.http_endpoint, old.http_protocol_ipv6, old.instance_metadata_tags,
            old.metadata_state) == (None,) * 5
    assert (defaults.http_tokens, defaults.http_endpoint, defaults.instance_metadata_tags) == (None,) * 3
    assert Instance.objects.get(pk=kept.pk).http_tokens == "required"


def test_list_summary_and_csv_count_absent_the_same_way(viewer):
    account = AccountFactory(account_id="111111111111")
    InstanceFactory.create_batch(2, account=account, http_tokens=None, instance_metadata_tags=None)
    InstanceFactory(account=account, http_tokens="optional")
    posture.refresh_all()
    for query, expected in [("http_tokens=null", 2), ("http_tokens=optional", 1), ("instance_metadata_tags=null", 2),
                            ("posture=counted&http_tokens=null", 2)]:
        from fleet.filters import InstanceFilterSet

        filterset = InstanceFilterSet(dict(pair.split("=") for pair in query.split("&")), queryset=Instance.objects)
        assert filterset.qs.count() == filterset.summary_count() == expected, query
        response = viewer.get(reverse("fleet:instance_list") + f"?{query}")
        assert response.context["total"] == expected
        export = viewer.get(reverse("fleet:instance_export") + f"?{query}")
        lines = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
        assert len(lines) == expected
    html = viewer.get(reverse("fleet:instance_list") + "?http_tokens=null").content.decode()
    assert ">absent<" in html and ">None<" not in html
    export = viewer.get(reverse("fleet:instance_export") + "?http_tokens=null")
    lines = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert {(line["http_tokens"], line["instance_metadata_tags"]) for line in lines} == {("", "")}
