"""API views: each one a queryset, a filter and a serializer over the same services the pages use."""

from datetime import timedelta

from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.functional import cached_property
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, pagination
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param
from rest_framework.views import APIView

from .. import history, posture
from .. import pagination as keyset
from ..filters import ChangeItemFilterSet, DriftEventFilterSet, InstanceFilterSet, WaiverFilterSet
from ..models import ChangeBatch, DriftEvent, Instance, MetadataDefaults, RegionPosture, Waiver
from ..tables import InstanceTable, per_page_in_range
from ..views.history import BurndownForm
from . import serializers as api

MAX_PAGE = 1000


def filtered(filterset_class, request, queryset):
    """The list's own filterset over the query string; a bad value is a 400 with field errors."""
    filterset = filterset_class(request.query_params, queryset=queryset, request=request)
    if not filterset.is_valid():
        raise ValidationError(filterset.errors)
    return filterset


class KeysetPagination(pagination.BasePagination):
    """The instance list's keyset pages (``fleet.pagination``): ``?sort=`` as on the page,
    ``?after=`` / ``?before=`` an instance's row id from a previous page's ``next`` / ``previous``."""

    def paginate_queryset(self, queryset, request, view=None):
        params = request.query_params
        sort, ordering = InstanceTable.ordering_for(params.get("sort"))
        after, before = (keyset.parse_cursor(params.get(key)) for key in ("after", "before"))
        if after is False or before is False:
            raise ValidationError({"after" if after is False else "before": ["Not a cursor from this API."]})
        try:
            per_page = min(per_page_in_range(int(params.get("per_page", 100))), MAX_PAGE)
        except ValueError:
            raise ValidationError({"per_page": ["A whole number."]}) from None
        self.request, self.sort = request, sort
        self.page = keyset.page(queryset, ordering, per_page, after=after or None, before=before or None)
        return self.page.rows

    def _link(self, **cursor):
        url = self.request.build_absolute_uri()
        for key in ("after", "before"):
            url = remove_query_param(url, key)
        for key, value in cursor.items():
            url = replace_query_param(url, key, value)
        return url

    def get_paginated_response(self, data):
        page = self.page
        return Response({
            "next": self._link(after=page.last_pk) if page.has_next else None,
            "previous": self._link(before=page.first_pk) if page.has_previous else None,
            "stale_cursor": page.stale_cursor,
            "results": data,
        })

    def get_paginated_response_schema(self, schema):
        return {"type": "object", "required": ["results"], "properties": {
            "next": {"type": "string", "format": "uri", "nullable": True},
            "previous": {"type": "string", "format": "uri", "nullable": True},
            "stale_cursor": {"type": "boolean", "description": "The cursor's row is gone: this is the first page."},
            "results": schema,
        }}

    def get_schema_operation_parameters(self, view):
        return [
            {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": kind}}
            for name, kind, text in (
                ("sort", "string", "A column (instance_id, name, account, hop_limit, v1_calls, last_seen), - for descending."),
                ("after", "integer", "From a previous page's next link."),
                ("before", "integer", "From a previous page's previous link."),
                ("per_page", "integer", f"1..{MAX_PAGE}, default 100."),
            )
        ]


class IdCursorPagination(pagination.CursorPagination):
    """Keyset pages by id, newest first (DRF's own cursor pagination)."""

    ordering = "-id"
    page_size = 100
    page_size_query_param = "per_page"
    max_page_size = MAX_PAGE


def filter_parameters(filterset_class):
    return [OpenApiParameter(name, OpenApiTypes.STR, description=str(f.label or name))
            for name, f in filterset_class.base_filters.items()]


@extend_schema(parameters=filter_parameters(InstanceFilterSet))
class InstanceListView(generics.ListAPIView):
    """Instances with the instance list's filters (``?http_tokens=optional&account=…``)."""

    serializer_class = api.InstanceSerializer
    pagination_class = KeysetPagination

    def get_queryset(self):
        return filtered(InstanceFilterSet, self.request, Instance.objects.select_related("account").with_risk()).qs


class InstanceDetailView(generics.RetrieveAPIView):
    serializer_class = api.InstanceSerializer
    lookup_field = "instance_id"

    def get_object(self):
        instance = (Instance.objects.select_related("account").with_risk().filter(instance_id=self.kwargs["instance_id"])
                    .order_by("gone_at").first())
        if instance is None:
            raise NotFound("No such instance in the inventory.")
        return instance


class PostureView(APIView):
    """The overview's figures: fleet totals (both rules) and every account/region's summary row."""

    @extend_schema(responses=api.PostureSerializer)
    def get(self, request):
        rows = RegionPosture.objects.select_related("account").order_by("account__account_id", "region")
        return Response(api.PostureSerializer({"totals": posture.fleet_totals(), "regions": rows}).data)


class PostureHistoryView(APIView):
    """The burndown's points: hourly up to 7 days, else daily; the last is the live summary."""

    @extend_schema(
        parameters=[
            OpenApiParameter("days", int, enum=list(history.RANGES), description="7, 30 (default) or 90"),
            OpenApiParameter("account", str, description="An account id"),
            OpenApiParameter("region", str),
        ],
        responses=api.HistorySerializer,
    )
    def get(self, request):
        form = BurndownForm({f"history-{key}": value for key, value in request.query_params.items()})
        if not form.is_valid():
            raise ValidationError({name.removeprefix("history-"): errors for name, errors in form.errors.items()})
        days = form.cleaned_data["days"] or 30
        account, region = form.cleaned_data["account"], form.cleaned_data["region"] or None
        now = timezone.now()
        points = history.burndown(days, account=account, region=region, now=now)
        markers = history.batch_markers(now - timedelta(days=days), account=account, region=region)
        return Response(api.HistorySerializer({
            "days": days, "account_id": account.account_id if account else None, "region": region,
            "points": points, "batches": markers,
        }).data)


class DefaultsListView(generics.ListAPIView):
    serializer_class = api.MetadataDefaultsSerializer
    queryset = MetadataDefaults.objects.select_related("account").order_by("account__account_id", "region", "id")
    pagination_class = None


@extend_schema(parameters=filter_parameters(DriftEventFilterSet))
class DriftListView(generics.ListAPIView):
    serializer_class = api.DriftEventSerializer
    pagination_class = IdCursorPagination

    def get_queryset(self):
        return filtered(DriftEventFilterSet, self.request,
                        DriftEvent.objects.select_related("instance", "account")).qs.order_by()


class BatchListView(generics.ListAPIView):
    serializer_class = api.ChangeBatchSerializer
    pagination_class = IdCursorPagination
    queryset = ChangeBatch.objects.with_counts().select_related("created_by", "approved_by")


class BatchDetailView(generics.RetrieveAPIView):
    serializer_class = api.ChangeBatchSerializer
    queryset = ChangeBatch.objects.with_counts().select_related("created_by", "approved_by")


@extend_schema(parameters=filter_parameters(ChangeItemFilterSet))
class BatchItemListView(generics.ListAPIView):
    serializer_class = api.ChangeItemSerializer
    pagination_class = IdCursorPagination

    @cached_property
    def batch(self):
        return get_object_or_404(ChangeBatch, pk=self.kwargs["pk"])

    def get_queryset(self):
        items = self.batch.items.select_related("instance", "account")
        return filtered(ChangeItemFilterSet, self.request, items).qs.order_by()



@extend_schema(parameters=filter_parameters(WaiverFilterSet))
class WaiverListView(generics.ListAPIView):
    """Waivers, read-only, with the Waivers page's filters (``?status=active`` by default)."""

    serializer_class = api.WaiverSerializer
    pagination_class = IdCursorPagination

    def get_queryset(self):
        return filtered(WaiverFilterSet, self.request, Waiver.objects.with_counts()).qs.order_by()
