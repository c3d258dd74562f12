"""Shared pieces of the benchmarks: Django on the benchmark database, boto3-shaped fleet pages,
COPY loading of instance rows, timing helpers and the result file each benchmark writes.

Every benchmark is a module run as ``python -m bench.<name> [--quick] --out result.json``;
``bench.run`` (``scripts/bench.sh``) prepares the database and a private Redis and runs them all.
"""

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE_SIZE = 1000  # what fleet.aws.ec2 asks DescribeInstances for

REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2", "us-west-2", "eu-central-1")
NAMES = ("web", "api", "worker", "eks-node", "batch", "db-proxy", "bastion", "ecs-host", "cache", "etl")
TEAMS = ("payments", "search", "platform", "data", "identity")
TYPES = ("t3.medium", "m5.large", "c6i.xlarge", "r6g.large", "m7g.2xlarge")


# The workers' and beat's settings as deployed (DJANGO_DEBUG off): under Django's debug setting
# every SQL statement is also timed and kept in a list of the last 9,000, which is the development
# server's help, not the product's cost.
PRODUCTION_WORKERS = {"DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": "bench-workers-" + "0123456789abcdef" * 4}


def setup_django():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imdsweb.settings")
    # Run on its own, a benchmark must never hand tasks to a shared broker: bench.run gives it a
    # private Redis, anything else gets Celery's in-process transport.
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def parse_args(description, argv=None, extra=None):
    """``--quick`` and ``--out``; ``extra(parser)`` adds a benchmark's own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--out", type=Path, help="write this benchmark's result (JSON) here")
    if extra:
        extra(parser)
    return parser.parse_args(argv)


def write_result(out, result):
    """Print the figures and write the result file the runner merges into results.json."""
    print(json.dumps(result, indent=2, default=str), flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def percentile(values, pct):
    ordered = sorted(values)
    if not ordered:
        return None
    k = (len(ordered) - 1) * pct / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def median(values):
    return statistics.median(values)


def rss_mb():
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- boto3-shaped fleet


def account_id_of(index):
    return f"{710000000000 + index:012d}"


def posture(n):
    """A deterministic, realistic mix of IMDS postures for instance number ``n``."""
    rng = random.Random(n)
    roll = rng.random()
    tokens = "required" if roll < 0.6 else "optional"
    endpoint = "disabled" if rng.random() < 0.03 else "enabled"
    hop = 1 if rng.random() < 0.7 else rng.choice((2, 2, 2, 3))
    metadata_state = "pending" if rng.random() < 0.02 else "applied"
    state_roll = rng.random()
    instance_state = "running" if state_roll < 0.85 else "stopped" if state_roll < 0.97 else "terminated"
    return rng, tokens, endpoint, hop, metadata_state, instance_state


STATE_CODES = {"running": 16, "stopped": 80, "terminated": 48, "pending": 0}
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)


def instance_dict(n, region):
    """One instance as ``DescribeInstances`` returns it through boto3 (parsed: datetimes, ints)."""
    rng, tokens, endpoint, hop, metadata_state, instance_state = posture(n)
    launched = BASE_TIME + timedelta(minutes=n % 500000)
    name = f"{rng.choice(NAMES)}-{n % 9973:04d}"
    eni = f"eni-{n:017x}"
    ip = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
    return {
        "AmiLaunchIndex": 0,
        "ImageId": f"ami-{rng.randrange(16**8):08x}{rng.randrange(16**9):09x}",
        "InstanceId": f"i-{n:017x}",
        "InstanceType": rng.choice(TYPES),
        "KeyName": "ops",
        "LaunchTime": launched,
        "Monitoring": {"State": "disabled"},
        "Placement": {"AvailabilityZone": f"{region}a", "GroupName": "", "Tenancy": "default"},
        "PrivateDnsName": f"ip-{ip.replace('.', '-')}.ec2.internal",
        "PrivateIpAddress": ip,
        "ProductCodes": [],
        "PublicDnsName": "",
        "State": {"Code": STATE_CODES[instance_state], "Name": instance_state},
        "StateTransitionReason": "",
        "SubnetId": f"subnet-{n % 64:017x}",
        "VpcId": f"vpc-{n % 4:017x}",
        "Architecture": "x86_64",
        "BlockDeviceMappings": [
            {
                "DeviceName": "/dev/xvda",
                "Ebs": {"AttachTime": launched, "DeleteOnTermination": True, "Status": "attached",
                        "VolumeId": f"vol-{n:017x}"},
            }
        ],
        "ClientToken": "",
        "EbsOptimized": False,
        "EnaSupport": True,
        "Hypervisor": "xen",
        "NetworkInterfaces": [
            {
                "Attachment": {"AttachTime": launched, "AttachmentId": f"eni-attach-{n:017x}",
                               "DeleteOnTermination": True, "DeviceIndex": 0, "Status": "attached",
                               "NetworkCardIndex": 0},
                "Description": "",
                "Groups": [{"GroupName": "default", "GroupId": f"sg-{n % 16:017x}"}],
                "Ipv6Addresses": [],
                "MacAddress": f"02:{n % 256:02x}:00:00:00:01",
                "NetworkInterfaceId": eni,
                "OwnerId": "000000000000",
                "PrivateDnsName": f"ip-{ip.replace('.', '-')}.ec2.internal",
                "PrivateIpAddress": ip,
                "PrivateIpAddresses": [{"Primary": True, "PrivateIpAddress": ip}],
                "SourceDestCheck": True,
                "Status": "in-use",
                "SubnetId": f"subnet-{n % 64:017x}",
                "VpcId": f"vpc-{n % 4:017x}",
                "InterfaceType": "interface",
            }
        ],
        "RootDeviceName": "/dev/xvda",
        "RootDeviceType": "ebs",
        "SecurityGroups": [{"GroupName": "default", "GroupId": f"sg-{n % 16:017x}"}],
        "SourceDestCheck": True,
        "Tags": [
            {"Key": "Name", "Value": name},
            {"Key": "Team", "Value": rng.choice(TEAMS)},
            {"Key": "Environment", "Value": rng.choice(("prod", "staging", "dev"))},
        ],
        "VirtualizationType": "hvm",
        "CpuOptions": {"CoreCount": 1, "ThreadsPerCore": 2},
        "CapacityReservationSpecification": {"CapacityReservationPreference": "open"},
        "HibernationOptions": {"Configured": False},
        "MetadataOptions": {
            "State": metadata_state,
            "HttpTokens": tokens,
            "HttpPutResponseHopLimit": hop,
            "HttpEndpoint": endpoint,
            "HttpProtocolIpv6": "disabled",
            "InstanceMetadataTags": "disabled",
        },
        "EnclaveOptions": {"Enabled": False},
        "PlatformDetails": "Linux/UNIX",
        "UsageOperation": "RunInstances",
        "UsageOperationUpdateTime": launched,
        "PrivateDnsNameOptions": {"HostnameType": "ip-name", "EnableResourceNameDnsARecord": False,
                                  "EnableResourceNameDnsAAAARecord": False},
        "MaintenanceOptions": {"AutoRecovery": "default"},
        "CurrentInstanceBootMode": "legacy-bios",
    }


def describe_page(owner_id, region, start, count, next_token=None):
    """One DescribeInstances response as boto3's paginator yields it: instances grouped in
    reservations of 1-8 (one per RunInstances call), a NextToken, the ResponseMetadata."""
    reservations, n = [], start
    while n < start + count:
        size = min(1 + n % 8, start + count - n)
        reservations.append({
            "Groups": [],
            "Instances": [instance_dict(i, region) for i in range(n, n + size)],
            "OwnerId": owner_id,
            "ReservationId": f"r-{n:017x}",
        })
        n += size
    page = {
        "Reservations": reservations,
        "ResponseMetadata": {"RequestId": f"{start:08d}-0000-4000-8000-000000000000", "HTTPStatusCode": 200,
                             "HTTPHeaders": {"content-type": "text/xml;charset=UTF-8"}, "RetryAttempts": 0},
    }
    if next_token:
        page["NextToken"] = next_token
    return page


def fleet_pages(owner_id, region, first, total):
    """Yield ``total`` instances of one account/region as boto3 pages of 1,000, lazily."""
    for start in range(first, first + total, PAGE_SIZE):
        count = min(PAGE_SIZE, first + total - start)
        more = start + count < first + total
        yield describe_page(owner_id, region, start, count, next_token=f"token-{start + count}" if more else None)


def page_instances(page):
    """The flattening ``fleet.aws.describe_instance_pages`` does."""
    return [instance for reservation in page["Reservations"] for instance in reservation["Instances"]]


# ---------------------------------------------------------------- the database


def ensure_accounts(n_accounts, regions_per_account):
    """``n_accounts`` accounts with their regions; returns [(Account, region), ...]."""
    from fleet.models import Account

    pairs = []
    for index in range(n_accounts):
        regions = list(REGIONS[:regions_per_account])
        account, _ = Account.objects.update_or_create(
            account_id=account_id_of(index), defaults={"name": f"bench-{index:03d}", "regions": regions}
        )
        pairs += [(account, region) for region in regions]
    return pairs


def truncate_fleet():
    from django.db import connection

    with connection.cursor() as cursor:
        # Every table with a foreign key to one of these goes too (drift and notification events
        # point at instances and sync runs, waivers at instances, batch events at batches): PostgreSQL refuses to truncate a referenced table alone.
        cursor.execute(
            "TRUNCATE fleet_driftevent, fleet_notificationevent, fleet_changeitem, fleet_batchevent,"
            " fleet_changebatch, fleet_waiverevent, fleet_waiver, fleet_instance, fleet_regionsync, fleet_syncrun,"
            " fleet_metadatadefaults"
        )


def seed_sync_runs(pairs, now):
    """A finished successful sync run per (account, region) and its RegionSync row (bulk_create
    skips ``SyncRun.save``, which keeps that row), as an install that has been syncing has."""
    from fleet.choices import SyncStatus
    from fleet.models import RegionSync, SyncRun

    runs = SyncRun.objects.bulk_create(
        SyncRun(account=account, region=region, started_at=now, finished_at=now, status=SyncStatus.SUCCEEDED)
        for account, region in pairs
    )
    RegionSync.objects.bulk_create(
        RegionSync(account_id=run.account_id, region=run.region, last_run=run, last_status=run.status,
                   last_success_at=run.finished_at) for run in runs
    )


COPY_COLUMNS = (
    "account_id", "region", "instance_id", "name", "tags", "instance_state", "instance_type", "image_id",
    "launch_time", "http_tokens", "hop_limit", "http_endpoint", "http_protocol_ipv6", "instance_metadata_tags",
    "metadata_state", "v1_calls", "v1_rejected", "v1_last_seen", "usage_synced_at", "first_seen", "last_seen",
    "gone_at",
)


def synthetic_rows(pairs, first, total, now):
    """``total`` instance rows spread over ``pairs`` (account, region), numbered from ``first``:
    the same postures as the pages, plus IMDSv1 usage evidence and a few gone instances."""
    for n in range(first, first + total):
        account, region = pairs[n % len(pairs)]
        rng, tokens, endpoint, hop, metadata_state, instance_state = posture(n)
        usage = rng.random()
        v1 = None if usage < 0.3 else 0 if usage < 0.8 else rng.randrange(1, 5000)
        name = f"{rng.choice(NAMES)}-{n % 9973:04d}"
        gone = now if rng.random() < 0.01 else None
        tags = json.dumps({"Name": name, "Team": rng.choice(TEAMS)})
        yield (
            account.pk, region, f"i-{n:017x}", name, tags, instance_state, rng.choice(TYPES),
            f"ami-{n % 977:017x}", BASE_TIME + timedelta(minutes=n % 500000), tokens, hop, endpoint,
            "disabled", "disabled", metadata_state, v1, 0 if v1 is not None else None, None,
            now if v1 is not None else None, now, now - timedelta(seconds=rng.randrange(3600)), gone,
        )


def _fraction(salt):
    """A deterministic uniform [0, 1) per instance number ``n`` and ``salt``, in SQL."""
    return f"((hashint4((n * 16 + {salt})::int)::bigint + 2147483648) / 4294967296.0)"


def generate_rows(pairs, first, total, now):
    """``total`` instance rows numbered from ``first``, written by PostgreSQL itself (one
    INSERT ... SELECT over ``generate_series``): the mix of :func:`synthetic_rows` (tokens 60 %
    required, 3 % endpoint off, 70 % hop limit 1, 85/12/3 % running/stopped/terminated, usage never
    measured for 30 %, IMDSv1 calls for 20 %, 1 % gone) without a Python object per row, so a
    million rows load in seconds rather than minutes. Returns the count."""
    from django.db import connection, transaction

    accounts = [account.pk for account, _ in pairs]
    regions = [region for _, region in pairs]
    f = _fraction
    pick = "(ARRAY{})[1 + (n %% {})]"
    sql = f"""
        INSERT INTO fleet_instance ({', '.join(COPY_COLUMNS)})
        SELECT (%(accounts)s::bigint[])[1 + (n %% %(pairs)s)], (%(regions)s::text[])[1 + (n %% %(pairs)s)],
               'i-' || lpad(to_hex(n), 17, '0'), name, jsonb_build_object('Name', name, 'Team', team),
               CASE WHEN {f(1)} < 0.85 THEN 'running' WHEN {f(1)} < 0.97 THEN 'stopped' ELSE 'terminated' END,
               {pick.format(list(TYPES), len(TYPES))}, 'ami-' || lpad(to_hex(n %% 977), 17, '0'),
               %(base)s::timestamptz + (n %% 500000) * interval '1 minute',
               CASE WHEN {f(2)} < 0.6 THEN 'required' ELSE 'optional' END,
               CASE WHEN {f(3)} < 0.7 THEN 1 WHEN {f(4)} < 0.75 THEN 2 ELSE 3 END,
               CASE WHEN {f(5)} < 0.03 THEN 'disabled' ELSE 'enabled' END, 'disabled', 'disabled',
               CASE WHEN {f(6)} < 0.02 THEN 'pending' ELSE 'applied' END,
               v1, CASE WHEN v1 IS NOT NULL THEN 0 END, NULL,
               CASE WHEN v1 IS NOT NULL THEN %(now)s::timestamptz END, %(now)s::timestamptz,
               %(now)s::timestamptz - floor({f(7)} * 3600) * interval '1 second',
               CASE WHEN {f(8)} < 0.01 THEN %(now)s::timestamptz END
        FROM (
            SELECT n, {pick.format(list(NAMES), len(NAMES))} || '-' || lpad((n %% 9973)::text, 4, '0') AS name,
                   {pick.format(list(TEAMS), len(TEAMS))} AS team,
                   CASE WHEN {f(9)} < 0.3 THEN NULL WHEN {f(9)} < 0.8 THEN 0
                        ELSE 1 + floor({f(10)} * 4999)::int END AS v1
            FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n
        ) AS g
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, {"accounts": accounts, "regions": regions, "pairs": len(pairs), "base": BASE_TIME,
                             "now": now, "first": first, "last": first + total - 1})
        return cursor.rowcount


REBUILD_INDEXES_FROM = 100_000  # rows loaded at once


def load_instances(pairs, first, total, now):
    """:func:`generate_rows` with the instance table's secondary indexes dropped for the load and
    built again after it, in one transaction: building an index over a million rows (the GIN
    indexes of the search and the tags above all) is several times faster than maintaining it
    row by row (a small load keeps them: rebuilding costs more than it saves). The primary key
    and the unique constraint stay. Then :func:`analyze`."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = 'fleet_instance' AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conindid = to_regclass(quote_ident(i.indexname)))"
        )
        indexes = cursor.fetchall() if total >= REBUILD_INDEXES_FROM else []
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        # The account foreign key is checked at the INSERT, not at COMMIT: PostgreSQL builds no
        # index on a table with checks still pending.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        count = generate_rows(pairs, first, total, now)
        cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            cursor.execute(definition)
    analyze()
    return count


class OperatorClient:
    """A logged-in superuser's test client and the bulk "Require IMDSv2" POST of P4 and P4b:
    the confirmation form through the whole middleware stack, its queries counted and timed."""

    def __init__(self):
        from django.contrib.auth import get_user_model

        self.user, _ = get_user_model().objects.get_or_create(username="bench-operator",
                                                              defaults={"is_superuser": True})
        self.user.is_superuser = True
        self.user.save()
        self.client = self.new_client()

    def new_client(self):
        from django.test import Client

        client = Client(HTTP_HOST="localhost")
        client.force_login(self.user)
        return client

    def require_imdsv2(self):
        """No batches before it; returns (the batch, seconds, queries) of the request."""
        from django.db import connection
        from django.test.utils import CaptureQueriesContext
        from django.urls import reverse

        from fleet.models import ChangeBatch

        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE fleet_changeitem, fleet_batchevent, fleet_changebatch")
        self.client.get(reverse("fleet:overview"))  # warm: templates, URL resolver, session
        with CaptureQueriesContext(connection) as queries, Timer() as timer:
            response = self.client.post(reverse("fleet:change_new"),
                                        {"filter": "gone=present", "http_tokens": "required"})
        assert response.status_code == 302, (response.status_code, response.content[:2000])
        return ChangeBatch.objects.get(), timer.seconds, len(queries)


def copy_rows(rows, table="fleet_instance", columns=COPY_COLUMNS):
    """COPY ``rows`` (tuples in ``columns`` order) into ``table`` with psycopg 3. Returns the count."""
    from django.db import connection, transaction

    count = 0
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    return count


# The same posture mix as ``posture`` and ``synthetic_rows``, drawn in SQL: each draw is a hash of
# the instance number and a draw index (hashint8extended), so a load is deterministic and no row
# crosses from Python to PostgreSQL. 1,000,000 rows this way take seconds where COPY from Python
# rows took minutes (each row's random draws and its text encoding are Python work).
SYNTHETIC_SQL = """
INSERT INTO fleet_instance (account_id, region, instance_id, name, tags, instance_state, instance_type, image_id,
    launch_time, http_tokens, hop_limit, http_endpoint, http_protocol_ipv6, instance_metadata_tags, metadata_state,
    v1_calls, v1_rejected, v1_last_seen, usage_synced_at, first_seen, last_seen, gone_at)
SELECT (%(accounts)s::bigint[])[1 + n %% %(pairs)s], (%(regions)s::text[])[1 + n %% %(pairs)s],
    'i-' || lpad(to_hex(n), 17, '0'), d.name, jsonb_build_object('Name', d.name, 'Team', d.team),
    CASE WHEN d.r_state < 0.85 THEN 'running' WHEN d.r_state < 0.97 THEN 'stopped' ELSE 'terminated' END,
    d.instance_type, 'ami-' || lpad(to_hex(n %% 977), 17, '0'), %(base)s + make_interval(mins => (n %% 500000)::int),
    CASE WHEN d.r_tokens < 0.6 THEN 'required' ELSE 'optional' END,
    CASE WHEN d.r_hop < 0.7 THEN 1 WHEN d.h_hop %% 4 = 3 THEN 3 ELSE 2 END,
    CASE WHEN d.r_endpoint < 0.03 THEN 'disabled' ELSE 'enabled' END, 'disabled', 'disabled',
    CASE WHEN d.r_metadata < 0.02 THEN 'pending' ELSE 'applied' END,
    d.v1, CASE WHEN d.v1 IS NOT NULL THEN 0 END, NULL, CASE WHEN d.v1 IS NOT NULL THEN %(now)s::timestamptz END,
    %(now)s, %(now)s::timestamptz - make_interval(secs => floor(d.r_seen * 3600)),
    CASE WHEN d.r_gone < 0.01 THEN %(now)s::timestamptz END
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS n,
LATERAL (SELECT
    (hashint8extended(n, 1) & 2147483647) / 2147483648.0 AS r_tokens,
    (hashint8extended(n, 2) & 2147483647) / 2147483648.0 AS r_endpoint,
    (hashint8extended(n, 3) & 2147483647) / 2147483648.0 AS r_hop,
    hashint8extended(n, 4) & 2147483647 AS h_hop,
    (hashint8extended(n, 5) & 2147483647) / 2147483648.0 AS r_metadata,
    (hashint8extended(n, 6) & 2147483647) / 2147483648.0 AS r_state,
    (hashint8extended(n, 10) & 2147483647) / 2147483648.0 AS r_gone,
    (hashint8extended(n, 11) & 2147483647) / 2147483648.0 AS r_seen,
    CASE WHEN (hashint8extended(n, 7) & 2147483647) / 2147483648.0 < 0.3 THEN NULL
         WHEN (hashint8extended(n, 7) & 2147483647) / 2147483648.0 < 0.8 THEN 0
         ELSE 1 + (hashint8extended(n, 8) & 2147483647) %% 4999 END AS v1,
    (%(names)s::text[])[1 + (hashint8extended(n, 9) & 2147483647) %% %(n_names)s]
        || '-' || lpad((n %% 9973)::text, 4, '0') AS name,
    (%(teams)s::text[])[1 + (hashint8extended(n, 12) & 2147483647) %% %(n_teams)s] AS team,
    (%(types)s::text[])[1 + (hashint8extended(n, 13) & 2147483647) %% %(n_types)s] AS instance_type
) AS d
"""


def insert_synthetic_rows(pairs, first, total, now):
    """``total`` instance rows over ``pairs`` (account, region), numbered from ``first``, written by
    one INSERT ... SELECT generate_series in PostgreSQL (``SYNTHETIC_SQL``): the posture mix of
    ``synthetic_rows``, drawn by PostgreSQL's hash instead of Python's random. Returns the count."""
    from django.db import connection, transaction

    if total <= 0:
        return 0
    params = {
        "accounts": [account.pk for account, _ in pairs], "regions": [region for _, region in pairs],
        "pairs": len(pairs), "first": first, "last": first + total - 1, "now": now, "base": BASE_TIME,
        "names": list(NAMES), "n_names": len(NAMES), "teams": list(TEAMS), "n_teams": len(TEAMS),
        "types": list(TYPES), "n_types": len(TYPES),
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(SYNTHETIC_SQL, params)
        return cursor.rowcount


class deferred_indexes:
    """Drop ``table``'s secondary indexes, unique and foreign-key constraints for a bulk load and
    create them again afterwards, as pg_restore does: one sorted build per index is several times
    faster than maintaining ~20 of them row by row, and one anti-join validates a foreign key where
    the deferred per-row checks would queue a trigger event per row until COMMIT. The primary key
    and CHECK constraints stay. The same definitions come back (``pg_indexes.indexdef``,
    ``pg_get_constraintdef``), freshly packed like after a REINDEX."""

    def __init__(self, table="fleet_instance", maintenance_work_mem="256MB"):
        self.table, self.maintenance_work_mem = table, maintenance_work_mem
        self.indexes, self.constraints = [], []

    def __enter__(self):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
                "AND contype IN ('u', 'f') ORDER BY contype DESC", [self.table],
            )
            self.constraints = cursor.fetchall()  # unique first: a foreign key may need its index
            cursor.execute(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = current_schema() "
                "AND i.tablename = %s AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = "
                "(quote_ident(i.schemaname) || '.' || quote_ident(i.indexname))::regclass)",
                [self.table],
            )
            self.indexes = cursor.fetchall()
            for name, _ in reversed(self.constraints):
                cursor.execute(f'ALTER TABLE "{self.table}" DROP CONSTRAINT "{name}"')
            for name, _ in self.indexes:
                cursor.execute(f'DROP INDEX "{name}"')
        return self

    def __exit__(self, *exc):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(f"SET maintenance_work_mem = '{self.maintenance_work_mem}'")
            for name, definition in self.constraints:
                cursor.execute(f'ALTER TABLE "{self.table}" ADD CONSTRAINT "{name}" {definition}')
            for _, definition in self.indexes:
                cursor.execute(definition)
            cursor.execute("RESET maintenance_work_mem")
        return False


def analyze():
    """VACUUM ANALYZE after a bulk load: statistics, and the hint bits and visibility map an
    established table has (the first reader would otherwise pay for setting them). Then a
    CHECKPOINT, so that the load's dirty pages are written now and not by the checkpointer in the
    middle of what is timed next (a million rows with their indexes are gigabytes of WAL)."""
    from django.db import connection

    with connection.cursor() as cursor:
        # The summary tables too: autovacuum analyses them on an install after a few hundred
        # writes; freshly written here, the planner would see them as empty.
        for table in ("fleet_instance", "fleet_changeitem", "fleet_account", "fleet_regionposture",
                      "fleet_hoplimitcount", "fleet_regionsync", "fleet_syncrun", "fleet_metadatadefaults"):
            cursor.execute(f"VACUUM ANALYZE {table}")
        cursor.execute("CHECKPOINT")


# ---------------------------------------------------------------- the simulator


def use_endpoint(endpoint_url):
    """Point boto3 (and so fleet.aws) at the simulator with dummy credentials."""
    from fleet.aws.session import reset_caches

    os.environ.update({"AWS_ENDPOINT_URL": endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    reset_caches()


def ec2_client(endpoint_url, region, account_id=None):
    """A plain boto3 EC2 client on the simulator, inside ``account_id`` through AssumeRole if given."""
    import boto3

    if account_id is None:
        return boto3.client("ec2", region_name=region, endpoint_url=endpoint_url)
    sts = boto3.client("sts", region_name="us-east-1", endpoint_url=endpoint_url)
    creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/imdsweb-reader",
                            RoleSessionName="bench")["Credentials"]
    return boto3.client("ec2", region_name=region, endpoint_url=endpoint_url,
                        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])


# ---------------------------------------------------------------- engine CPU


def _cpu_of(pid):
    """utime + stime of one process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid):
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except OSError:
                pass
    return pids


def _backends(database):
    """PostgreSQL backends serving ``database`` (their process title names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and f" {database} " in title:
            found.append(int(entry.name))
    return found


class EngineCpu:
    """CPU seconds of the workers (each process tree) and of the database's backends for one
    database, sampled every half second by a thread so that short-lived backends count too."""

    def __init__(self, worker_pids, database):
        self.worker_pids, self.database = worker_pids, database
        self.first, self.last = {}, {}
        self.workers_seen = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        workers = [pid for root in self.worker_pids for pid in _tree(root)]
        self.workers_seen.update(workers)
        pids = workers + _backends(self.database)
        for pid in pids:
            cpu = _cpu_of(pid)
            self.first.setdefault(pid, cpu if not self._thread.is_alive() else 0.0)
            self.last[pid] = max(self.last.get(pid, 0.0), cpu)

    def _run(self):
        while not self._stop.wait(0.5):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self):
        return sum(self.last[pid] - self.first.get(pid, 0.0) for pid in self.last)

    @property
    def worker_seconds(self):
        """The workers' share of ``seconds`` (the rest is the database's backends)."""
        return sum(self.last[pid] - self.first.get(pid, 0.0) for pid in self.last if pid in self.workers_seen)
