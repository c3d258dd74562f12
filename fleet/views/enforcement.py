"""``/defaults/enforce/?targets=<account_id>/<region>…``: IMDSv2 enforcement at the account level,
with the launch sources it would stop named first (fleet.enforcement)."""

from .. import enforcement
from ..forms import EnforcementForm
from .base import ConfirmActionView


class EnforcementView(ConfirmActionView):
    form_class = EnforcementForm
    template_name = "fleet/enforce_confirm.html"

    def preview(self, form):
        reasons = enforcement.hold_reasons(form.resolved) if form.cleaned_data["enable"] else {}
        return [(account, region, reasons.get((account.pk, region), "")) for account, region in form.resolved]

    def perform(self, form):
        data = form.cleaned_data
        return enforcement.request_enforcement(
            self.request.user, form.resolved, enable=data["enable"], override_held=data["override_held"],
            comment=data["comment"], dry_run=data["dry_run"],
        )

    def success_message(self, batch):
        held = batch.items.filter(state="held").count()
        suffix = f" {held} account/region(s) held: their launch sources would stop launching." if held else ""
        return f"Enforcement change queued as batch #{batch.pk}.{suffix}"
