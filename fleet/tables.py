"""django-tables2 tables: instances, change batches, change items. Cells are escaped by the library."""

import django_tables2 as tables
from django.core.paginator import Paginator
from django.urls import reverse
from django.utils.html import format_html

from .choices import HttpTokens, ItemState, MetadataState, Toggle
from .models import ChangeBatch, ChangeItem, Instance
from .posture import percent

MAX_PER_PAGE = 200


class BaseTable(tables.Table):
    class Meta:
        attrs = {"class": "table"}
        per_page = 50
        template_name = "django_tables2/table.html"

    def paginate(self, paginator_class=Paginator, per_page=None, page=1, *args, **kwargs):
        # ?per_page= comes from the query string: keep it to a sane range.
        if per_page is not None:
            per_page = min(max(per_page, 1), MAX_PER_PAGE)
        return super().paginate(paginator_class, per_page, page, *args, **kwargs)


def badge(text, level):
    return format_html('<span class="badge badge-{}">{}</span>', level, text)


class InstanceTable(BaseTable):
    ids = tables.CheckBoxColumn(
        accessor="instance_id",
        attrs={"th__input": {"data-select-all": "ids", "aria-label": "select all on this page"},
               "td__input": {"aria-label": "select"}},
    )
    instance_id = tables.Column(linkify=True, verbose_name="Instance", attrs={"td": {"class": "nowrap mono"}})
    name = tables.Column(verbose_name="Name")
    account = tables.Column(
        accessor="account__name", verbose_name="Account", order_by=("account__name", "account__account_id")
    )
    region = tables.Column(attrs={"td": {"class": "nowrap"}})
    instance_state = tables.Column(verbose_name="State")
    http_tokens = tables.Column(verbose_name="HttpTokens")
    http_endpoint = tables.Column(verbose_name="Endpoint")
    hop_limit = tables.Column(verbose_name="Hops")
    metadata_state = tables.Column(verbose_name="Options")
    instance_metadata_tags = tables.Column(verbose_name="Tags")
    v1_calls = tables.Column(verbose_name="IMDSv1 calls", default="not measured")
    last_seen = tables.DateTimeColumn(verbose_name="Last seen", format="Y-m-d H:i", attrs={"td": {"class": "nowrap"}})

    class Meta(BaseTable.Meta):
        model = Instance
        fields = ()
        sequence = (
            "ids", "instance_id", "name", "account", "region", "instance_state", "http_tokens",
            "http_endpoint", "hop_limit", "metadata_state", "instance_metadata_tags", "v1_calls", "last_seen",
        )
        row_attrs = {"class": lambda record: "gone" if record.gone_at else ""}

    def render_account(self, record):
        return format_html('<span title="{}">{}</span>', record.account.account_id, record.account.name)

    def render_http_tokens(self, record):
        if record.http_tokens == HttpTokens.REQUIRED:
            return badge("required", "good")
        if record.http_endpoint == Toggle.DISABLED:
            return badge("optional", "neutral")
        return badge("optional", "bad")

    def render_http_endpoint(self, value):
        return badge(value, "good" if value == Toggle.DISABLED else "neutral")

    def render_hop_limit(self, value):
        return badge(value, "neutral") if value == 1 else badge(value, "warn")

    def render_metadata_state(self, value):
        return badge(value, "warn" if value == MetadataState.PENDING else "neutral")

    def render_v1_calls(self, value):
        return badge(f"{value:,}", "bad") if value else badge("0", "good")


class ChangeBatchTable(BaseTable):
    id = tables.Column(linkify=True, verbose_name="#")
    created_at = tables.DateTimeColumn(verbose_name="Requested", format="Y-m-d H:i")
    created_by = tables.Column(verbose_name="By", default="—")
    kind = tables.Column()
    desired = tables.Column(orderable=False, verbose_name="Change")
    status = tables.Column(empty_values=(), orderable=False)
    progress = tables.Column(empty_values=(), orderable=False)
    comment = tables.Column(default="")

    class Meta(BaseTable.Meta):
        model = ChangeBatch
        fields = ()
        sequence = ("id", "created_at", "created_by", "kind", "desired", "status", "progress", "comment")

    def render_desired(self, value, record):
        text = ", ".join(f"{key}={val}" for key, val in value.items())
        if record.rollback_of_id:
            text = f"rollback of #{record.rollback_of_id}" + (f": {text}" if text else "")
        if record.dry_run:
            return format_html('{} <span class="badge badge-neutral">dry run</span>', text)
        return text

    def render_status(self, record):
        status = record.status
        if record.breakage_flagged_at:
            return format_html("{} {}", badge(status.label, STATUS_LEVEL.get(status, "neutral")), BREAKAGE_BADGE)
        return badge(status.label, STATUS_LEVEL.get(status, "neutral"))

    def render_progress(self, record):
        counts = record.counts()
        done = counts["total"] - sum(counts[state] for state in ItemState.active())
        return f"{done:,} / {counts['total']:,} ({percent(done, counts['total']) or 0:g}%)"


BREAKAGE_BADGE = format_html(
    '<span class="badge badge-bad" title="{}">likely breakage</span>', "IMDSv1 calls are being refused since this change"
)
STATUS_LEVEL = {
    "queued": "neutral",
    "running": "warn",
    "pending": "warn",
    "done": "good",
    "done_with_errors": "bad",
    "cancelled": "neutral",
}
ITEM_STATE_LEVEL = {
    ItemState.QUEUED: "neutral",
    ItemState.SUBMITTING: "warn",
    ItemState.PENDING: "warn",
    ItemState.APPLIED: "good",
    ItemState.FAILED: "bad",
    ItemState.SKIPPED: "neutral",
    ItemState.HELD: "warn",
    ItemState.CANCELLED: "neutral",
    ItemState.STUCK: "bad",
}


class ChangeItemTable(BaseTable):
    batch = tables.Column(linkify=True, verbose_name="Batch")
    target = tables.Column(
        empty_values=(), order_by=("instance__instance_id", "account__name", "region"), attrs={"td": {"class": "nowrap mono"}}
    )
    account = tables.Column(accessor="account__name", verbose_name="Account", order_by=("account__name",))
    region = tables.Column(attrs={"td": {"class": "nowrap"}})
    state = tables.Column(attrs={"td": {"class": "nowrap"}})
    sets = tables.Column(empty_values=(), orderable=False, verbose_name="Sets", attrs={"td": {"class": "mono small"}})
    previous = tables.Column(orderable=False, verbose_name="Before", attrs={"td": {"class": "mono small"}})
    reason = tables.Column(default="", attrs={"td": {"class": "reason"}})
    attempts = tables.Column(attrs={"td": {"class": "num"}})
    error = tables.Column(empty_values=(), orderable=False, attrs={"td": {"class": "reason"}})
    request_id = tables.Column(default="", verbose_name="Request id", attrs={"td": {"class": "mono small nowrap"}})
    updated_at = tables.DateTimeColumn(verbose_name="Updated", format="Y-m-d H:i:s", attrs={"td": {"class": "nowrap"}})

    class Meta(BaseTable.Meta):
        model = ChangeItem
        fields = ()
        sequence = (
            "batch", "target", "account", "region", "state", "sets", "previous", "reason", "attempts", "error", "request_id",
            "updated_at",
        )
        row_attrs = {"class": lambda record: f"item-{record.state}"}

    def render_target(self, record):
        if record.instance_id:
            url = reverse("fleet:instance_detail", args=[record.instance.instance_id])
            return format_html('<a href="{}">{}</a>', url, record.instance.instance_id)
        return "account defaults"

    def render_state(self, value, record):
        label = ItemState(value).label if value in ItemState.values else value
        suffix = format_html(" {}", badge("breakage?", "bad")) if record.breakage_suspected else ""
        return format_html("{}{}", badge(label, ITEM_STATE_LEVEL.get(value, "neutral")), suffix)

    def render_sets(self, record):
        # An item carries its own values only when they differ per item (a rollback).
        values = getattr(record, "desired", None) or record.batch.desired
        return ", ".join(f"{key}={val}" for key, val in values.items()) if values else "—"

    def render_previous(self, value):
        return ", ".join(f"{key}={val}" for key, val in value.items()) if value else "—"

    def render_error(self, record):
        if not (record.error_code or record.error_message):
            return ""
        return format_html("<code>{}</code> {}", record.error_code, record.error_message)
