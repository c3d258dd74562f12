"""Change batches: the confirmation step, the list, one batch with live progress, and its actions."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View
from django.views.generic import DetailView
from django_tables2 import RequestConfig

from .. import changes
from ..apply import STOPPED_REASON
from ..choices import BatchStatus, ChangeKind, ItemState
from ..filters import ChangeBatchFilterSet, ChangeItemFilterSet
from ..forms import InstanceChangeForm, RollbackForm
from ..models import ChangeBatch, Instance
from ..tables import ChangeBatchTable, ChangeItemTable
from ..targets import target_for
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
    """Counts, bar segments and notes of a batch's progress panel (one query, two when something
    is pending or a breakage was flagged)."""
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
    waiting_for_start = (
        batch.items.filter(state=ItemState.PENDING, reason=STOPPED_REASON).count() if counts[ItemState.PENDING] else 0
    )
    active = sum(counts[state] for state in ItemState.active())
    return {
        "batch": batch, "counts": counts, "status": status, "final": status in FINAL,
        "done": done, "done_pct": round(100.0 * done / total) if total else 100, "segments": segments,
        "waiting_for_start": waiting_for_start,
        # Only stopped instances left: nothing moves until someone starts them, so ask rarely.
        "poll_seconds": 15 if active and active == waiting_for_start else 2,
        "breakage": batch.items.filter(breakage_suspected=True).count() if batch.breakage_flagged_at else 0,
    }


def items_table(request, batch):
    """The batch's items, filtered and paginated from the query string (the page and its poll)."""
    items = batch.items.select_related("account", "instance", "source")
    filterset = ChangeItemFilterSet(request.GET or None, queryset=items)
    items = filterset.qs if filterset.is_valid() or not filterset.is_bound else items.none()
    table = RequestConfig(request, paginate={"per_page": 50}).configure(ChangeItemTable(items, exclude=("batch",)))
    return filterset, table


class ChangeDetailView(DetailView):
    template_name = "fleet/change_detail.html"
    context_object_name = "batch"

    def get_object(self, queryset=None):
        return get_batch(self.kwargs["pk"])

    def get_context_data(self, **kwargs):
        filterset, table = items_table(self.request, self.object)
        return super().get_context_data(
            **kwargs, **progress_context(self.object), filter=filterset, table=table,
            rollbacks=self.object.rollbacks.all(), rollback_form=RollbackForm(),
        )


def change_progress(request, pk):
    """The htmx partial polled while the batch runs: the progress panel with its action buttons,
    plus the items table (same filter and page as the page) swapped out of band. Once the batch
    is final it stops asking (no hx-trigger) and, if it was polling, reloads the page so the
    request card and messages catch up too."""
    batch = get_batch(pk)
    context = progress_context(batch)
    _filterset, context["table"] = items_table(request, batch)
    response = render(request, "fleet/partials/change_progress.html", context | {"oob": True})
    if request.htmx and context["final"]:
        response["HX-Refresh"] = "true"
    return response


class BatchActionView(OperatorRequiredMixin, View):
    """POST-only: one change-service call on a batch, a message, back to the batch."""

    http_method_names = ["post"]
    action = None
    created_message = "Rollback queued as batch #{new}."

    def post(self, request, pk):
        batch = get_object_or_404(ChangeBatch, pk=pk)
        try:
            result = getattr(self, self.action)(batch)
        except changes.ChangeRefused as exc:
            messages.error(request, str(exc))
            return redirect(batch)
        if isinstance(result, ChangeBatch):
            messages.success(request, self.created_message.format(new=result.pk, old=batch.pk))
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


    def rerun(self, batch):
        """The same change on the same targets, for real: the next step after a clean dry run."""
        if not batch.dry_run:
            raise changes.ChangeRefused("Only a dry run can be run again for real.")
        if batch.status not in FINAL:
            raise changes.ChangeRefused("The dry run has not finished yet; run it for real once it has.")
        comment = batch.comment or f"Run for real after dry run #{batch.pk}"
        target = target_for(batch.kind)
        if target is not None:
            return target().rerun(batch, self.request.user, comment)
        if batch.kind == ChangeKind.ACCOUNT_DEFAULTS:
            targets = [(item.account, item.region) for item in batch.items.select_related("account")]
            return changes.request_defaults_change(self.request.user, targets, batch.desired, comment=comment)
        return changes.request_change(
            self.request.user, Instance.objects.filter(pk__in=batch.items.values("instance")), batch.desired,
            comment=comment, selection=f"as dry run #{batch.pk}: {batch.selection}", override_usage=batch.override_usage,
        )
