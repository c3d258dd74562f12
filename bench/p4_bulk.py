"""P4: bulk "Require IMDSv2" on every present instance, through the web request an operator makes:
a POST of the confirmation form (``fleet:change_new`` with a filter) by a logged-in user, through
Django's test client (the whole middleware stack, no network). The service behind it is
``fleet.changes.request_change``. Measured at two sizes to show the query count does not grow.
"""

from bench.common import (
    Timer,
    analyze,
    copy_rows,
    ensure_accounts,
    parse_args,
    setup_django,
    synthetic_rows,
    truncate_fleet,
    write_result,
)


def main(argv=None):
    args = parse_args(__doc__, argv)
    setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse
    from django.utils import timezone

    from fleet.choices import ItemState
    from fleet.models import ChangeBatch, ChangeItem

    sizes = (500, 2_000) if args.quick else (10_000, 100_000)
    user, _ = get_user_model().objects.get_or_create(username="bench-operator", defaults={"is_superuser": True})
    user.is_superuser = True
    user.save()
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    truncate_fleet()
    pairs = ensure_accounts(10, 3)
    loaded, runs = 0, []
    for size in sizes:
        copy_rows(synthetic_rows(pairs, loaded, size - loaded, timezone.now()))
        loaded = size
        analyze()
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE fleet_changeitem, fleet_batchevent, fleet_changebatch")
        client.get(reverse("fleet:overview"))  # warm: templates, URL resolver, session
        with CaptureQueriesContext(connection) as queries, Timer() as timer:
            response = client.post(reverse("fleet:change_new"), {"filter": "gone=present", "http_tokens": "required"})
        assert response.status_code == 302, (response.status_code, response.content[:2000])
        batch = ChangeBatch.objects.get()
        counts = batch.counts()
        runs.append({
            "instances": size,
            "items": counts["total"],
            "queued": counts[ItemState.QUEUED],
            "skipped": counts[ItemState.SKIPPED],
            "held": counts[ItemState.HELD],
            "request_s": round(timer.seconds, 3),
            "queries": len(queries),
        })
        assert counts["total"] == ChangeItem.objects.count()
        print(f"P4: {runs[-1]}", flush=True)
    truncate_fleet()
    big = runs[-1]
    constant = len({run["queries"] for run in runs}) == 1
    write_result(args.out, {
        "id": "P4",
        "title": f"bulk 'Require IMDSv2' web request on {big['instances']:,} instances",
        "figures": {"runs": runs, "query_count_constant": constant},
        "measured": f"{big['request_s']:.2f} s, {big['queries']} queries "
                    f"({'same' if constant else 'NOT the same'} at {runs[0]['instances']:,}: "
                    f"{runs[0]['queries']} queries, {runs[0]['request_s']:.2f} s)",
        "compare": "—",
        "target": "≤ 3 s, query count constant",
        "met": big["request_s"] <= 3 and constant,
        "limits": (
            "Through the view's POST with Django's test client: URL routing, middleware, session, the form and "
            "its filter, the service, the redirect; no HTTP parsing or network. The broker publish after "
            "commit goes to the benchmark's private Redis. Each size starts with no batches, so no instance "
            "is busy; about 1 % of the rows are gone, 20 % have IMDSv1 usage (held) and 60 % are already "
            "required (skipped), so every branch of the skip rules is exercised."
        ),
    })


if __name__ == "__main__":
    main()
