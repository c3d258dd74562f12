"""Launch sources: the filtered list and one source's page (what its next launch gets and why,
its versions, the groups using it, the instances launched from it)."""

from django.db.models import Count, Q
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.http import urlencode
from django.views.generic import DetailView

from .. import source_changes
from ..choices import SourceKind
from ..filters import LaunchSourceFilterSet
from ..forms import SourceFixForm
from ..models import Image, Instance, LaunchSource, SourceSyncState
from ..models.inventory import ENFORCED
from ..tables import LaunchSourceTable, LaunchTemplateVersionTable, launch_spec
from .base import ConfirmActionView, FilteredTableView


class SourceListView(FilteredTableView):
    queryset = LaunchSource.objects.select_related("account")
    filterset_class = LaunchSourceFilterSet
    table_class = LaunchSourceTable
    template_name = "fleet/source_list.html"
    partial_template_name = "fleet/partials/source_table.html"

    def get_context_data(self, **kwargs):
        failed = SourceSyncState.objects.exclude(error="").select_related("account")
        return super().get_context_data(**kwargs, failed_syncs=list(failed))


def instances_from(source):
    """The present instances launched from ``source`` (AWS's attribution tags), and the instance
    list's filter that shows them."""
    instances = Instance.objects.present().filter(source.instance_condition())
    query = {"account": source.account.account_id, "region": source.region}
    if source.kind == SourceKind.LAUNCH_TEMPLATE:
        return instances, query | {"launch_template": source.source_id}
    if source.kind == SourceKind.AUTO_SCALING_GROUP:
        return instances, query | {"autoscaling_group": source.source_id}
    return instances, None


class SourceDetailView(DetailView):
    template_name = "fleet/source_detail.html"
    context_object_name = "source"

    def get_object(self, queryset=None):
        return get_object_or_404(
            LaunchSource.objects.select_related("account", "template", "launch_configuration"), pk=self.kwargs["pk"]
        )

    def get_context_data(self, **kwargs):
        source = self.object
        instances, query = instances_from(source)
        not_enforced = ~ENFORCED
        by_version = list(
            instances.values("launch_template_version")
            .annotate(total=Count("id"), allow_v1=Count("id", filter=not_enforced))
            .order_by("launch_template_version")
        )
        list_url = v1_url = None
        if query:
            list_url = f"{reverse('fleet:instance_list')}?{urlencode(query)}"
            v1_url = f"{list_url}&{urlencode({'http_tokens': 'optional', 'http_endpoint': 'enabled'})}"
        template = source if source.kind == SourceKind.LAUNCH_TEMPLATE else source.template
        versions = groups = None
        if source.kind == SourceKind.LAUNCH_TEMPLATE:
            versions = LaunchTemplateVersionTable(
                source.versions.select_related("template"), orderable=False, empty_text="No version read yet."
            )
            groups = source.groups_on_template.filter(gone_at__isnull=True).order_by("name")
        elif source.kind == SourceKind.LAUNCH_CONFIGURATION:
            groups = source.groups_on_configuration.filter(gone_at__isnull=True).order_by("name")
        next_version = (
            template.versions.filter(version_number=source.next_version).first() if template and source.next_version else None
        )
        image_id = next_version.image_id if next_version else source.image_id
        image = Image.objects.filter(account=source.account, region=source.region, image_id=image_id).first()
        totals = instances.aggregate(total=Count("id"), allow_v1=Count("id", filter=not_enforced))
        return super().get_context_data(
            **kwargs, launch_spec=launch_spec(source), versions=versions, groups=groups, by_version=by_version,
            totals=totals, list_url=list_url, v1_url=v1_url, image_id=image_id, image=image,
            old_allow_v1=sum(row["allow_v1"] for row in by_version if row["launch_template_version"] != str(source.next_version or "")),
            sync_state=SourceSyncState.objects.filter(account=source.account, region=source.region).first(),
            history=source.change_items.select_related("batch").order_by("-id")[:20],
        )


def source_for_instance(instance):
    """The launch template and Auto Scaling group rows an instance was launched from (or None)."""
    found = {
        s.kind: s
        for s in LaunchSource.objects.filter(account=instance.account, region=instance.region).filter(
            Q(kind=SourceKind.LAUNCH_TEMPLATE, source_id=instance.launch_template_id or "-")
            | Q(kind=SourceKind.AUTO_SCALING_GROUP, source_id=instance.autoscaling_group or "-")
        )
    }
    return found.get(SourceKind.LAUNCH_TEMPLATE), found.get(SourceKind.AUTO_SCALING_GROUP)


class SourceFixView(ConfirmActionView):
    """``/sources/require-imdsv2/?ids=<pk>…`` or ``?filter=<Sources filter>``: what would change
    (and what is skipped, and why), then queue the batch."""

    form_class = SourceFixForm
    template_name = "fleet/source_fix_confirm.html"

    def preview(self, form):
        data = form.cleaned_data
        return source_changes.plan(form.sources, data["hop_limit"], data["update_pinned"], data["override_owner"])

    def perform(self, form):
        data = form.cleaned_data
        return source_changes.request_source_fix(
            self.request.user, form.sources, hop_limit=data["hop_limit"], update_pinned=data["update_pinned"],
            override_owner=data["override_owner"], comment=data["comment"], dry_run=data["dry_run"],
        )

    def success_message(self, batch):
        return f"Require IMDSv2 at the source queued as batch #{batch.pk}."
