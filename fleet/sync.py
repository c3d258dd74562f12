"""Sync one account/region: stream DescribeInstances pages into the cache, detect gone
instances, read the account defaults, and record the run.

Each page is written with one bulk upsert (plus one read of the rows it touches to count
new and changed ones), never one query per instance. On PostgreSQL the page is COPY'd into a
session-local staging table and merged with one INSERT ... ON CONFLICT: building a Django model
object per instance cost more than the database write itself (docs/benchmarks.md, P1).
"""

import json
import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from . import aws, history, owners, posture, sources, waivers
from .choices import DefaultsStatus, SyncStatus
from .models import Instance, MetadataDefaults, SyncRun
from .models.inventory import INSTANCE_OPTION_FIELDS

log = logging.getLogger(__name__)

# Fields a sync overwrites; first_seen is kept from the row's first insert.
SYNCED_FIELDS = (
    "name",
    "tags",
    "instance_state",
    "instance_type",
    "image_id",
    "launch_time",
    "launch_template_id",
    "launch_template_version",
    "autoscaling_group",
    "iam_instance_profile_arn",
    "public_ip",
    "vpc_id",
    "subnet_id",
    "private_ip",
    "platform_details",
    *INSTANCE_OPTION_FIELDS,
    "metadata_state",
    "last_seen",
    "gone_at",
)
# Fields whose change makes an instance count as "changed" in a run.
COMPARED_FIELDS = (
    "name", "tags", "instance_state", "instance_type", "iam_instance_profile_arn", "public_ip",
    "vpc_id", "subnet_id", "private_ip", "platform_details", *INSTANCE_OPTION_FIELDS, "metadata_state",
)


class SyncAlreadyRunning(Exception):
    pass


def instance_fields(data):
    """DescribeInstances' instance dict -> Instance field values."""
    tags = {tag["Key"]: tag["Value"] for tag in data.get("Tags", [])}
    options = aws.ec2.options_from_aws(data.get("MetadataOptions", {}))
    launch_template_id, launch_template_version, autoscaling_group = owners.attribution(tags)
    return {
        "instance_id": data["InstanceId"],
        "name": tags.get("Name", "")[:256],
        "tags": tags,
        "instance_state": data.get("State", {}).get("Name", ""),
        "instance_type": data.get("InstanceType", ""),
        "image_id": data.get("ImageId", ""),
        "launch_time": data.get("LaunchTime"),
        "launch_template_id": launch_template_id,
        "launch_template_version": launch_template_version,
        "autoscaling_group": autoscaling_group,
        # The SSRF risk's inputs (fleet.models.inventory.RISKS); absent is None (NULL).
        "iam_instance_profile_arn": data.get("IamInstanceProfile", {}).get("Arn") or None,
        "public_ip": data.get("PublicIpAddress") or None,
        # Context for the engineer reading the list (absent is None, as above).
        "vpc_id": data.get("VpcId") or None,
        "subnet_id": data.get("SubnetId") or None,
        "private_ip": data.get("PrivateIpAddress") or None,
        "platform_details": data.get("PlatformDetails") or None,
        # Absent members stay None (NULL), never "": see Instance's option fields.
        **{field: options[field] for field in INSTANCE_OPTION_FIELDS},
        "metadata_state": options["metadata_state"],
    }


def upsert_instances(account, region, instances, now):
    """Write one page of instance dicts. Returns (new, changed) counts."""
    rows = [instance_fields(data) for data in instances]
    if not rows:
        return 0, 0
    if connection.vendor == "postgresql":
        return _upsert_postgresql(account, region, rows, now)
    return _upsert_bulk_create(account, region, rows, now)


def _upsert_bulk_create(account, region, rows, now):
    existing = {
        values[0]: values[1:]
        for values in Instance.objects.filter(
            account=account, region=region, instance_id__in=[row["instance_id"] for row in rows]
        ).values_list("instance_id", *COMPARED_FIELDS)
    }
    new = changed = 0
    objs = []
    for row in rows:
        before = existing.get(row["instance_id"])
        if before is None:
            new += 1
        elif before != tuple(row[field] for field in COMPARED_FIELDS):
            changed += 1
        objs.append(Instance(account=account, region=region, first_seen=now, last_seen=now, gone_at=None, **row))
    Instance.objects.bulk_create(
        objs,
        update_conflicts=True,
        unique_fields=["account", "region", "instance_id"],
        update_fields=list(SYNCED_FIELDS),
    )
    return new, changed


# The columns a page carries, in the staging table's order.
STAGED_FIELDS = ("instance_id", *(name for name in SYNCED_FIELDS if name not in ("last_seen", "gone_at")))
STAGING_TABLE = "imdsweb_instance_page"


def _column(name):
    return connection.ops.quote_name(Instance._meta.get_field(name).column)


def _upsert_postgresql(account, region, rows, now):
    """COPY the page into a temporary table, count new and changed rows against the cache, then
    merge it with one INSERT ... ON CONFLICT. Three statements per page, whatever its size."""
    table = connection.ops.quote_name(Instance._meta.db_table)
    staged = ", ".join(_column(name) for name in STAGED_FIELDS)
    compared = [_column(name) for name in COMPARED_FIELDS]
    updates = ", ".join(f"{_column(name)} = EXCLUDED.{_column(name)}" for name in SYNCED_FIELDS)
    with transaction.atomic(), connection.cursor() as cursor:
        # Column types come from the instance table itself, so the two cannot drift apart.
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} ON COMMIT DELETE ROWS "
            f"AS SELECT {staged} FROM {table} WITH NO DATA"
        )
        cursor.execute(f"DELETE FROM {STAGING_TABLE}")  # in case an outer transaction staged a page already
        with cursor.cursor.copy(f"COPY {STAGING_TABLE} ({staged}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(
                    [json.dumps(row[name]) if name == "tags" else row[name] for name in STAGED_FIELDS]
                )
        cursor.execute(
            f"SELECT count(*) FILTER (WHERE i.id IS NULL), "
            f"count(*) FILTER (WHERE i.id IS NOT NULL AND ({', '.join(f'i.{c}' for c in compared)}) "
            f"IS DISTINCT FROM ({', '.join(f'p.{c}' for c in compared)})) "
            f"FROM {STAGING_TABLE} p LEFT JOIN {table} i "
            f"ON i.{_column('account')} = %s AND i.{_column('region')} = %s "
            f"AND i.{_column('instance_id')} = p.{_column('instance_id')}",
            [account.pk, region],
        )
        new, changed = cursor.fetchone()
        cursor.execute(
            f"INSERT INTO {table} ({_column('account')}, {_column('region')}, {staged}, "
            f"{_column('first_seen')}, {_column('last_seen')}, {_column('gone_at')}) "
            # DISTINCT ON: AWS never repeats an instance in a page, but one repeat would abort the page.
            f"SELECT DISTINCT ON ({_column('instance_id')}) %s, %s, {staged}, %s, %s, NULL "
            f"FROM {STAGING_TABLE} "
            f"ON CONFLICT ({_column('account')}, {_column('region')}, {_column('instance_id')}) "
            f"DO UPDATE SET {updates}",
            [account.pk, region, now, now],
        )
    return new, changed


def _start_run(account, region):
    stale = timezone.now() - timedelta(minutes=settings.IMDSWEB_STALE_SYNC_MINUTES)
    SyncRun.objects.filter(account=account, region=region, status=SyncStatus.RUNNING, started_at__lt=stale).update(
        status=SyncStatus.FAILED, finished_at=timezone.now(), error="abandoned: the worker running it stopped"
    )
    try:
        with transaction.atomic():
            return SyncRun.objects.create(account=account, region=region, started_at=timezone.now())
    except IntegrityError as exc:
        raise SyncAlreadyRunning(f"{account.account_id}/{region} is already being synced") from exc


def sync_defaults(account, region, token_taken=False):
    """Read GetInstanceMetadataDefaults into MetadataDefaults; an endpoint that cannot answer
    leaves the values as they were and records why. ``token_taken``: the caller has the call's
    rate-limit token (the change engine, which never waits for one)."""
    try:
        values = aws.get_instance_metadata_defaults(account, region, token_taken=token_taken)
    except aws.AwsError as exc:
        log.warning("defaults for %s/%s unknown: %s", account.account_id, region, exc)
        defaults, _ = MetadataDefaults.objects.get_or_create(account=account, region=region)
        defaults.error = f"{exc.code}: {exc.message}"[:2000]
        defaults.save(update_fields=["error"])
        return defaults
    defaults, _ = MetadataDefaults.objects.update_or_create(
        account=account,
        region=region,
        defaults={
            "status": DefaultsStatus.KNOWN,
            # Absent from AccountLevel (no preference) is NULL, like an instance's absent options.
            "http_tokens": values["http_tokens"],
            "hop_limit": values["hop_limit"] if values["hop_limit"] not in (None, -1) else None,
            "http_endpoint": values["http_endpoint"],
            "instance_metadata_tags": values["instance_metadata_tags"],
            "http_tokens_enforced": values.get("http_tokens_enforced"),
            "managed_by": values["managed_by"],
            "managed_exception_message": values["managed_exception_message"],
            "error": "",
            "synced_at": timezone.now(),
        },
    )
    return defaults


def sync_region(account, region):
    """Full sync of one account/region. Returns the finished SyncRun (succeeded or failed).

    Raises SyncAlreadyRunning when another sync of the same account/region is under way.
    """
    run = _start_run(account, region)
    observer = history.SyncObserver(run)  # drift and posture history (fleet.history)
    try:
        for page in aws.describe_instance_pages(account, region):
            observer.page(page)
            new, changed = upsert_instances(account, region, page, timezone.now())
            run.seen += len(page)
            run.new += new
            run.changed += changed
        run.gone = (
            Instance.objects.filter(account=account, region=region, gone_at__isnull=True, last_seen__lt=run.started_at)
            .update(gone_at=timezone.now())
        )
        sync_defaults(account, region)
        sources.sync_sources(account, region)  # records its own failure; never fails the run
        run.status = SyncStatus.SUCCEEDED
    except aws.AwsError as exc:
        log.warning("sync %s/%s failed: %s", account.account_id, region, exc)
        run.status = SyncStatus.FAILED
        run.error = f"{exc.code}: {exc.message}"[:4000]
    except Exception as exc:
        run.status = SyncStatus.FAILED
        run.error = f"{type(exc).__name__}: {exc}"[:4000]
        raise
    finally:
        # Even a failed sync may have written pages: keep the overview's summary true to the rows,
        # new and re-tagged instances under the waivers that cover them first.
        waivers.apply_waivers([(account.pk, region)], refresh=False)
        posture.refresh_region(account.pk, region)
        run.finished_at = timezone.now()
        run.save()
        observer.finish()
    return run


def targets(account_id=None, region=None):
    """The enabled (account, region) pairs, optionally narrowed."""
    from .models import Account

    accounts = Account.objects.filter(enabled=True)
    if account_id:
        accounts = accounts.filter(account_id=account_id)
    for account in accounts:
        for account_region in account.regions:
            if region is None or account_region == region:
                yield account, account_region
