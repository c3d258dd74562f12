"""The overview page: the fleet's posture at a glance (see ``fleet.posture``)."""

from django.conf import settings
from django.views.generic import TemplateView

from .. import posture
from ..choices import LaunchVerdict
from ..models import LaunchSource


class OverviewView(TemplateView):
    template_name = "fleet/overview.html"

    def get_context_data(self, **kwargs):
        return super().get_context_data(
            **kwargs, **posture.overview(), sync_interval=settings.IMDSWEB_SYNC_INTERVAL_MINUTES,
            v1_sources=LaunchSource.objects.filter(gone_at__isnull=True, verdict=LaunchVerdict.IMDSV1).count(),
        )
