"""P7: peak RSS of a worker process that syncs 100,000 instances of one account/region.

The simulator (moto) cannot hold 100 k instances quickly, so the child process runs the real
``fleet.sync.sync_region`` (rate limiter, ``fleet.aws.describe_instance_pages``, upserts, gone
detection, defaults) against a fake EC2 client whose paginator yields boto3-shaped pages of 1,000
generated on the fly, one at a time, as botocore's paginator does. A real boto3 EC2 client is
built in the child too, so botocore's service model is part of the footprint as in a worker.
The peak is the child's ``ru_maxrss`` as the kernel reports it to the parent (``wait4``).
"""

import json
import os
import subprocess
import sys

from bench.common import ROOT, Timer, parse_args, setup_django, write_result


class FakePaginator:
    def __init__(self, owner_id, region, total):
        self.owner_id, self.region, self.total = owner_id, region, total

    def paginate(self, **kwargs):
        from bench.common import fleet_pages

        assert kwargs.get("PaginationConfig", {}).get("PageSize") == 1000
        return fleet_pages(self.owner_id, self.region, 0, self.total)


class NoSources:
    """The launch-source describes of the sync (templates, versions, AMIs, Auto Scaling): none."""

    def paginate(self, **kwargs):
        return iter([{}])


class FakeEc2:
    def __init__(self, owner_id, region, total):
        self.paginator = FakePaginator(owner_id, region, total)

    def get_paginator(self, name):
        if name != "describe_instances":
            return NoSources()
        return self.paginator

    def get_instance_metadata_defaults(self):
        return {"AccountLevel": {"HttpTokens": "required", "ManagedBy": "account"}}


def child(total):
    setup_django()
    import boto3

    from bench.common import ensure_accounts, rss_mb, truncate_fleet
    from fleet import sync
    from fleet.aws import autoscaling as aws_autoscaling
    from fleet.aws import ec2 as aws_ec2
    from fleet.models import Instance

    real_client = boto3.client("ec2", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    truncate_fleet()
    account, region = ensure_accounts(1, 1)[0]
    aws_ec2.client = lambda *args, **kwargs: FakeEc2(account.account_id, region, total)
    aws_autoscaling.client = lambda *args, **kwargs: FakeEc2(account.account_id, region, 0)
    baseline = rss_mb()
    with Timer() as timer:
        run = sync.sync_region(account, region)
    assert run.status == "succeeded", run.error
    assert run.seen == total and Instance.objects.count() == total
    print(json.dumps({"baseline_mb": round(baseline, 1), "peak_self_mb": round(rss_mb(), 1),
                      "sync_s": round(timer.seconds, 1), "seen": run.seen, "client": type(real_client).__name__}))


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--child":
        child(int(argv[1]))
        return
    args = parse_args(__doc__, argv)
    total = 2_000 if args.quick else 100_000
    process = subprocess.Popen([sys.executable, "-m", "bench.p7_rss", "--child", str(total)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"P7 child failed ({process.returncode}):\n{output}")
    report = json.loads(output.strip().splitlines()[-1])
    peak = usage.ru_maxrss / 1024
    write_result(args.out, {
        "id": "P7",
        "title": f"worker peak RSS while syncing {total:,} instances",
        "figures": {
            "instances": total,
            "peak_rss_mb": round(peak, 1),
            "rss_before_sync_mb": report["baseline_mb"],
            "sync_s": report["sync_s"],
        },
        "measured": f"{peak:.0f} MB peak ({report['baseline_mb']:.0f} MB before the sync)",
        "compare": "—",
        "target": "≤ 250 MB",
        "met": peak <= 250,
        "limits": (
            "Pages come from a fake paginator (boto3-shaped dicts, 1,000 per page, generated lazily) instead "
            "of botocore parsing XML from the wire, so the parser's transient buffers for one page "
            "(a few MB) are not in the figure; everything after the paginator is the product's code. "
            "Every generated instance runs its own AMI (100,000 distinct images), the worst case for the "
            "sources sync's image rows, which are written 1,000 at a time. The sync streams: memory depends "
            "on the page size, not the fleet size."
        ),
    })


if __name__ == "__main__":
    main()
