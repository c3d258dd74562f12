"""Posture over time: the overview's burndown panel, and the drift ("new since …") list."""

from datetime import timedelta

from django import forms
from django.utils import timezone

from .. import history
from ..filters import DriftEventFilterSet, region_choices
from ..models import Account, DriftEvent
from ..tables import DriftEventTable
from ..widgets import plain_widgets
from .base import FilteredTableView


class BurndownForm(forms.Form):
    """The burndown's scope, in the overview's query string (``history-days=30`` …)."""

    days = forms.TypedChoiceField(choices=[(d, f"{d} days") for d in history.RANGES], coerce=int, initial=30,
                                  required=False, label="Period")
    account = forms.ModelChoiceField(Account.objects.all(), to_field_name="account_id", required=False,
                                     empty_label="all accounts")
    region = forms.ChoiceField(required=False, label="Region")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, prefix="history", **kwargs)
        plain_widgets(self)  # an organization's 200 accounts in a select: Django's template per option was slow
        self.fields["region"].choices = [("", "all regions"), *region_choices()]


def burndown_context(query):
    """The burndown panel's context from the overview's query string; a bad value is shown as a
    form error and the fleet's last 30 days are drawn instead."""
    form = BurndownForm(query if any(key.startswith("history-") for key in query) else None)
    days, account, region = 30, None, ""
    if form.is_bound and form.is_valid():
        days = form.cleaned_data["days"] or 30
        account, region = form.cleaned_data["account"], form.cleaned_data["region"]
    now = timezone.now()
    start = now - timedelta(days=days)
    points = history.burndown(days, account=account, region=region, now=now)
    first, last = points[0], points[-1]
    if len(points) > 1:
        start = max(start, first.at - timedelta(hours=1))  # a young history fills the chart's width
    return {
        "form": form, "days": days, "account": account, "region": region, "start": start, "points": points,
        "markers": history.batch_markers(start, account=account, region=region),
        "first": first, "last": last, "has_history": len(points) > 1,
    }


class DriftListView(FilteredTableView):
    queryset = DriftEvent.objects.select_related("instance", "account")
    filterset_class = DriftEventFilterSet
    table_class = DriftEventTable
    template_name = "fleet/drift_list.html"
