"""Change batches: the confirmation step, the list, one batch with live progress, and its actions."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View
from django.views.generic import DetailView
from django_tables2 import RequestConfig

from .. import changes
from ..choices import BatchStatus, ItemState
from ..filters import ChangeBatchFilterSet, ChangeItemFilterSet
from ..forms import InstanceChangeForm, RollbackForm
from ..models import ChangeBatch
from ..tables import ChangeBatchTable, ChangeItemTable
from .base import ConfirmActionView, FilteredTableView, OperatorRequiredMixin

FINAL = {BatchStatus.DONE, BatchStatus.DONE_WITH_ERRORS, BatchStatus.CANCELLED}


class ChangeNewView(ConfirmActionView):
    """``/changes/new/?ids=…`` or ``?filter=<instance filter>``, plus the options to set."""

    form_class = InstanceChangeForm
    template_name = "fleet/change_confirm.html"

    def preview(self, form):
        return changes.plan_change(form.instances, form.desired, override_usage=form.cleaned_data["override_usage"])

    def perform(self, form):
        data = form.cleaned_data
        return changes.request_change(
            self.request.user, form.instances, form.desired, comment=data["comment"], selection=form.selection,
            dry_run=data["dry_run"], override_usage=data["override_usage"],
        )

    def success_message(self, batch):
        return f"Batch #{batch.pk} queued."


class ChangeListView(FilteredTableView):
    queryset = ChangeBatch.objects.with_counts().select_related("created_by")
    filterset_class = ChangeBatchFilterSet
    table_class = ChangeBatchTable
    template_name = "fleet/change_list.html"


def get_batch(pk):
    """One batch with its counts annotated (no extra query for the progress)."""
    return get_object_or_404(ChangeBatch.objects.with_counts().select_related("created_by", "rollback_of"), pk=pk)


def progress_context(batch):
    counts = batch.counts()
    status = batch.status_from_counts(counts)
    total = counts["total"]
    done = total - sum(counts[state] for state in ItemState.active())
    segments = [
        {"state": state, "label": ItemState(state).label, "n": counts[state],
         "pct": 100.0 * counts[state] / total if total else 0}
        for state in ItemState.values
        if counts[state]
    ]
    return {
        "batch": batch, "counts": counts, "status": status, "final": status in FINAL,
        "done": done, "done_pct": round(100.0 * done / total) if total else 100, "segments": segments,
    }


class ChangeDetailView(DetailView):
    template_name = "fleet/change_detail.html"
    context_object_name = "batch"

    def get_object(self, queryset=None):
        return get_batch(self.kwargs["pk"])

    def get_context_data(self, **kwargs):
        items = self.object.items.select_related("account", "instance")
        filterset = ChangeItemFilterSet(self.request.GET or None, queryset=items)
        items = filterset.qs if filterset.is_valid() or not filterset.is_bound else items.none()
        table = RequestConfig(self.request, paginate={"per_page": 50}).configure(
            ChangeItemTable(items, exclude=("batch",))
        )
        return super().get_context_data(
            **kwargs, **progress_context(self.object), filter=filterset, table=table,
            rollbacks=self.object.rollbacks.all(), rollback_form=RollbackForm(),
        )


def change_progress(request, pk):
    """The htmx partial polled every 2 s; once the batch is final it stops asking (no hx-trigger)
    and, if it was polling, reloads the page so the item table and buttons catch up."""
    context = progress_context(get_batch(pk))
    response = render(request, "fleet/partials/change_progress.html", context)
    if request.htmx and context["final"]:
        response["HX-Refresh"] = "true"
    return response


class BatchActionView(OperatorRequiredMixin, View):
    """POST-only: one change-service call on a batch, a message, back to the batch."""

    http_method_names = ["post"]
    action = None

    def post(self, request, pk):
        batch = get_object_or_404(ChangeBatch, pk=pk)
        try:
            result = getattr(self, self.action)(batch)
        except changes.ChangeRefused as exc:
            messages.error(request, str(exc))
            return redirect(batch)
        if isinstance(result, ChangeBatch):
            messages.success(request, f"Rollback queued as batch #{result.pk}.")
            return redirect(result)
        messages.success(request, result)
        return redirect(batch)

    def cancel(self, batch):
        return f"Cancelled {changes.cancel_queued(batch, self.request.user):,} queued item(s)."

    def retry(self, batch):
        return f"Queued {changes.retry_failed(batch, self.request.user):,} item(s) again."

    def rollback(self, batch):
        form = RollbackForm(self.request.POST)
        if not form.is_valid():
            raise changes.ChangeRefused("The comment is too long (2,000 characters at most).")
        return changes.rollback(batch, self.request.user, comment=form.cleaned_data["comment"])

