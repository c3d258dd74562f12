"""Waivers: the list (active by default), one waiver with its audit trail, and the admin-only
create / extend / revoke forms. The forms validate (``fleet.forms``); the service writes, audits
and re-applies (``fleet.waivers``)."""

from django.conf import settings
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect
from django.views.generic import FormView, TemplateView

from .. import waivers
from ..filters import WaiverFilterSet
from ..forms import WaiverExtendForm, WaiverForm, WaiverRevokeForm
from ..models import Waiver
from ..roles import RoleRequired
from ..tables import WaiverTable
from .base import FilteredTableView

ADD_WAIVER = "fleet.add_waiver"
CHANGE_WAIVER = "fleet.change_waiver"


class WaiverListView(FilteredTableView):
    queryset = Waiver.objects.with_counts()
    filterset_class = WaiverFilterSet
    table_class = WaiverTable
    template_name = "fleet/waiver_list.html"
    partial_template_name = "fleet/partials/waiver_table.html"


class WaiverDetailView(TemplateView):
    """One waiver: what it covers now, its audit trail, and (for admins) extend and revoke."""

    template_name = "fleet/waiver_detail.html"

    def get_context_data(self, **kwargs):
        waiver = get_object_or_404(Waiver.objects.with_counts(), pk=self.kwargs["pk"])
        context = {"waiver": waiver, "events": waiver.events.select_related("user"),
                   "extend_form": WaiverExtendForm(waiver=waiver), "revoke_form": WaiverRevokeForm()}
        return super().get_context_data(**kwargs) | context | kwargs


class AdminOnlyMixin:
    permission, action = ADD_WAIVER, "Granting a waiver"

    def dispatch(self, request, *args, **kwargs):
        if not request.user.has_perm(self.permission):
            raise RoleRequired(self.permission, self.action)
        return super().dispatch(request, *args, **kwargs)


class WaiverCreateView(AdminOnlyMixin, FormView):
    """``/waivers/new/?scope=instance&instance_id=i-…`` (the instance page links here) prefills."""

    form_class = WaiverForm
    template_name = "fleet/waiver_form.html"

    def get_initial(self):
        fields = ("scope", "instance_id", "tag", "source", "account", "region")
        return {name: self.request.GET[name][:400] for name in fields if self.request.GET.get(name)}

    def get_context_data(self, **kwargs):
        return super().get_context_data(**kwargs) | {"max_days": settings.IMDSWEB_WAIVER_MAX_DAYS}

    def form_valid(self, form):
        waiver = waivers.create_waiver(self.request.user, form.waiver)
        messages.success(self.request, f"Waiver #{waiver.pk} granted: {waiver.scope_text} until "
                                       f"{waiver.expires_on:%Y-%m-%d}, {waiver.instances.count()} instance(s) now.")
        return redirect(waiver)

    def form_invalid(self, form):
        return self.render_to_response(self.get_context_data(form=form), status=400)


class WaiverActionView(AdminOnlyMixin, WaiverDetailView):
    """POST only: extend or revoke; an invalid form renders the waiver's page with its errors (400),
    a waiver no longer active is refused (409) with the reason."""

    permission, action = CHANGE_WAIVER, "Changing a waiver"
    http_method_names = ["post"]
    verb = None

    def post(self, request, pk):
        waiver = get_object_or_404(Waiver, pk=pk)
        if waiver.status != "active":
            messages.error(request, f"Waiver #{waiver.pk} is {waiver.status}: it can no longer be "
                                    f"{'extended' if self.verb == 'extend' else 'revoked'}; grant a new one instead.")
            return self.render_to_response(self.get_context_data(), status=409)
        if self.verb == "extend":
            form = WaiverExtendForm(request.POST, waiver=waiver)
            if not form.is_valid():
                return self.render_to_response(self.get_context_data(extend_form=form), status=400)
            data = form.cleaned_data
            waivers.extend_waiver(request.user, waiver, data["expires_on"], data["reason"], data["comment"])
            messages.success(request, f"Waiver #{waiver.pk} extended until {waiver.expires_on:%Y-%m-%d}.")
        else:
            form = WaiverRevokeForm(request.POST)
            if not form.is_valid():
                return self.render_to_response(self.get_context_data(revoke_form=form), status=400)
            waivers.revoke_waiver(request.user, waiver, form.cleaned_data["comment"])
            messages.success(request, f"Waiver #{waiver.pk} revoked: its instances are no longer exempt.")
        return redirect(waiver)
