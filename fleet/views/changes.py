"""Change batches: the confirmation step, the list, one batch with live progress, and its actions."""

from django.conf import settings
from django.contrib import messages
from django.db.models import Count, OuterRef, Subquery
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views import View
from django.views.decorators.http import require_safe
from django.views.generic import DetailView
from django_tables2 import RequestConfig

from .. import changes, usage
from ..changes import rollout
from ..choices import BatchStatus, ItemState
from ..engine.targets import target_for
from ..filters import ChangeBatchFilterSet, ChangeItemFilterSet
from ..forms import InstanceChangeForm, RollbackForm
from ..models import Account, ChangeBatch, UsageReading
from ..tables import ChangeBatchTable, ChangeItemTable, state_changed_at
from .base import ConfirmActionView, FilteredTableView, OperatorRequiredMixin, refusal_message

# The live view asks every POLL_ACTIVE seconds while items move, every POLL_AWAITING while only
# stopped instances are left (nothing moves until one starts), and not at all once every item is final.
POLL_ACTIVE, POLL_AWAITING = 2, 30


class ChangeNewView(ConfirmActionView):
    """``/changes/new/?ids=…`` or ``?filter=<instance filter>``, plus the options to set."""

    form_class = InstanceChangeForm
    template_name = "fleet/change_confirm.html"

    def preview(self, form):
        return changes.plan_change(form.instances, form.desired, override_usage=form.cleaned_data["override_usage"],
                                   override_owner=form.cleaned_data["override_owner"],
                                   override_waivers=form.cleaned_data["override_waivers"])

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form, plan = context.get("form"), context.get("preview")
        if plan is not None and form is not None and form.is_valid():
            context["outcome_links"] = outcome_links(form)
            context["usage_targets"] = [f"{pk}/{region}" for pk, _aws_id, region in plan.unmeasured_regions]
            context["measuring"] = measuring(plan.unmeasured_regions)
        context["approval_rule"] = approval_rule()
        return context

    def perform(self, form):
        data = form.cleaned_data
        return changes.request_change(
            self.request.user, form.instances, form.desired, comment=data["comment"], selection=form.selection,
            dry_run=data["dry_run"], override_usage=data["override_usage"], override_owner=data["override_owner"],
            request_token=self.request_token(),
            override_waivers=data["override_waivers"],
            rollout=form.rollout,
        )

    def success_message(self, batch):
        notes = " ".join(rollout.gate_notes(batch))
        waves = f" in {batch.waves} waves" if batch.waves > 1 else ""
        return f"Batch #{batch.pk} queued{waves}." + (f" {notes}" if notes else "")


def approval_rule():
    """The four-eyes rule of the settings, in words, for the confirmation page."""
    parts = []
    if settings.IMDSWEB_APPROVAL_MIN_ITEMS:
        parts.append(f"queue {settings.IMDSWEB_APPROVAL_MIN_ITEMS:,} instances or more")
    if settings.IMDSWEB_APPROVAL_ACCOUNTS:
        parts.append(f"touch {', '.join(settings.IMDSWEB_APPROVAL_ACCOUNTS)}")
    if not parts:
        return ""
    return (f"Batches that {' or '.join(parts)} wait for a second operator's approval before anything is sent "
            "(you cannot approve your own).")


def outcome_links(form):
    """{bucket: instance-list URL listing exactly the instances of that bucket of the plan}."""
    selection = {"ids": ",".join(form.cleaned_data["ids"])} if form.cleaned_data.get("ids") else {}
    base = reverse("fleet:instance_list")
    query = form.cleaned_data.get("filter") or ""
    change = ",".join(f"{name}={value}" for name, value in form.desired.items())
    links = {"selected": f"{base}?{query + '&' if query else ''}{urlencode(selection)}"}
    for bucket, _label in changes_outcome_choices():
        params = urlencode({**selection, "outcome": bucket, "change": change})
        links[bucket] = f"{base}?{query + '&' if query else ''}{params}"
    return links


def changes_outcome_choices():
    from ..filters import InstanceFilterSet

    return InstanceFilterSet.OUTCOME_CHOICES


def measuring(regions):
    """The account/regions among ``regions`` whose usage reading was asked for and is not done."""
    if not regions:
        return []
    readings = UsageReading.objects.filter(account_id__in={pk for pk, _, _ in regions}).select_related("account")
    wanted = {(pk, region) for pk, _, region in regions}
    return [reading for reading in readings if (reading.account_id, reading.region) in wanted and reading.in_progress]


class MeasureUsageView(OperatorRequiredMixin, View):
    """POST ``targets=<account pk>/<region>…&next=<confirmation URL>``: read IMDSv1 use now for
    those account/regions (a task each), then back to the confirmation page, which follows the
    readings and shows the new plan when they are done."""

    http_method_names = ["post"]

    def post(self, request):
        pairs = []
        for value in request.POST.getlist("targets")[:2000]:
            pk, _, region = value.partition("/")
            account = Account.objects.filter(pk=pk, enabled=True).first() if pk.isdigit() else None
            if account is None or region not in account.regions:
                return HttpResponseBadRequest(f"Unknown account/region: {value[:60]}", content_type="text/plain")
            pairs.append((account, region))
        if not pairs:
            return HttpResponseBadRequest("No account/region to measure.", content_type="text/plain")
        usage.request_reading(pairs)
        from ..tasks import sync_usage_region

        queued = 0
        for account, region in pairs:
            try:
                sync_usage_region.delay(account.pk, region)
                queued += 1
            except Exception as exc:  # broker down: say so rather than pretend
                messages.error(request, f"Could not queue the reading of {account.account_id}/{region}: {exc}")
        if queued:
            messages.info(request, f"Measuring IMDSv1 use in {queued} account/region(s) now; this page updates "
                                   "when done.")
        target = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
            target = reverse("fleet:change_list")
        return redirect(target)


def measure_usage_status(request):
    """The htmx fragment the confirmation page polls while readings run; once none is left it
    asks the page to reload (HX-Refresh), which shows the new plan."""
    regions = []
    for value in request.GET.getlist("targets")[:2000]:
        pk, _, region = value.partition("/")
        if pk.isdigit():
            regions.append((int(pk), "", region))
    running = measuring(regions)
    response = render(request, "fleet/partials/measuring.html", {"measuring": running,
                                                                 "targets": request.GET.getlist("targets")})
    if request.htmx and not running:
        response["HX-Refresh"] = "true"
    return response


class ChangeListView(FilteredTableView):
    queryset = ChangeBatch.objects.with_counts().select_related("created_by").annotate(
        rolled_back_by=Subquery(ChangeBatch.objects.filter(rollback_of=OuterRef("pk")).order_by("pk").values("pk")[:1])
    ).order_by("-created_at", "-pk")  # newest first (ties: the later batch first)
    filterset_class = ChangeBatchFilterSet
    table_class = ChangeBatchTable
    template_name = "fleet/change_list.html"


def get_batch(pk):
    """One batch with its counts annotated (no extra query for the progress)."""
    return get_object_or_404(
        ChangeBatch.objects.with_counts().select_related("created_by", "rollback_of", "approved_by"), pk=pk)


def progress_context(batch):
    """Counts, bar segments and notes of a batch's progress panel (one query, two when a
    breakage was flagged)."""
    counts = batch.counts()
    # While a worker writes a large batch's items they already run, but the batch is not final.
    status = BatchStatus.EXPANDING if batch.expanding else batch.status_from_counts(counts)
    total = counts["total"]
    waiting_for_start = counts["awaiting_start"]
    # Items waiting for their instance to start are done for now: they are not counted as finished,
    # nor do they keep the batch "waiting for AWS".
    done = total - counts["active"] - waiting_for_start
    segments = [
        {"state": state, "label": ItemState(state).label, "n": counts[state],
         "pct": 100.0 * counts[state] / total if total else 0}
        for state in ItemState.values
        if counts[state]
    ]
    held_reasons = []
    if counts[ItemState.HELD]:
        rows = batch.items.filter(state=ItemState.HELD).values("outcome").annotate(n=Count("id")).order_by("-n")
        held_reasons = [(changes.Outcome(row["outcome"]) if row["outcome"] in changes.Outcome.values
                         else changes.Outcome.HELD_CALLS, row["n"]) for row in rows]
    offset = 0.0
    for segment in segments:  # the bar is an SVG (no inline style under the CSP): each rect's x
        segment["x"], offset = offset, offset + segment["pct"]
    return {
        "batch": batch, "counts": counts, "status": status,
        "final": not counts["active"] and not waiting_for_start and not batch.expanding,
        "expanding_pct": round(100.0 * batch.expanded / batch.expected) if batch.expanding and batch.expected else None,
        "done": done, "done_pct": round(100.0 * done / total) if total else 100, "segments": segments,
        "waiting_for_start": waiting_for_start,
        "poll_seconds": POLL_ACTIVE if counts["active"] or batch.expanding else POLL_AWAITING,
        "breakage": batch.items.filter(breakage_suspected=True).count() if batch.breakage_flagged_at else 0,
        "held_reasons": held_reasons,
        "rolled_back": batch.rollbacks.order_by("pk").first(),
        "waves": rollout.wave_rows(batch),
        "gate_notes": rollout.gate_notes(batch),
    }


def applies(batch):
    """What of an instance change applies to this batch: the IMDSv1 readiness gate and the
    breakage watch (a change that requires IMDSv2, not a rollback of one), and waiting for a
    stopped instance to start (instances only: defaults, templates and enforcement apply at once)."""
    instances = target_for(batch.kind).per_instance
    return {"usage_gate": instances and not batch.rollback_of_id, "breakage": instances and not batch.rollback_of_id,
            "outcome": instances and not batch.rollback_of_id, "awaiting_start": instances}


def items_table(request, batch):
    """The batch's items, filtered and paginated from the query string (the page and its poll)."""
    items = batch.items.select_related("account", "instance", "source").annotate(state_changed_at=state_changed_at())
    filterset = ChangeItemFilterSet(request.GET or None, queryset=items)
    for name, applicable in applies(batch).items():
        if not applicable and name in filterset.filters:
            del filterset.filters[name]
    items = filterset.qs if filterset.is_valid() or not filterset.is_bound else items.none()
    # A batch of one kind sets the same values on every item (a rollback restores each item's own).
    exclude = ("batch",) if batch.rollback_of_id else ("batch", "sets")
    table = RequestConfig(request, paginate={"per_page": 50}).configure(ChangeItemTable(items, exclude=exclude))
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
            rollbacks=self.object.rollbacks.all(), rollback_form=RollbackForm(), applies=applies(self.object),
            events=self.object.events.select_related("user"), window_text=rollout.describe_window(self.object.window),
        )


@require_safe
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
            messages.error(request, refusal_message(exc))
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

    def approve(self, batch):
        return rollout.approve(batch, self.request.user)

    def refuse(self, batch):
        return rollout.refuse(batch, self.request.user, self.request.POST.get("reason", "")[:2000].strip())

    def promote(self, batch):
        return rollout.promote(batch, self.request.user)

    def abort(self, batch):
        return rollout.abort(batch, self.request.user)


    def rerun(self, batch):
        """The same change on the same targets, for real: the next step after a clean dry run."""
        return changes.rerun(batch, self.request.user)


class RollbackView(ConfirmActionView):
    """``/changes/<pk>/rollback/``: GET shows what the rollback would restore and skip, and why;
    POST queues it (fleet.changes.rollbacks)."""

    form_class = RollbackForm
    template_name = "fleet/change_rollback.html"

    def dispatch(self, request, *args, **kwargs):
        self.batch = get_object_or_404(ChangeBatch, pk=kwargs["pk"])
        wave = request.GET.get("wave", "")
        if wave and (not wave.isdigit() or not 1 <= int(wave) <= self.batch.waves):
            return HttpResponseBadRequest(f"Batch #{self.batch.pk} has no wave {wave[:10]}.", content_type="text/plain")
        self.wave = int(wave) - 1 if wave else None
        return super().dispatch(request, *args, **kwargs)

    def get_form_kwargs(self):
        kwargs = super().get_form_kwargs()
        kwargs.pop("data", None) if self.request.method == "GET" else None
        return kwargs

    def get(self, request, *args, **kwargs):
        form = self.get_form()
        return self.render_to_response(self.get_context_data(form=form, preview=self.preview(form)))

    def get_context_data(self, **kwargs):
        return super().get_context_data(**kwargs) | {"batch": self.batch, "wave": self.wave}

    def form_invalid(self, form):
        return self.render_to_response(self.get_context_data(form=form, preview=self.preview(form)), status=400)

    def preview(self, form):
        return changes.plan_rollback(self.batch, wave=self.wave)

    def perform(self, form):
        return changes.rollback(self.batch, self.request.user, comment=form.cleaned_data["comment"],
                                request_token=self.request_token(), wave=self.wave)

    def success_message(self, batch):
        return f"Rollback queued as batch #{batch.pk}."
