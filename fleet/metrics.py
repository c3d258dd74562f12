"""``/metrics`` in the Prometheus text format (prometheus_client).

A custom collector reads the rows the dashboard already maintains at each scrape: the posture
summary (one row per account/region), change items by state, the latest sync of each
account/region, drift and delivery counts, and the AWS call counters (``fleet.aws.counters``).
Labels are account_id, region, state, kind, operation and error code: never an instance id.

Access: a request carrying ``Authorization: Bearer <IMDSWEB_METRICS_TOKEN>`` or coming from an
address in ``IMDSWEB_METRICS_ALLOW`` (loopback by default). Behind a proxy the address is the
proxy's: use the token.
"""

import hmac
import ipaddress
import math

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db.models import Count, Min
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import posture
from .aws import counters
from .choices import DeliveryStatus, DriftKind, ItemState
from .models import ChangeBatch, ChangeItem, Delivery, DriftEvent, RegionPosture

POSTURE_GAUGES = (
    ("instances", "total", "Present instances"),
    ("instances_enforced", "enforced", "Instances with IMDSv2 enforced (tokens required or endpoint disabled)"),
    ("instances_enforced_applied", "enforced_applied", "Instances enforced and applied (not pending)"),
    ("instances_pending", "pending", "Instances whose metadata options are pending"),
    ("instances_imdsv1_callers", "v1_in_use", "Instances with MetadataNoToken > 0 in the usage window"),
    ("instances_waived", "waived", "Instances allowing IMDSv1 under an active waiver (counted apart)"),
)


class FleetCollector:
    def collect(self):
        yield from self._posture()
        yield from self._engine()
        yield from self._syncs()
        yield from self._aws()

    def _posture(self):
        labels = ["account_id", "region"]
        families = {field: GaugeMetricFamily(f"imdsweb_{name}", doc, labels=labels) for name, field, doc in POSTURE_GAUGES}
        allowing = GaugeMetricFamily("imdsweb_instances_allowing_imdsv1", "Present instances still allowing IMDSv1",
                                     labels=labels)
        fields = [field for _, field, _ in POSTURE_GAUGES]
        for row in RegionPosture.objects.values("account__account_id", "region", *fields).order_by():
            key = [row["account__account_id"], row["region"]]
            for field, family in families.items():
                family.add_metric(key, row[field])
            allowing.add_metric(key, row["total"] - row["enforced"])
        yield from families.values()
        yield allowing

    def _engine(self):
        # Only the states with work ahead (an index range of the (state, account, region) index):
        # items are never deleted, and counting every final one at each scrape would grow forever.
        items = GaugeMetricFamily("imdsweb_change_items", "Change items with work ahead, by state", labels=["state"])
        by_state = dict(ChangeItem.objects.filter(state__in=ItemState.active()).values_list("state")
                        .annotate(n=Count("id")).order_by())
        for state in ItemState.active():
            items.add_metric([state], by_state.get(state, 0))
        yield items
        yield GaugeMetricFamily("imdsweb_change_queue_depth", "Change items queued and not yet sent to AWS",
                                value=by_state.get(ItemState.QUEUED, 0))
        oldest = ChangeItem.objects.filter(state=ItemState.PENDING).aggregate(at=Min("submitted_at"))["at"]
        yield GaugeMetricFamily(
            "imdsweb_change_pending_oldest_seconds", "Age of the oldest change AWS has not reported applied (tracker lag)",
            value=(timezone.now() - oldest).total_seconds() if oldest else 0,
        )
        drift = CounterMetricFamily("imdsweb_drift_events", "Instances found allowing IMDSv1 without imdsweb",
                                    labels=["kind"])
        by_kind = dict(DriftEvent.objects.values_list("kind").annotate(n=Count("id")).order_by())
        for kind in DriftKind.values:
            drift.add_metric([kind], by_kind.get(kind, 0))
        yield drift
        yield CounterMetricFamily(
            "imdsweb_batches_breakage_flagged", "Change batches flagged with likely breakage (MetadataNoTokenRejected)",
            value=ChangeBatch.objects.filter(breakage_flagged_at__isnull=False).count(),
        )
        deliveries = CounterMetricFamily("imdsweb_notification_deliveries", "Notification messages by outcome",
                                         labels=["status"])
        by_status = dict(Delivery.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in DeliveryStatus.values:
            deliveries.add_metric([status], by_status.get(status, 0))
        yield deliveries

    def _syncs(self):
        labels = ["account_id", "region"]
        age = GaugeMetricFamily("imdsweb_sync_last_success_age_seconds",
                                "Seconds since the last successful sync (+Inf if never)", labels=labels)
        stale = GaugeMetricFamily("imdsweb_sync_stale", "1 if the account/region's figures are stale", labels=labels)
        now = timezone.now()
        for state in posture.sync_states(now):
            key = [state.account.account_id, state.region]
            age.add_metric(key, (now - state.last_success).total_seconds() if state.last_success else math.inf)
            stale.add_metric(key, 1 if state.stale else 0)
        yield age
        yield stale

    def _aws(self):
        calls = CounterMetricFamily("imdsweb_aws_calls", "AWS API attempts", labels=["service", "operation"])
        throttled = CounterMetricFamily("imdsweb_aws_throttled", "AWS API attempts refused by throttling",
                                        labels=["service", "operation"])
        errors = CounterMetricFamily("imdsweb_aws_errors", "AWS API attempts that failed, by error code",
                                     labels=["service", "operation", "code"])
        families = {"calls": calls, "throttled": throttled, "errors": errors}
        for (kind, service, operation, code), n in sorted(counters.snapshot().items()):
            family = families.get(kind)
            if family is errors:
                family.add_metric([service, operation, code], n)
            elif family is not None:
                family.add_metric([service, operation], n)
        yield from families.values()


def allowed(request):
    """The bearer token, when one is configured and sent, decides; otherwise the address."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and settings.IMDSWEB_METRICS_TOKEN:
        return hmac.compare_digest(header.removeprefix("Bearer ").strip(), settings.IMDSWEB_METRICS_TOKEN)
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in settings.IMDSWEB_METRICS_ALLOW)


@login_not_required
@require_GET
def metrics_view(request):
    if not allowed(request):
        response = HttpResponse("metrics need a bearer token (IMDSWEB_METRICS_TOKEN) or an allowed address "
                                "(IMDSWEB_METRICS_ALLOW)\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="imdsweb metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
