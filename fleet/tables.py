"""django-tables2 tables: instances, change batches, change items, launch sources and template
versions. Cells are escaped by the library."""

import django_tables2 as tables
from django.conf import settings
from django.core.paginator import Paginator
from django.db.models import Case, When
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from .choices import BatchStatus, DriftKind, ItemState, LaunchVerdict, aws_options
from .models import ChangeBatch, ChangeItem, DriftEvent, Instance, LaunchSource, LaunchTemplateVersion, Waiver
from .models.inventory import NEVER
from .pagination import Ordering
from .posture import percent
from .source_kinds import kind_of

MAX_PER_PAGE = 200


def per_page_in_range(per_page):
    """?per_page= comes from the query string: keep it to a sane range."""
    return min(max(per_page, 1), MAX_PER_PAGE)


class BaseTable(tables.Table):
    class Meta:
        attrs = {"class": "table"}
        per_page = 50
        template_name = "django_tables2/table.html"

    def paginate(self, paginator_class=Paginator, per_page=None, page=1, *args, **kwargs):
        if per_page is not None:
            per_page = per_page_in_range(per_page)
        return super().paginate(paginator_class, per_page, page, *args, **kwargs)


def state_changed_at():
    """When an item last changed state: its latest timestamp (claimed, submitted, finished), else its
    creation (held and skipped items are final when created). A queued item was queued at creation
    or by a retry, which leaves the last attempt's submission time: its ``updated_at`` says when
    (``retry_failed`` sets it). An expression for ``annotate``."""
    from django.db.models.functions import Greatest

    attempt = Greatest(*(Coalesce(name, "created_at") for name in ("claimed_at", "submitted_at", "finished_at")))
    return Case(When(state=ItemState.QUEUED, then=Greatest("created_at", "updated_at")), default=attempt)


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
    # Sorting by account keeps its regions together: the list's default order, the unique index's.
    # "name (123456789012)" (the template writes it; sorting by account keeps its regions together).
    account = tables.Column(accessor="account__name", verbose_name="Account")
    # Columns of a few values are filtered on, not sorted by: a sort would need an index each.
    region = tables.Column(attrs={"td": {"class": "nowrap"}}, orderable=False)
    # The owner tag chosen in settings (IMDSWEB_OWNER_TAG); the header names the tag.
    team = tables.Column(empty_values=(), verbose_name="Team", orderable=False)
    # Sorted by the instance_sort_instance_type index; the platform (PlatformDetails) under it.
    instance_type = tables.Column(verbose_name="Type")
    instance_state = tables.Column(verbose_name="State", orderable=False)
    http_tokens = tables.Column(verbose_name="HttpTokens", orderable=False)
    # AWS's parameter names (a break opportunity in the long ones, so the headers can wrap).
    http_endpoint = tables.Column(verbose_name="HttpEndpoint", orderable=False)
    hop_limit = tables.Column(verbose_name=mark_safe("HttpPutResponse<wbr>HopLimit"), attrs={"th": {"class": "wrap"}})
    metadata_state = tables.Column(verbose_name="Options state", orderable=False, attrs={"th": {"class": "wrap"}})
    instance_metadata_tags = tables.Column(verbose_name=mark_safe("InstanceMetadata<wbr>Tags"), orderable=False,
                                           attrs={"th": {"class": "wrap"}})
    v1_calls = tables.Column(verbose_name="IMDSv1 calls", default="not measured")
    # The queryset's ``risk`` annotation (Instance.objects.with_risk(), fleet.models.inventory.RISK).
    risk = tables.Column(verbose_name="IMDSv1 risk", orderable=False, default="—")
    iam_instance_profile_arn = tables.Column(verbose_name="Instance profile", orderable=False)
    network = tables.Column(empty_values=(), verbose_name="VPC / subnet", orderable=False)
    ip = tables.Column(empty_values=(), verbose_name="Private / public IP", orderable=False)
    launch_time = tables.DateTimeColumn(verbose_name="Launched", attrs={"td": {"class": "nowrap"}})
    last_seen = tables.DateTimeColumn(verbose_name="Last seen", attrs={"td": {"class": "nowrap"}})

    class Meta(BaseTable.Meta):
        model = Instance
        fields = ()
        sequence = (
            "ids", "instance_id", "name", "account", "region", "team", "instance_type", "instance_state",
            "http_tokens", "http_endpoint", "hop_limit", "metadata_state", "instance_metadata_tags", "v1_calls",
            "risk", "iam_instance_profile_arn", "network", "ip", "launch_time", "last_seen",
        )
        # Its rows are written out in the template (cell by cell rendering was most of the page's time).
        template_name = "fleet/partials/keyset_table.html"

    # The keyset keys of each sortable column (an index on exactly these keys in fleet.models):
    # never NULL, the last unique. "Not measured" IMDSv1 use sorts below 0 calls.
    SORT_KEYS = {
        "account": ("account_id", "region", "instance_id"),
        "instance_id": ("instance_id", "id"),
        "name": ("name", "id"),
        "hop_limit": (Coalesce("hop_limit", 0), "id"),
        "v1_calls": (Coalesce("v1_calls", -1), "id"),
        "last_seen": ("last_seen", "id"),
        "instance_type": ("instance_type", "id"),
        "launch_time": (Coalesce("launch_time", NEVER), "id"),
    }
    DEFAULT_SORT = "account"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The written-out rows (keyset_table.html) read the team from this tag.
        self.owner_tag = settings.IMDSWEB_OWNER_TAG

    @classmethod
    def ordering_for(cls, sort):
        """``?sort=`` (a column, ``-`` for descending) as (the alias shown, the keyset ordering);
        anything else is the default order."""
        name = (sort or "").removeprefix("-")
        if name not in cls.SORT_KEYS:
            return "", Ordering(cls.SORT_KEYS[cls.DEFAULT_SORT])
        return sort, Ordering(cls.SORT_KEYS[name], descending=sort.startswith("-"))


class ChangeBatchTable(BaseTable):
    id = tables.Column(linkify=True, verbose_name="#")
    created_at = tables.DateTimeColumn(verbose_name="Requested")
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
        text = aws_options(value)
        if record.rollback_of_id:
            text = f"rollback of #{record.rollback_of_id}" + (f": {text}" if text else "")
        if record.dry_run:
            return format_html('{} <span class="badge badge-neutral">dry run</span>', text)
        return text

    def render_status(self, record):
        status = record.status
        shown = badge(status.label, STATUS_LEVEL.get(status, "neutral"))
        if record.breakage_flagged_at:
            shown = format_html("{} {}", shown, BREAKAGE_BADGE)
        if record.approval == "awaiting":
            shown = format_html('{} <span class="badge badge-warn">awaiting approval</span>', shown)
        if record.rollout_state and record.waves > 1:
            shown = format_html('{} <span class="badge badge-neutral">wave {}/{}: {}</span>', shown,
                                record.released_wave + 1, record.waves, record.get_rollout_state_display())
        if getattr(record, "rolled_back_by", None):
            shown = format_html('{} <span class="badge badge-warn">rolled back by #{}</span>', shown,
                                record.rolled_back_by)
        return shown

    def render_progress(self, record):
        counts = record.counts()
        done = counts["total"] - sum(counts[state] for state in ItemState.active())
        text = f"{done:,} / {counts['total']:,} ({percent(done, counts['total']) or 0:g}%)"
        if counts["awaiting_start"]:
            return format_html('{} <span class="muted">· {} will apply when started</span>', text,
                               f"{counts['awaiting_start']:,}")
        return text


BREAKAGE_BADGE = format_html(
    '<span class="badge badge-bad" title="{}">likely breakage</span>', "IMDSv1 calls are being refused since this change"
)
STATUS_LEVEL = {
    BatchStatus.QUEUED: "neutral",
    BatchStatus.RUNNING: "warn",
    BatchStatus.PENDING: "warn",
    BatchStatus.AWAITING_START: "good",
    BatchStatus.DONE: "good",
    BatchStatus.DONE_WITH_ERRORS: "bad",
    BatchStatus.CANCELLED: "neutral",
}
ITEM_STATE_LEVEL = {
    ItemState.QUEUED: "neutral",
    ItemState.SUBMITTING: "warn",
    ItemState.PENDING: "warn",
    ItemState.APPLIED: "good",
    ItemState.FAILED: "bad",
    ItemState.SKIPPED: "neutral",
    ItemState.HELD: "held",  # its own colour: not the pending amber
    ItemState.CANCELLED: "neutral",
    ItemState.STUCK: "bad",
}


class ChangeItemTable(BaseTable):
    batch = tables.Column(linkify=True, verbose_name="Batch")
    target = tables.Column(
        empty_values=(), order_by=("instance__instance_id", "account__name", "region"), attrs={"td": {"class": "nowrap mono"}}
    )
    account = tables.Column(verbose_name="Account", order_by=("account__name", "account__account_id"))
    region = tables.Column(attrs={"td": {"class": "nowrap"}})
    state = tables.Column(attrs={"td": {"class": "nowrap"}})
    sets = tables.Column(empty_values=(), orderable=False, verbose_name="Sets", attrs={"td": {"class": "mono small"}})
    previous = tables.Column(orderable=False, verbose_name="Before", attrs={"td": {"class": "mono small"}})
    # Why an item was skipped, held or cancelled, and AWS's error when it failed: one column, as an
    # item has one or the other, so the table fits its card (AWS's messages can be long).
    reason = tables.Column(empty_values=(), verbose_name="Reason / error", attrs={"td": {"class": "reason"}})
    attempts = tables.Column(attrs={"td": {"class": "num"}})
    # AWS's request ids are 36 characters: they wrap rather than widen the table past its card.
    request_id = tables.Column(default="", verbose_name="Request id", attrs={"td": {"class": "mono small request-id"}})
    # The last state change (state_changed_at(), annotated by the views), not the row's last write.
    state_changed_at = tables.DateTimeColumn(
        verbose_name="Updated", attrs={"th": {"title": "when the item last changed state"}, "td": {"class": "nowrap"}}
    )

    class Meta(BaseTable.Meta):
        model = ChangeItem
        fields = ()
        sequence = (
            "batch", "target", "account", "region", "state", "sets", "previous", "reason", "attempts", "request_id",
            "state_changed_at",
        )
        row_attrs = {"class": lambda record: f"item-{record.state}"}

    def render_target(self, record):
        if record.source_id:
            return format_html('<a href="{}">{}</a>', record.source.get_absolute_url(), record.source.name)
        if record.instance_id:
            url = reverse("fleet:instance_detail", args=[record.instance.instance_id])
            return format_html('<a href="{}">{}</a>', url, record.instance.instance_id)
        return "account defaults"

    def render_state(self, value, record):
        if value == ItemState.PENDING and record.awaiting_start:
            return badge("pending: applies when the instance starts", "neutral")
        label = ItemState(value).label if value in ItemState.values else value
        suffix = format_html(" {}", badge("breakage?", "bad")) if record.breakage_suspected else ""
        return format_html("{}{}", badge(label, ITEM_STATE_LEVEL.get(value, "neutral")), suffix)

    def render_sets(self, record):
        # An item carries its own values only when they differ per item (a rollback).
        values = getattr(record, "desired", None) or record.batch.desired
        return aws_options(values) if values else "—"

    def render_previous(self, value):
        return aws_options(value) if value else "—"

    def render_reason(self, record):
        error = format_html("<code>{}</code> {}", record.error_code, record.error_message) if (
            record.error_code or record.error_message) else ""
        if record.reason and error:
            return format_html("{}<br>{}", record.reason, error)
        return record.reason or error


# ---- drift


# A regression (back to IMDSv1 allowed) is worse than a new instance that allows it.
DRIFT_TONE = {DriftKind.REGRESSED: "bad", DriftKind.NEW_V1: "warn"}


class DriftEventTable(BaseTable):
    detected_at = tables.DateTimeColumn(verbose_name="Seen", attrs={"td": {"class": "nowrap"}})
    kind = tables.Column(verbose_name="Drift")
    instance = tables.Column(linkify=True, verbose_name="Instance", attrs={"td": {"class": "nowrap mono"}})
    name = tables.Column(accessor="instance__name", verbose_name="Name", orderable=False)
    account = tables.Column(verbose_name="Account", order_by=("account__name", "account__account_id"))
    region = tables.Column()
    launch_time = tables.DateTimeColumn(accessor="instance__launch_time", verbose_name="Launched")
    now = tables.Column(empty_values=(), orderable=False, verbose_name="Now")

    class Meta(BaseTable.Meta):
        model = DriftEvent
        fields = ()
        sequence = ("detected_at", "kind", "instance", "name", "account", "region", "launch_time", "now")

    def render_kind(self, record):
        return badge(record.get_kind_display(), DRIFT_TONE.get(record.kind, "warn"))

    def render_now(self, record):
        instance = record.instance
        if instance.gone_at:
            return badge("gone", "neutral")
        if instance.enforced:
            return badge("IMDSv2 enforced", "good")
        return badge(f"HttpTokens {instance.http_tokens}", "bad")


VERDICT_LEVEL = {
    LaunchVerdict.IMDSV2: "good",
    LaunchVerdict.IMDSV1: "bad",
    LaunchVerdict.REFUSED: "bad",
    LaunchVerdict.UNKNOWN: "warn",
}


def verdict_badge(source):
    return badge(LaunchVerdict(source.verdict).label, VERDICT_LEVEL.get(source.verdict, "neutral"))


class LaunchSourceTable(BaseTable):
    name = tables.Column(linkify=True, verbose_name="Source")
    kind = tables.Column()
    # Sorting by account groups the sources by OU first (accounts of one OU together).
    account = tables.Column(accessor="account__name", verbose_name="Account",
                            order_by=("account__ou_path", "account__name", "region"))
    region = tables.Column(attrs={"td": {"class": "nowrap"}})
    launches = tables.Column(empty_values=(), orderable=False, verbose_name="Launches from")
    next_http_tokens = tables.Column(verbose_name="Next HttpTokens", default="unknown")
    next_hop_limit = tables.Column(verbose_name="Hops", default="?")
    verdict = tables.Column(verbose_name="Next launch")
    owner = tables.Column(default="", verbose_name="Owner")

    class Meta(BaseTable.Meta):
        model = LaunchSource
        fields = ()
        sequence = ("name", "kind", "account", "region", "launches", "next_http_tokens", "next_hop_limit", "verdict", "owner")

    def render_name(self, value, record):
        return format_html('{} <small class="muted mono">{}</small>', value, record.source_id) if record.source_id != value else value

    def render_account(self, value, record):
        ou_path = record.account.ou_path
        return format_html('{} <small class="muted">{}</small>', value, ou_path) if ou_path else value

    def render_launches(self, record):
        return kind_of(record).spec(record)

    def render_verdict(self, record):
        return verdict_badge(record)

    def render_owner(self, record):
        return format_html('<span title="{}">{}</span>', record.owner_detail, record.get_owner_display())


class LaunchTemplateVersionTable(BaseTable):
    version_number = tables.Column(verbose_name="Version")
    role = tables.Column(empty_values=(), orderable=False, verbose_name="")
    description = tables.Column(default="")
    image_id = tables.Column(verbose_name="AMI", default="—")
    http_tokens = tables.Column(verbose_name="HttpTokens", default="unset")
    hop_limit = tables.Column(verbose_name="Hops", default="unset")
    http_endpoint = tables.Column(verbose_name="Endpoint", default="unset")
    created_at = tables.DateTimeColumn(verbose_name="Created", default="—")

    class Meta(BaseTable.Meta):
        model = LaunchTemplateVersion
        fields = ()
        sequence = ("version_number", "role", "description", "image_id", "http_tokens", "hop_limit", "http_endpoint", "created_at")

    def render_role(self, record):
        template = record.template
        roles = [name for name, number in (("default", template.default_version), ("latest", template.latest_version))
                 if number == record.version_number]
        return format_html_join(" ", '<span class="badge badge-neutral">{}</span>', ((r,) for r in roles))


class WaiverTable(BaseTable):
    id = tables.Column(linkify=True, verbose_name="#")
    scope = tables.Column(accessor="scope_text", verbose_name="Exempts", orderable=False)
    owner = tables.Column()
    reason = tables.Column(orderable=False)
    expires_on = tables.Column(verbose_name="Until (UTC)")
    status = tables.Column(empty_values=(), orderable=False)
    instances = tables.Column(accessor="n_instances", verbose_name="Instances now", orderable=False)
    created_by = tables.Column(default="", verbose_name="Granted by")

    class Meta(BaseTable.Meta):
        model = Waiver
        fields = ()
        sequence = ("id", "scope", "owner", "reason", "expires_on", "status", "instances", "created_by")

    def render_status(self, record):
        return badge(record.status, {"active": "good", "expired": "bad", "revoked": "warn"}[record.status])

    def render_reason(self, value):
        return value if len(value) <= 80 else value[:79] + "…"

    def render_instances(self, value, record):
        url = reverse("fleet:instance_list") + f"?waiver={record.pk}"
        return format_html('<a href="{}">{}</a>', url, value)


# ---- the instance list's rows, written in Python


def instance_rows(instances, owner_tag):
    """Every ``<tr>`` of an instance list page, as one safe string: InstanceTable's columns in its
    order. django-tables2's cell-by-cell renderer cost ~1 ms a row, Django's template language
    ~0.4 ms and ``format_html`` (which checks every argument for lazy text) as much again; f-strings
    over ``fleet.widgets.escape_text`` take ~0.05 ms. ``fleet/tests/test_instance_rows.py`` holds the template
    these rows were written from and checks the two agree for every kind of value."""
    from django.contrib.humanize.templatetags.humanize import intcomma
    from django.utils import dateformat, formats, timezone

    from .templatetags.fleet_tags import profile_name, risk_label
    from .widgets import escape_text as e

    short = formats.get_format("SHORT_DATETIME_FORMAT")

    def absent(value, text="absent"):
        return text if value is None else e(value)

    def when(value):
        return e(dateformat.format(timezone.localtime(value), short)) if value else ""

    rows = []
    for index, i in enumerate(instances):
        account = i.account
        ou = f' <small class="muted">{e(account.ou_path)}</small>' if account.ou_path else ""
        platform = f'<br><small class="muted">{e(i.platform_details)}</small>' if i.platform_details else ""
        tokens = "good" if i.http_tokens == "required" else "neutral" if i.http_endpoint == "disabled" else "bad"
        endpoint = "good" if i.http_endpoint == "disabled" else "neutral"
        hops = "—" if i.hop_limit is None else (
            f'<span class="badge badge-{"neutral" if i.hop_limit == 1 else "warn"}">{e(i.hop_limit)}</span>')
        state = "warn" if i.metadata_state == "pending" else "neutral"
        v1 = ("not measured" if i.v1_calls is None else
              f'<span class="badge badge-bad">{e(intcomma(i.v1_calls))}</span>' if i.v1_calls else
              '<span class="badge badge-good">0</span>')
        risk = (f'<span class="badge badge-{"warn" if i.risk == "no_role" else "bad"}" data-risk="{e(i.risk)}">'
                f'{e(risk_label(i.risk))}</span>' if i.risk else "—")
        arn = i.iam_instance_profile_arn
        profile = f'<span title="{e(arn)}">{e(profile_name(arn))}</span>' if arn else "none"
        rows.append(
            f'<tr class="{"gone " if i.gone_at else ""}{"odd" if index % 2 else "even"}">'
            f'<td><input type="checkbox" name="ids" value="{e(i.instance_id)}" aria-label="select" /></td>'
            f'<td class="mono nowrap"><a href="{e(reverse("fleet:instance_detail", args=[i.instance_id]))}">'
            f'{e(i.instance_id)}</a></td>'
            f"<td>{e(i.name)}</td>"
            f"<td>{e(account)}{ou}</td>"
            f'<td class="nowrap">{e(i.region)}</td>'
            f'<td>{e((i.tags or {}).get(owner_tag, "") or "—")}</td>'
            f'<td class="nowrap">{e(i.instance_type or "—")}{platform}</td>'
            f"<td>{e(i.instance_state)}</td>"
            f'<td><span class="badge badge-{tokens}">{absent(i.http_tokens)}</span></td>'
            f'<td><span class="badge badge-{endpoint}">{absent(i.http_endpoint)}</span></td>'
            f"<td>{hops}</td>"
            f'<td><span class="badge badge-{state}">{absent(i.metadata_state)}</span></td>'
            f"<td>{absent(i.instance_metadata_tags)}</td>"
            f"<td>{v1}</td>"
            f"<td>{risk}</td>"
            f'<td class="small">{profile}</td>'
            f'<td class="mono small nowrap">{absent(i.vpc_id, "—")}<br>{absent(i.subnet_id, "—")}</td>'
            f'<td class="mono small nowrap">{absent(i.private_ip, "—")}<br>{absent(i.public_ip, "no public IP")}</td>'
            f'<td class="nowrap">{when(i.launch_time) or "—"}</td>'
            f'<td class="nowrap">{when(i.last_seen)}</td>'
            "</tr>"
        )
    return mark_safe("\n".join(rows))  # noqa: S308 - every value above is escaped
