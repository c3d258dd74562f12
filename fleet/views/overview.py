"""The overview page: the fleet's posture at a glance (see ``fleet.posture``)."""

from django.conf import settings
from django.views.generic import TemplateView

from .. import posture
from .history import burndown_context


class OverviewView(TemplateView):
    template_name = "fleet/overview.html"

    def get_context_data(self, **kwargs):
        return super().get_context_data(
            **kwargs, **posture.overview(), sync_interval=settings.IMDSWEB_SYNC_INTERVAL_MINUTES,
            burndown=burndown_context(self.request.GET),
        )
