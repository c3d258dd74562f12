"""P3: the overview and the instance list at 100,000 and 1,000,000 instances in PostgreSQL.

Rows are bulk-loaded with COPY (``bench.common.synthetic_rows``: 20 accounts x 3 regions, the
posture mix of the pages, IMDSv1 usage, 1 % gone), plus what an established install has next to
them: a sync run and account defaults per account/region and five recent change batches. Each page
is requested 50 times (after one warm-up) by a logged-in user through Django's test client; the
query count of every page is recorded at both sizes.
"""

from bench.common import (
    Timer,
    analyze,
    copy_rows,
    ensure_accounts,
    parse_args,
    percentile,
    setup_django,
    synthetic_rows,
    truncate_fleet,
    write_result,
)

PER_PAGE = 50


def pages_to_request(pairs):
    """(name, a function giving the url). A deep page is the one a user reaches by following
    "next" half-way through the result: it starts after the middle row (keyset pagination)."""
    from django.http import QueryDict

    from fleet import pagination
    from fleet.filters import InstanceFilterSet
    from fleet.models import Instance
    from fleet.tables import InstanceTable

    account = pairs[0][0].account_id

    def deep(query):
        # Found once per size with OFFSET (slow at 1 M, outside the timing): the middle row's pk.
        filterset = InstanceFilterSet(QueryDict(query), queryset=Instance.objects.all())
        _, ordering = InstanceTable.ordering_for(filterset.data.get("sort"))
        rows, _ = pagination.ordered(filterset.qs, ordering)
        middle = rows.count() // 2
        return f"/instances/?{query}{'&' if query else ''}after={rows.values_list('pk', flat=True)[middle]}"

    return [
        ("overview", lambda: "/"),
        ("list: default, first page", lambda: "/instances/"),
        ("list: default, deep page", lambda: deep("")),
        ("list: default, last page", lambda: "/instances/?last=1"),
        ("list: tokens optional, by last seen, first page", lambda: "/instances/?http_tokens=optional&sort=-last_seen"),
        ("list: tokens optional, by last seen, deep page", lambda: deep("http_tokens=optional&sort=-last_seen")),
        ("list: account + region, by name", lambda: f"/instances/?account={account}&region=eu-west-1&sort=name"),
        ("list: account + region, by name, deep page",
         lambda: deep(f"account={account}&region=eu-west-1&sort=name")),
        ("list: IMDSv1 in use + applied, by hop limit",
         lambda: "/instances/?v1_usage=yes&metadata_state=applied&sort=-hop_limit"),
        ("list: search 'eks-node'", lambda: "/instances/?q=eks-node"),
        ("list: search 'eks-node', deep page", lambda: deep("q=eks-node")),
        ("list: search for a name no instance has", lambda: "/instances/?q=no-such-name"),
    ]


def seed_surroundings(pairs):
    """Sync runs, defaults and five change batches, as an install that has been running has."""
    from django.utils import timezone

    from fleet import changes
    from fleet.choices import DefaultsStatus, SyncStatus
    from fleet.models import Instance, MetadataDefaults, SyncRun

    now = timezone.now()
    SyncRun.objects.bulk_create(
        SyncRun(account=account, region=region, started_at=now, finished_at=now, status=SyncStatus.SUCCEEDED)
        for account, region in pairs
    )
    MetadataDefaults.objects.bulk_create(
        MetadataDefaults(account=account, region=region, status=DefaultsStatus.KNOWN,
                         http_tokens="required" if index % 2 else None, synced_at=now)
        for index, (account, region) in enumerate(pairs)
    )
    for account, _ in pairs[:15:3]:
        changes.request_change(None, Instance.objects.present().filter(account=account), changes.REQUIRE_IMDSV2)


def measure(client, url, requests):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm-up
    assert response.status_code == 200, (url, response.status_code)
    times = []
    for _ in range(requests):
        with Timer() as timer:
            response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        times.append(timer.seconds * 1000)
    with CaptureQueriesContext(connection) as queries:
        client.get(url)
    return {
        "url": url,
        "requests": requests,
        "p50_ms": round(percentile(times, 50), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "max_ms": round(max(times), 1),
        "queries": len(queries),
        "db_ms_one_request": round(sum(float(q["time"]) for q in queries.captured_queries) * 1000, 1),
        "slowest_query_ms": round(max(float(q["time"]) for q in queries.captured_queries) * 1000, 1),
    }


def main(argv=None):
    args = parse_args(__doc__, argv)
    setup_django()
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.utils import timezone

    sizes = (500,) if args.quick else (100_000, 1_000_000)
    requests = 3 if args.quick else 50
    truncate_fleet()
    pairs = ensure_accounts(20, 3)
    user, _ = get_user_model().objects.get_or_create(username="bench-viewer")
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    loaded, results, refresh_s = 0, {}, {}
    for index, size in enumerate(sizes):
        with Timer() as loading:
            copy_rows(synthetic_rows(pairs, loaded, size - loaded, timezone.now()))
            analyze()
        loaded = size
        print(f"P3: {size:,} instances loaded with COPY in {loading.seconds:.0f}s", flush=True)
        # What a sync does after writing rows: the overview reads the posture summary.
        from fleet import posture

        with Timer() as summarising:
            posture.refresh_all()
        refresh_s[size] = round(summarising.seconds, 2)
        print(f"P3: posture summary of {size:,} instances refreshed in {summarising.seconds:.1f}s", flush=True)
        if index == 0:
            seed_surroundings(pairs)
            analyze()
        results[size] = {}
        for name, url in pages_to_request(pairs):
            results[size][name] = figures = measure(client, url(), requests)
            print(f"P3: {size:,} {name}: {figures}", flush=True)
    truncate_fleet()

    worst_p50 = max(f["p50_ms"] for by_page in results.values() for f in by_page.values())
    worst_p95 = max(f["p95_ms"] for by_page in results.values() for f in by_page.values())
    names = list(results[sizes[0]])
    constant = all(len({results[size][name]["queries"] for size in sizes}) == 1 for name in names)
    misses = [
        f"{name} at {size:,}: p50 {f['p50_ms']:.0f} ms, p95 {f['p95_ms']:.0f} ms"
        for size in sizes for name, f in results[size].items() if f["p50_ms"] > 100 or f["p95_ms"] > 250
    ]
    write_result(args.out, {
        "id": "P3",
        "title": "overview and instance list at " + " and ".join(f"{size:,}" for size in sizes) + " instances",
        "figures": {"requests_per_page": requests, "by_size": {str(size): results[size] for size in sizes},
                    "posture_refresh_all_s": {str(size): refresh_s[size] for size in sizes},
                    "query_count_constant": constant, "misses": misses},
        "measured": f"worst p50 {worst_p50:.0f} ms, worst p95 {worst_p95:.0f} ms; query count "
                    f"{'constant' if constant else 'NOT constant'} across sizes; {len(misses)} page/size "
                    "combinations over target",
        "compare": "—",
        "target": "p50 ≤ 100 ms, p95 ≤ 250 ms, query count constant",
        "met": not misses and constant,
        "limits": (
            "Django's test client in the benchmark process: the whole view, middleware, session, templates "
            "and database, without HTTP parsing, gunicorn or a browser. DEBUG is on (the settings' laptop "
            "default), so Django also records each query; the cost per query is microseconds. The table is "
            "freshly loaded and VACUUM ANALYZEd and fits in shared buffers / the page cache, so the figures "
            "are warm-cache figures; a cold cache on slower disks would be slower. The machine is shared."
        ),
    })


if __name__ == "__main__":
    main()
