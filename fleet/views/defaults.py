"""Account-level IMDS defaults: the account x region matrix and the change form."""

from django.views.generic import TemplateView

from .. import changes, sources
from ..filters import ou_choices
from ..forms import DefaultsChangeForm
from ..posture import defaults_matrix
from .base import ConfirmActionView


class DefaultsView(TemplateView):
    template_name = "fleet/defaults.html"

    def get_context_data(self, **kwargs):
        ou = self.request.GET.get("ou", "")
        cells = defaults_matrix(ou=ou or None)
        blockers = sources.enforcement_blockers()
        for cell in cells:
            cell.blockers = blockers.get((cell.account.pk, cell.region), [])
        return super().get_context_data(
            **kwargs, cells=cells, passing=sum(1 for cell in cells if cell.prowler_pass), ou=ou, ou_choices=ou_choices()
        )


class DefaultsChangeView(ConfirmActionView):
    """``/defaults/change/?targets=<account_id>/<region>&…``: current values, then the form."""

    form_class = DefaultsChangeForm
    template_name = "fleet/defaults_change.html"

    def get_form_kwargs(self):
        kwargs = super().get_form_kwargs()
        if self.request.method == "GET":
            # Choosing the targets is not yet a request: show the form, unbound, for them.
            kwargs.pop("data", None)
            kwargs["initial"] = {"targets": self.request.GET.getlist("targets")[:2000]}
        return kwargs

    def get_context_data(self, **kwargs):
        form = kwargs.get("form") or self.get_form()
        keys = form.data.getlist("targets") if form.is_bound else form.initial.get("targets", [])
        cells = defaults_matrix(set(keys[:2000]))
        return super().get_context_data(**kwargs, cells=cells, managed=[c for c in cells if not c.editable])

    def perform(self, form):
        data = form.cleaned_data
        targets = [(account, region) for account, region, _row in form.resolved]
        return changes.request_defaults_change(
            self.request.user, targets, form.desired, comment=data["comment"], dry_run=data["dry_run"],
            request_token=self.request_token(),
        )

    def success_message(self, batch):
        return f"Defaults change queued as batch #{batch.pk}."
