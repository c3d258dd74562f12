"""The two view patterns every page is built from: a filtered table, and a confirm-then-act form.

Access: login is required everywhere by ``LoginRequiredMiddleware``; acting on the fleet needs
the ``fleet.queue_change`` permission (operator and admin groups). A refusal raises
``RoleRequired`` (a PermissionDenied), which ``fleet.views.errors.permission_denied`` renders.
"""

import uuid

from django.contrib import messages
from django.contrib.auth.mixins import PermissionRequiredMixin
from django.shortcuts import redirect
from django.utils.cache import patch_vary_headers
from django.utils.html import format_html
from django.views.generic import FormView
from django_filters.views import FilterView
from django_tables2 import SingleTableMixin

from .. import changes
from ..roles import RoleRequired

QUEUE_CHANGE = "fleet.queue_change"


class OperatorRequiredMixin(PermissionRequiredMixin):
    """Only users who may queue changes; everyone else gets the 403 page, which names their role."""

    permission_required = QUEUE_CHANGE
    raise_exception = True

    def handle_no_permission(self):
        raise RoleRequired(QUEUE_CHANGE, "Changing the fleet")


class FilteredTableView(SingleTableMixin, FilterView):
    """A list page is configuration: ``queryset``, ``filterset_class``, ``table_class``, templates.

    An htmx request (the filter form, the pager, sorting) gets only ``partial_template_name``.
    An invalid filter shows its form errors and an empty table (django-filter's strict mode).
    """

    partial_template_name = None
    table_pagination = {"per_page": 50}

    def get_template_names(self):
        htmx = self.request.htmx
        # A history restore (back button after hx-push-url) needs the whole page again.
        if htmx and self.partial_template_name and not htmx.boosted and not htmx.history_restore_request:
            return [self.partial_template_name]
        return [self.template_name]

    def render_to_response(self, context, **kwargs):
        response = super().render_to_response(context, **kwargs)
        # One URL, two bodies: caches must keep the partial and the page apart.
        patch_vary_headers(response, ["HX-Request"])
        return response


def refusal_message(exc):
    """A ChangeRefused as a message, with a link to the batch it names."""
    if exc.batch is None:
        return str(exc)
    return format_html('{} <a href="{}">Open batch #{}</a>', str(exc), exc.batch.get_absolute_url(), exc.batch.pk)


class ConfirmActionView(OperatorRequiredMixin, FormView):
    """GET shows what would happen (``form.is_valid()`` on the query string, then ``preview()``);
    POST performs ``perform(form)`` and redirects to its result. The service's ChangeRefused
    becomes a message on the same page, never a 500, with a link to the batch it names.

    Each rendered form carries a one-time ``request_token``: the service refuses a second batch
    from the same form (two tabs, a resent POST) and the user is sent to the first one."""

    def request_token(self):
        return self.request.POST.get("request_token", "")[:64] or None

    def get_context_data(self, **kwargs):
        return super().get_context_data(**kwargs) | {"request_token": uuid.uuid4().hex}

    def get_form_kwargs(self):
        kwargs = super().get_form_kwargs()
        if self.request.method == "GET" and self.request.GET:
            kwargs["data"] = self.request.GET
        return kwargs

    def get(self, request, *args, **kwargs):
        form = self.get_form()
        if form.is_bound and form.is_valid():
            return self.render_to_response(self.get_context_data(form=form, preview=self.preview(form)))
        return self.render_to_response(self.get_context_data(form=form), status=400 if form.is_bound else 200)

    def form_valid(self, form):
        try:
            result = self.perform(form)
        except changes.AlreadySubmitted as exc:
            messages.info(self.request, str(exc))
            return redirect(exc.batch)
        except changes.ChangeRefused as exc:
            form.add_error(None, refusal_message(exc))
            return self.render_to_response(
                self.get_context_data(form=form, preview=self.preview(form), refused=exc), status=409)
        messages.success(self.request, self.success_message(result))
        return redirect(result)

    def form_invalid(self, form):
        return self.render_to_response(self.get_context_data(form=form), status=400)

    def preview(self, form):
        return None

    def perform(self, form):
        raise NotImplementedError

    def success_message(self, result):
        return f"Queued {result}."
