"""P6: DescribeInstances calls in one poll round of ``fleet.tracking.track_region`` for 1,000 pending
items of one account/region, counted by the simulator's stats; compared with one call per instance.

The items are made pending for real: a change is requested through ``fleet.changes.request_change``
and submitted by ``fleet.runner.run_region`` in this process against the simulator (no throttling,
and a long apply delay so AWS keeps reporting ``pending`` during the poll).
"""

import time

from bench.common import (
    Timer,
    ec2_client,
    parse_args,
    setup_django,
    truncate_fleet,
    use_endpoint,
    write_result,
)
from imdssim.testing import launch

ACCOUNT = "123456789012"
REGION = "eu-west-1"


def main(argv=None):
    args = parse_args(__doc__, argv)
    setup_django()
    from django.conf import settings

    from fleet import changes, sync
    from fleet.choices import ItemState
    from fleet.engine import runner, tracking
    from fleet.models import Account, Instance
    from imdssim.testing import SimulatorProcess

    total = 20 if args.quick else 1_000
    settings.IMDSWEB_RATE_TIME_SCALE = 1000.0  # our own buckets must not pace this setup
    truncate_fleet()
    Account.objects.filter(account_id=ACCOUNT).delete()
    account = Account.objects.create(account_id=ACCOUNT, name="bench-p6", regions=[REGION])
    with SimulatorProcess(throttle=False, apply_delay=3600) as sim:
        use_endpoint(sim.endpoint_url)
        launch(ec2_client(sim.endpoint_url, REGION), total, HttpTokens="optional")
        assert sync.sync_region(account, REGION).seen == total
        batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2,
                                       override_usage=True)  # measures apply, not the readiness gate
        with Timer() as submitting:
            while runner.run_region(account.pk, REGION, budget=600) is not None:
                pass
        counts = batch.counts()
        assert counts[ItemState.PENDING] == total, counts
        time.sleep(settings.IMDSWEB_TRACK_FAST_SECONDS)  # a change is first checked a round after its submit
        sim.reset_stats()
        with Timer() as poll:
            tracked = tracking.track_region(account, REGION)
        stats = sim.stats()["actions"]
    truncate_fleet()
    calls = stats.get("DescribeInstances", {}).get("calls", 0)
    assert tracked == total
    write_result(args.out, {
        "id": "P6",
        "title": f"DescribeInstances calls per poll round for {total:,} pending items",
        "figures": {
            "pending_items": total,
            "describe_instances_calls": calls,
            "other_calls": {action: counts for action, counts in stats.items() if action != "DescribeInstances"},
            "poll_round_s": round(poll.seconds, 2),
            "submit_s": round(submitting.seconds, 1),
            "naive_calls_one_per_instance": total,
        },
        "measured": f"{calls} calls ({poll.seconds:.1f} s for the round)",
        "compare": f"{total:,} calls (one per instance)",
        "target": "≤ 5 calls",
        "met": calls <= 5,
        "limits": (
            "Calls are counted by the simulator, so they are exactly what reached the endpoint. track_region "
            "asks for up to 200 ids per call through the instance-id filter (AWS's advice); 1,000 pending "
            "items in one account/region is the worst case of one poll round, more regions poll in parallel."
        ),
    })


if __name__ == "__main__":
    main()
