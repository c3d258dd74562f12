"""Queue fleet-wide changes from the command line, exactly as the dashboard's bulk button does."""

import time

from django.core.management.base import BaseCommand, CommandError

from fleet import changes
from fleet.choices import ItemState
from fleet.models import Account

POLL_SECONDS = 0.5


class Command(BaseCommand):
    help = "Queue metadata changes (require-imdsv2) and optionally wait for them to finish."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        require = sub.add_parser("require-imdsv2", help="set HttpTokens=required on every present instance")
        require.add_argument("--account", help="12-digit account id")
        require.add_argument("--region")
        require.add_argument("--dry-run", action="store_true", help="only ask AWS whether it would be allowed")
        require.add_argument("--override-usage", action="store_true",
                             help="also enforce where IMDSv1 calls were seen in the usage window")
        require.add_argument("--override-owner", action="store_true",
                             help="also change instances whose source a managed service (EKS, Beanstalk, EMR, "
                                  "CloudFormation) owns")
        require.add_argument("--comment", default="")
        require.add_argument("--wait", action="store_true",
                             help="wait until every item is final, or waits for its stopped instance to start")
        require.add_argument("--timeout", type=float, default=3600, help="seconds --wait waits at most")

    def handle(self, *args, action, **options):
        account, region = options["account"], options["region"]
        if account and not Account.objects.filter(account_id=account).exists():
            raise CommandError(f"error: account {account} is not registered", returncode=2)
        selection = "manage.py fleet_change require-imdsv2" + (f" --account {account}" if account else "") + (
            f" --region {region}" if region else "")
        plan = changes.plan_change(changes.instances_for(account, region), changes.REQUIRE_IMDSV2,
                                   override_usage=options["override_usage"], override_owner=options["override_owner"])
        self.stdout.write(
            f"selected {plan.total}: to change {plan.to_change}, already {plan.already}, held {plan.held}, "
            f"busy {plan.busy}, terminated or gone {plan.unreachable}"
        )
        for _bucket, warning in plan.warnings:
            self.stdout.write(f"  {warning}")
        try:
            batch = changes.request_change(
                None,
                changes.instances_for(account, region),
                changes.REQUIRE_IMDSV2,
                comment=options["comment"],
                selection=selection,
                dry_run=options["dry_run"],
                override_usage=options["override_usage"],
                override_owner=options["override_owner"],
            )
        except changes.ChangeRefused as exc:
            raise CommandError(f"error: {exc}", returncode=2) from exc
        self.stdout.write(f"batch {batch.pk}")
        if not options["wait"]:
            return
        deadline = time.monotonic() + options["timeout"]
        while True:
            # One count query: the tracker notices AWS's "applied" within about a second, this
            # notices the rows within another half.
            counts = batch.counts()
            if not counts["active"]:
                break
            if time.monotonic() > deadline:
                raise CommandError(f"timed out with {counts['active']} item(s) still active", returncode=3)
            time.sleep(POLL_SECONDS)
        summary = " ".join(f"{state}={counts[state]}" for state in ItemState.values if counts[state])
        self.stdout.write(f"batch {batch.pk} finished: {summary or 'no items'}")
        if counts["awaiting_start"]:
            self.stdout.write(
                f"{counts['awaiting_start']} will apply when started: their instances are stopped, and AWS applies "
                "the change when each next starts (the batch page follows them)"
            )
        if counts[ItemState.FAILED] or counts[ItemState.STUCK]:
            raise CommandError(f"{counts[ItemState.FAILED] + counts[ItemState.STUCK]} item(s) failed", returncode=1)
