"""Instances: the filtered list, its CSV export, one instance's page and its options form."""

from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import F
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode
from django.views.generic import DetailView
from django.views.generic.edit import FormMixin

from .. import csv_export
from ..filters import InstanceFilterSet
from ..forms import InstanceOptionsForm
from ..models import Instance
from ..tables import ChangeItemTable, InstanceTable
from ..validators import instance_id_validator
from .base import QUEUE_CHANGE, FilteredTableView


class InstanceListView(FilteredTableView):
    queryset = Instance.objects.select_related("account")
    filterset_class = InstanceFilterSet
    table_class = InstanceTable
    template_name = "fleet/instance_list.html"
    partial_template_name = "fleet/partials/instance_table.html"

    # Below this many rows COUNT(*) is cheap and exact; above it the pager takes the posture
    # summary's count (refreshed with every sync and change round) instead of counting a million
    # rows on every page view. Only the last page can be briefly off by the rows a sync in progress
    # has added or marked gone.
    EXACT_COUNT_BELOW = 10_000

    def get_table_data(self):
        data = super().get_table_data()
        known = self.filterset.summary_count()
        if known is not None and known >= self.EXACT_COUNT_BELOW:
            return data.with_known_count(known)
        return data


def instance_export(request):
    """The filtered set as CSV, streamed row by row (the fleet may be large)."""
    filterset = InstanceFilterSet(request.GET, queryset=Instance.objects.select_related("account"))
    if not filterset.is_valid():
        errors = "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in filterset.errors.items())
        return HttpResponseBadRequest(f"Invalid filter: {errors}", content_type="text/plain")
    return csv_export.instances_response(filterset.qs, "instances.csv")


class InstanceDetailView(FormMixin, DetailView):
    """One instance; operators get a form whose changed fields go to the confirmation page."""

    template_name = "fleet/instance_detail.html"
    form_class = InstanceOptionsForm

    def get_object(self, queryset=None):
        instance_id = self.kwargs["instance_id"]
        try:
            instance_id_validator(instance_id)
        except ValidationError:
            raise Http404("Not an EC2 instance id.") from None
        # AWS ids are unique; should the cache hold a gone row and a present one, show the present one.
        instance = (
            Instance.objects.select_related("account").filter(instance_id=instance_id)
            .order_by(F("gone_at").asc(nulls_first=True)).first()
        )
        if instance is None:
            raise Http404("No such instance in the inventory.")
        return instance

    def get_form_kwargs(self):
        return super().get_form_kwargs() | {"instance": self.object}

    def get_context_data(self, **kwargs):
        items = list(self.object.change_items.select_related("batch", "account", "instance").order_by("-id")[:50])
        table = ChangeItemTable(items, exclude=("target", "account", "region", "request_id"), orderable=False)
        # The latest enforcement after which this instance's IMDSv1 calls started being refused.
        breakage = next((item for item in items if item.breakage_suspected), None)
        return super().get_context_data(**kwargs, history=table, breakage=breakage)

    def post(self, request, *args, **kwargs):
        self.object = self.get_object()
        if not request.user.has_perm(QUEUE_CHANGE):
            raise PermissionDenied("Your role can look at the fleet but not change it.")
        form = self.get_form()
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        query = {"ids": self.object.instance_id, **form.changed_options}
        return redirect(f"{reverse('fleet:change_new')}?{urlencode(query)}")
