"""Sync the fleet cache now, in this process, through the same service the workers use."""

import argparse

from django.core.management.base import BaseCommand, CommandError

from fleet import aws, sync
from fleet import usage as usage_stage
from fleet.choices import SyncStatus
from fleet.models import Account


class Command(BaseCommand):
    help = "Sync instances and account defaults from AWS for every enabled account/region (or one)."

    def add_arguments(self, parser):
        parser.add_argument("--account", help="12-digit account id")
        parser.add_argument("--region")
        parser.add_argument("--no-usage", dest="usage", action="store_false",
                            help="skip reading IMDSv1 usage (CloudWatch MetadataNoToken); until it is read, "
                                 "the readiness gate holds the instances")
        parser.add_argument("--usage", dest="usage", action="store_true", help=argparse.SUPPRESS)
        parser.set_defaults(usage=True)

    def handle(self, *args, account=None, region=None, usage=True, **options):
        if account and not Account.objects.filter(account_id=account).exists():
            raise CommandError(f"error: account {account} is not registered", returncode=2)
        pairs = list(sync.targets(account, region))
        if not pairs:
            raise CommandError("error: nothing to sync (no enabled account/region matches)", returncode=2)
        failed = 0
        for target, target_region in pairs:
            try:
                run = sync.sync_region(target, target_region)
            except sync.SyncAlreadyRunning as exc:
                failed += 1
                self.stdout.write(f"{target.account_id} {target_region}: skipped, {exc}")
                continue
            line = (
                f"{target.account_id} {target_region}: {run.status} seen={run.seen} new={run.new} "
                f"changed={run.changed} gone={run.gone} in {run.duration.total_seconds():.1f}s"
            )
            if run.status != SyncStatus.SUCCEEDED:
                failed += 1
                line += f" error={run.error}"
            elif usage:
                line += self._usage(target, target_region)
            self.stdout.write(line)
        if failed:
            raise CommandError(f"{failed} of {len(pairs)} account/regions failed to sync", returncode=1)

    def _usage(self, account, region):
        try:
            measured, calling, flagged = usage_stage.sync_usage(account, region)
        except aws.AwsError as exc:
            return f" usage=failed ({exc.code}: {exc.message[:200]}; its instances stay held)"
        return f" usage: {calling} of {measured} calling IMDSv1" + (f", {flagged} breakages" if flagged else "")
