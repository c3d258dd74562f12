"""The overview page: the fleet's posture at a glance (see ``fleet.posture``)."""

from django.conf import settings
from django.views.generic import TemplateView

from .. import health, posture, teams
from ..choices import LaunchVerdict
from ..models import LaunchSource
from .history import burndown_context


class OverviewView(TemplateView):
    """``?ou=Workloads/Prod`` drills the heat map into an OU, ``?page=`` pages its accounts."""

    template_name = "fleet/overview.html"

    def get_context_data(self, **kwargs):
        params = self.request.GET
        return super().get_context_data(
            **kwargs, **posture.overview(params.get("ou", ""), params.get("page", 1)),
            account_health=health.summary(), sync_interval=settings.IMDSWEB_SYNC_INTERVAL_MINUTES,
            burndown=burndown_context(self.request.GET),
            v1_sources=LaunchSource.objects.filter(gone_at__isnull=True, verdict=LaunchVerdict.IMDSV1).count(),
            teams=teams.by_team(), owner_tag=settings.IMDSWEB_OWNER_TAG,
        )
