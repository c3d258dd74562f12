"""Instances: the filtered list, its CSV export, one instance's page and its options form."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import F
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_safe
from django.views.generic import DetailView
from django.views.generic.edit import FormMixin

from .. import console, csv_export, owners, pagination
from ..choices import ManagedOwner
from ..filters import InstanceFilterSet
from ..forms import InstanceOptionsForm
from ..models import Instance
from ..roles import RoleRequired
from ..tables import ChangeItemTable, InstanceTable, per_page_in_range, state_changed_at
from ..validators import instance_id_validator
from .base import QUEUE_CHANGE, FilteredTableView
from .sources import source_for_instance


class InstanceListView(FilteredTableView):
    """The fleet, a page at a time at any depth (keyset pagination, ``fleet.pagination``): the
    pager links carry the row a page starts after (``after``) or ends before (``before``)."""

    queryset = Instance.objects.select_related("account").with_risk()
    filterset_class = InstanceFilterSet
    table_class = InstanceTable
    template_name = "fleet/instance_list.html"
    partial_template_name = "fleet/partials/instance_table.html"

    # Counting is exact up to this many rows and stops there; beyond it the posture summary gives
    # the count when it knows the filter (account, region, a posture scope and one field value, or
    # one of the overview's combinations: fleet.posture.summary_counter), else the page says
    # "1,000+" (the confirmation page of a bulk change counts exactly). A bound of
    # 10,000 cost 65 ms for a common search term at a million instances.
    COUNT_BOUND = 1_000
    # Pages reachable by number (OFFSET); deeper pages by next/previous/last (keyset).
    MAX_NUMBERED_PAGE = 10

    def get_table(self, **kwargs):
        params = self.request.GET
        sort, ordering = self.table_class.ordering_for(params.get("sort"))
        after, before = (pagination.parse_cursor(params.get(key)) for key in ("after", "before"))
        last = params.get("last") == "1" and not (after or before)
        self.per_page = self._per_page(params.get("per_page"))
        self.ordering = ordering
        data = self.get_table_data()
        self.total, self.total_at_least = self._count(data)
        # Page numbers where the count is known (and only then).
        self.page_count = None if self.total_at_least else max(-(-self.total // self.per_page), 1)
        number = pagination.parse_cursor(params.get("page"))
        if number and number <= self.MAX_NUMBERED_PAGE and not (after or before or last):
            # The first pages by OFFSET: the rows skipped are a short index walk.
            self.page = pagination.numbered_page(data, ordering, self.per_page, number)
        else:
            last_rows = self.total - (self.page_count - 1) * self.per_page if last and self.page_count else None
            self.page = pagination.page(data, ordering, self.per_page, after=after or None, before=before or None,
                                        last=last, last_rows=last_rows)
            # A page found by its cursor carries its number in the link (``page``) where the count
            # is known: the pager counts on from it.
            if not self.page.has_previous:
                number = 1
            elif last:
                number = self.page_count
            elif not (self.page_count and number and number <= self.page_count):
                number = None
        self.number = number
        self.bad_cursor = after is False or before is False or self.page.stale_cursor
        table = self.table_class(data=pagination.PageData(self.page.rows), order_by=sort or None, **kwargs)
        table.keyset = self.page
        return table

    def _count(self, data):
        """(count, at_least): exact up to COUNT_BOUND, else the summary's when it knows the filter,
        else COUNT_BOUND as a lower bound."""
        counted = pagination.bounded_count(data, self.COUNT_BOUND + 1)
        # Asked even when the bounded count will do, so that a URL costs the same queries at any size.
        known = self.filterset.summary_count()
        if counted <= self.COUNT_BOUND:
            return counted, False
        if known is not None:
            return known, False
        return self.COUNT_BOUND, True

    @staticmethod
    def _per_page(value):
        try:
            return per_page_in_range(int(value))
        except (TypeError, ValueError):
            return InstanceTable._meta.per_page

    def _link(self, **cursor):
        """This list's address with another page's cursor and number (the filter and sort kept)."""
        params = self.request.GET.copy()
        for key in ("after", "before", "last", "page"):
            params.pop(key, None)
        params.update({key: value for key, value in cursor.items() if value is not None})
        return f"?{params.urlencode()}"

    def pager(self):
        """The pager's links: first, previous, the page numbers (the first MAX_NUMBERED_PAGE by
        OFFSET, those beyond a page or two away by keyset from the rows on screen, the last by
        ``last``), next and last. A number is only shown where the count is known."""
        page, number, count = self.page, self.number, self.page_count
        near = {}
        if number is not None:
            near = {number + 1: lambda: page.last_pk, number - 1: lambda: page.first_pk}
            near[number + 2] = lambda: page.last_pk and pagination.row_beyond(
                self.get_table_data(), self.ordering, page.last_pk, self.per_page)
            near[number - 2] = lambda: page.first_pk and pagination.row_beyond(
                self.get_table_data(), self.ordering.reversed(), page.first_pk, self.per_page)

        def link(n):
            if n == number:
                return None
            if n <= self.MAX_NUMBERED_PAGE:
                return self._link(page=n if n > 1 else None)
            if n == count:
                return self._link(last=1, page=n)
            cursor = near[n]() if n in near else None
            if cursor is None:
                return False  # not reachable from here: the number is not offered
            return self._link(**{"after" if n > number else "before": cursor, "page": n})

        numbers = []
        for n in pagination.page_window(number, count, self.MAX_NUMBERED_PAGE) if count and count > 1 else []:
            href = link(n) if n is not None else None
            if href is not False:
                numbers.append({"number": n, "href": href, "current": n is not None and n == number})
        following = number + 1 if number is not None else None
        return {
            "numbers": numbers,
            "first": self._link() if page.has_previous else None,
            "previous": self._link(before=page.first_pk, page=number - 1 if number and number > 1 else None)
            if page.has_previous else None,
            "next": self._link(after=page.last_pk, page=following if count and following else None)
            if page.has_next else None,
            "last": self._link(last=1, page=count) if page.has_next else None,
        }

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        table = context["table"]
        table.page_number, table.page_count = self.number, self.page_count
        table.pager = self.pager()
        table.page_numbers = [entry["number"] for entry in table.pager["numbers"] if entry["number"]]
        return context | {
            "total": self.total, "total_at_least": self.total_at_least, "bad_cursor": self.bad_cursor,
            "owner_tag": settings.IMDSWEB_OWNER_TAG, "context_filters": InstanceFilterSet.CONTEXT_FILTERS,
        }


@require_safe
def instance_export(request):
    """The filtered set as CSV, streamed row by row (the fleet may be large)."""
    filterset = InstanceFilterSet(request.GET, queryset=Instance.objects.select_related("account").with_risk())
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
            Instance.objects.select_related("account", "waiver").with_risk().filter(instance_id=instance_id)
            .order_by(F("gone_at").asc(nulls_first=True)).first()
        )
        if instance is None:
            raise Http404("No such instance in the inventory.")
        return instance

    def get_form_kwargs(self):
        return super().get_form_kwargs() | {"instance": self.object}

    def get_context_data(self, **kwargs):
        items = list(self.object.change_items.select_related("batch", "account", "instance")
                     .annotate(state_changed_at=state_changed_at()).order_by("-id")[:50])
        table = ChangeItemTable(items, exclude=("target", "account", "region", "request_id"), orderable=False)
        # The latest enforcement after which this instance's IMDSv1 calls started being refused.
        breakage = next((item for item in items if item.breakage_suspected), None)
        launch_template, group = source_for_instance(self.object)
        # As the change rule holds it (fleet.changes.decision.managed_by): its source's owner first,
        # then the owner tags on the instance itself.
        owned = next((s for s in (group, launch_template) if s is not None and s.owner and not s.gone_at), None)
        if owned is not None:
            owner, owner_detail = owned.owner, f"{owned.owner_detail}, owns {owned.get_kind_display()} {owned.name}"
        else:
            owner, owner_detail = owners.managed_owner(self.object.tags)
        return super().get_context_data(
            **kwargs, history=table, breakage=breakage, source_template=launch_template, source_group=group,
            owner=ManagedOwner(owner).label if owner else "", owner_detail=owner_detail,
            owner_tag=settings.IMDSWEB_OWNER_TAG, console=self.console_links(),
        )

    def console_links(self):
        instance = self.object
        return {
            "instance": console.instance_url(instance.region, instance.instance_id),
            "launch_template": instance.launch_template_id
            and console.launch_template_url(instance.region, instance.launch_template_id),
            "autoscaling_group": instance.autoscaling_group
            and console.autoscaling_group_url(instance.region, instance.autoscaling_group),
        }

    def post(self, request, *args, **kwargs):
        self.object = self.get_object()
        if not request.user.has_perm(QUEUE_CHANGE):
            raise RoleRequired(QUEUE_CHANGE, "Changing the fleet")
        form = self.get_form()
        if not form.is_valid():
            return self.render_to_response(self.get_context_data(form=form), status=400)
        query = {"ids": self.object.instance_id, **form.changed_options}
        return redirect(f"{reverse('fleet:change_new')}?{urlencode(query)}")
