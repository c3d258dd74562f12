"""The accounts page: each account's health (failing first, with AWS's exact error) and what the
latest organization discovery changed (see ``fleet.health`` and ``fleet.discovery``)."""

from django.core.paginator import Paginator
from django.views.generic import TemplateView

from .. import health
from ..filters import ou_choices, within_ou
from ..models import Account, DiscoveryRun, OrganizationSource

PER_PAGE = 100


class AccountHealthView(TemplateView):
    template_name = "fleet/account_health.html"

    def get_context_data(self, **kwargs):
        ou = self.request.GET.get("ou", "")
        accounts = health.accounts_by_health(within_ou(Account.objects.all(), ou) if ou else None)
        page = Paginator(accounts, PER_PAGE).get_page(self.request.GET.get("page"))
        latest = [run for source in OrganizationSource.objects.all()
                  if (run := DiscoveryRun.objects.filter(source=source).first())]
        return super().get_context_data(
            **kwargs, page=page, ou=ou, ou_choices=ou_choices(), summary=health.summary(), discoveries=latest,
            total=len(accounts),
        )
