"""Organization scale: discover a simulated organization and sync every account/region with 2 workers.

Real processes (``fleet.tests.live.LiveStack``): a private Redis, the simulator seeded with an
organization (``--seed-org``, 200 member accounts by default: 17 default regions each, so 3,400
account/regions, minus the suspended one and the one without a role), and 2 Celery workers of one
process each. The benchmark runs the discovery in this process, then the beat's ``sync_all``
fan-out, and waits until every account/region has a finished sync run. It reports the discovery
time, the sync span (first start to last finish), syncs per second, the failed ones (the account
without a role: AccessDenied) and the workers' peak RSS (each caches a botocore client per
account/region). Part of ``bench.run`` (id ORG); on its own ``python -m bench.org_sync [--quick]
[--accounts N] [--budget-s S]``; ``--quick`` seeds 4 member accounts (68 account/regions and the opt-ins).

The sync is given ``--budget-s`` (600 s by default) so that the full ``make bench`` stays bounded:
if some account/regions are still unsynced then, the figures say so (``completed`` false) and the
time for all of them is projected from the rate over the budget (``projected_all_s``), never
reported as measured.
"""

import time
from pathlib import Path

from bench.common import PRODUCTION_WORKERS, Timer, parse_args, setup_django, truncate_fleet, write_result

MANAGEMENT_ROLE = "arn:aws:iam::900000000000:role/imdsweb-org-reader"


def rss_mb(pid):
    """VmHWM (peak RSS) of a process and its children, in MB."""
    total = 0
    for status in [Path(f"/proc/{pid}/status"), *Path("/proc").glob("[0-9]*/status")]:
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if status.parent.name == str(pid) or fields.get("PPid", "").strip() == str(pid):
            total += int(fields.get("VmHWM", "0 kB").split()[0])
    return round(total / 1024)


def main(argv=None):
    def extra(parser):
        parser.add_argument("--accounts", type=int, default=200)
        parser.add_argument("--budget-s", type=float, default=600.0, help="longest wait for the sync of them all")

    args = parse_args(__doc__, argv, extra=extra)
    setup_django()
    from django.conf import settings
    from django.db.models import Max, Min

    from fleet import discovery, sync
    from fleet.choices import SyncStatus
    from fleet.models import Account, OrganizationSource, SyncRun
    from fleet.tasks import sync_all
    from fleet.tests.live import LiveStack

    accounts = 4 if args.quick else args.accounts
    truncate_fleet()
    Account.objects.all().delete()
    OrganizationSource.objects.all().delete()
    stack = LiveStack(settings, apply_delay=0.5, env=PRODUCTION_WORKERS, sim_args=("--seed-org", str(accounts), "--org-instances", "2"))
    # The simulator seeds the organization before it answers: 200 accounts' instances take more
    # than the default minute on a loaded machine.
    stack.sim.startup_timeout = 600
    try:
        with Timer() as seeding:
            stack.start(workers=0, beat=False)
        for _ in range(2):
            stack.start_worker(concurrency=1)
        source = OrganizationSource.objects.create(management_role_arn=MANAGEMENT_ROLE)
        with Timer() as discovering:
            run = discovery.discover(source)
        pairs = list(sync.targets())
        print(f"org sync: discovery of {run.accounts_seen} accounts in {discovering.seconds:.1f}s, "
              f"{len(pairs)} account/regions", flush=True)
        started = time.monotonic()
        sync_all.delay()

        def finished():
            return SyncRun.objects.exclude(status=SyncStatus.RUNNING).count()

        while finished() < len(pairs) and time.monotonic() - started < args.budget_s:
            time.sleep(1.0)
        wall = time.monotonic() - started
        synced = finished()
        if not synced:
            raise AssertionError(f"no account/region synced in {args.budget_s:.0f}s\n{stack.logs()}")
        span = SyncRun.objects.exclude(finished_at=None).aggregate(first=Min("started_at"), last=Max("finished_at"))
        span_s = (span["last"] - span["first"]).total_seconds()
        failed = list(SyncRun.objects.filter(status=SyncStatus.FAILED).values_list("account__account_id", "error"))
        seen = sum(SyncRun.objects.values_list("seen", flat=True))
        durations = [(finished - started).total_seconds() for started, finished in
                     SyncRun.objects.exclude(finished_at=None).values_list("started_at", "finished_at")]
        worker_rss = [rss_mb(worker.pid) for worker in stack.workers]
    finally:
        stack.stop()
    truncate_fleet()
    figures = {
        "member_accounts": accounts,
        "account_regions": len(pairs),
        "workers": 2,
        "worker_concurrency": 1,
        "simulator_seed_s": round(seeding.seconds, 1),
        "discovery_s": round(discovering.seconds, 1),
        "discovery_changes": len(run.changes),
        "budget_s": args.budget_s,
        "completed": synced >= len(pairs),
        "synced": synced,
        "sync_wall_s": round(wall, 1),
        "sync_span_s": round(span_s, 1),
        "syncs_per_s": round(synced / span_s, 2) if span_s else None,
        # All of them at the rate measured, when the budget ran out first (None when all synced).
        "projected_all_s": None if synced >= len(pairs) or not span_s else round(len(pairs) / (synced / span_s)),
        "instances_seen": seen,
        # Sum of the syncs' own durations over (workers x span): near 1, the workers were busy the
        # whole time (each sync's own work is the limit, not waiting for a rate-limit token).
        "mean_sync_s": round(sum(durations) / len(durations), 2) if durations else None,
        "workers_busy_share": round(sum(durations) / (2 * span_s), 2) if span_s else None,
        "failed": len(failed),
        "failed_accounts": sorted({account for account, _ in failed}),
        "failed_error_example": failed[0][1][:200] if failed else "",
        "worker_peak_rss_mb": worker_rss,
    }
    if figures["completed"]:
        sync_text = f"sync of {len(pairs):,} account/regions in {figures['sync_span_s']} s"
    else:
        sync_text = (f"{synced:,} of {len(pairs):,} account/regions synced in the {args.budget_s:.0f} s budget, "
                     f"all of them projected at {figures['projected_all_s']} s")
    write_result(args.out, {
        "id": "ORG",
        "title": f"discover and sync {len(pairs):,} simulated account/regions with 2 workers",
        "figures": figures,
        "measured": f"discovery {figures['discovery_s']} s; {sync_text} ({figures['syncs_per_s']}/s), "
                    f"{len(failed)} failed",
        "compare": "—",
        "target": "report (issue 16)",
        "met": True,
        "limits": (f"2 workers of one process each, busy {figures['workers_busy_share']} of the span at "
                   f"{figures['mean_sync_s']} s a sync: each sync's own work (AssumeRole and a botocore client per "
                   "account/region, DescribeInstances, GetInstanceMetadataDefaults and the launch-source reads against "
                   "one simulator process, the rows and the posture refresh), all on the same shared cores; each "
                   "account/region has its own API buckets and a sync takes a few tokens of them, so no sync waits "
                   "for a token"),
    })


if __name__ == "__main__":
    main()
