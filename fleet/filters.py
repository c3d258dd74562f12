"""django-filter filtersets: the instance list (and its CSV export and bulk selection), change items."""

import re
from datetime import datetime, time, timedelta

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.http import QueryDict
from django.utils import timezone

from . import posture, teams
from .changes.decision import Outcome
from .choices import (
    ChangeKind,
    DriftKind,
    HttpTokens,
    InstanceState,
    ItemState,
    LaunchVerdict,
    ManagedOwner,
    MetadataState,
    Risk,
    SourceKind,
    Toggle,
    WaiverScope,
)
from .models import Account, ChangeBatch, ChangeItem, DriftEvent, Instance, LaunchSource, Waiver
from .models.inventory import RISKS, V1_USAGE
from .posture import NULL_KEY
from .widgets import plain_widgets

INSTANCE_ID = re.compile(r"i-([0-9a-f]{8}|[0-9a-f]{17})")


class IntegerFilter(django_filters.NumberFilter):
    # NumberFilter takes decimals; a hop limit of 1.5 must be a form error, not a rounded match.
    field_class = forms.IntegerField


class IpFilter(django_filters.CharFilter):
    field_class = forms.GenericIPAddressField


def tag_condition(text):
    """``Key=Value`` (the tag has that value), ``Key`` (the tag is there), ``!Key`` (it is not) as
    a condition on ``tags``. On PostgreSQL ``@>`` and ``?``, which the GIN index answers (0019)."""
    from django.db import connection
    from django.db.models.fields.json import KeyTransform

    absent = text.startswith("!")
    key, has_value, value = text.removeprefix("!").partition("=")
    if not key or (absent and has_value):
        raise ValidationError("A tag filter is Key=Value, Key (the tag is there) or !Key (it is not).")
    if not has_value:
        condition = Q(tags__has_key=key)
        return ~condition if absent else condition
    if connection.vendor == "postgresql":
        return Q(tags__contains={key: value})
    return Q(_tag_value=value), KeyTransform(key, "tags")


def filter_by_tag(queryset, text):
    condition = tag_condition(text)
    if isinstance(condition, tuple):  # SQLite: compare the key's text
        condition, expression = condition
        return queryset.alias(_tag_value=expression).filter(condition)
    return queryset.filter(condition)


def region_choices():
    # From the accounts' configured regions: a small table, where DISTINCT over instances is a scan.
    regions = {region for regions in Account.objects.values_list("regions", flat=True) for region in regions or []}
    return [(region, region) for region in sorted(regions)]


class FilterForm(forms.Form):
    """Every filter form: its widgets write their HTML in Python (``fleet.widgets``: Django's
    template per widget and per option was a quarter of the instance list's time)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        plain_widgets(self)


class InstanceFilterForm(FilterForm):
    """Checks the parameters whose shape a filter method cannot refuse on its own."""

    def clean_ids(self):
        text = self.cleaned_data.get("ids") or ""
        ids = [part for part in text.replace(",", " ").split() if part]
        bad = [part for part in ids if not INSTANCE_ID.fullmatch(part)]
        if bad:
            raise ValidationError(f"Not instance ids: {', '.join(part[:20] for part in bad[:5])}")
        if len(ids) > 500:
            raise ValidationError("At most 500 instance ids; use a filter instead.")
        return ids

    def clean_tag(self):
        text = (self.cleaned_data.get("tag") or "").strip()
        if text:
            tag_condition(text)  # raises the form error for a malformed filter
        return text

    def clean_change(self):
        """``change=http_tokens=required,hop_limit=2`` -> the desired options (empty: none given)."""
        from .changes import clean_instance_desired

        text = (self.cleaned_data.get("change") or "").strip()
        if not text:
            return {}
        pairs = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        return clean_instance_desired(pairs)


def ou_choices():
    """Every OU path an account is in, and each of its ancestors (choosing an OU includes the OUs
    under it). From the accounts table: one small query."""
    paths = set()
    for path in Account.objects.exclude(ou_path="").values_list("ou_path", flat=True).distinct():
        parts = path.split("/")
        paths.update("/".join(parts[: n + 1]) for n in range(len(parts)))
    return [(path, path) for path in sorted(paths)]


def ou_q(ou, prefix=""):
    """Accounts in OU ``ou`` or any OU under it (``prefix`` reaches the account from another model)."""
    return Q(**{f"{prefix}ou_path": ou}) | Q(**{f"{prefix}ou_path__startswith": f"{ou}/"})


def within_ou(queryset, ou, prefix=""):
    return queryset.filter(ou_q(ou, prefix))


class InstanceFilterSet(django_filters.FilterSet):
    """Every field lives in the query string, so a filter is a URL: the list, the CSV export and
    "all N matching this filter" all read the same parameters."""

    GONE_CHOICES = [("present", "present"), ("gone", "gone"), ("all", "all")]
    V1_CHOICES = [("yes", "IMDSv1 calls seen"), ("no", "no IMDSv1 calls"), ("unknown", "not measured")]

    q = django_filters.CharFilter(
        method="filter_q", label="Search", max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "instance id or Name", "type": "search"}),
    )
    account = django_filters.ModelChoiceFilter(
        queryset=Account.objects.all(), to_field_name="account_id", empty_label="any account"
    )
    ou = django_filters.ChoiceFilter(choices=ou_choices, method="filter_ou", label="OU", empty_label="any OU")
    region = django_filters.ChoiceFilter(choices=region_choices, empty_label="any region")
    POSTURE_CHOICES = [
        ("counted", "counted (not terminated or shutting down)"),
        ("enforced", "IMDSv2 enforced"),
        ("not_enforced", "IMDSv1 allowed, not waived"),
        ("waived", "IMDSv1 allowed under an active waiver"),
        ("not_counted", "terminated or shutting down (not counted)"),
    ]

    posture = django_filters.ChoiceFilter(
        choices=POSTURE_CHOICES, method="filter_posture", label="Posture", empty_label="any",
        help_text="IMDSv2 enforced: HttpTokens required with HttpEndpoint enabled, or HttpEndpoint disabled "
                  "(Prowler ec2_instance_imdsv2_enabled PASS)",
    )
    # A member AWS left out of MetadataOptions is NULL; "absent" (null_label) finds those rows.
    http_tokens = django_filters.ChoiceFilter(
        choices=HttpTokens.choices, label="HttpTokens", empty_label="any", null_label="absent",
        null_value=NULL_KEY,
    )
    http_endpoint = django_filters.ChoiceFilter(
        choices=Toggle.choices, label="HttpEndpoint", empty_label="any", null_label="absent",
        null_value=NULL_KEY,
    )
    hop_limit = IntegerFilter(label="HttpPutResponseHopLimit", min_value=1, max_value=64)
    hop_limit_min = IntegerFilter(field_name="hop_limit", lookup_expr="gte", label="HttpPutResponseHopLimit at least",
                                  min_value=1, max_value=64)
    metadata_state = django_filters.ChoiceFilter(
        choices=MetadataState.choices, label="Options state", empty_label="any",
        help_text="MetadataOptions.State: pending until a change is applied", null_label="absent",
        null_value=NULL_KEY,
    )
    instance_state = django_filters.ChoiceFilter(choices=InstanceState.choices, empty_label="any")
    instance_metadata_tags = django_filters.ChoiceFilter(
        choices=Toggle.choices, label="InstanceMetadataTags", empty_label="any", null_label="absent",
        null_value=NULL_KEY,
    )
    v1_usage = django_filters.ChoiceFilter(
        choices=V1_CHOICES, method="filter_v1_usage", label="IMDSv1 in use", empty_label="any"
    )
    # The SSRF risk of instances that allow IMDSv1 (fleet.models.inventory.RISKS), highest first.
    risk = django_filters.ChoiceFilter(
        choices=Risk.choices, method="filter_risk", label="IMDSv1 risk", empty_label="any"
    )
    gone = django_filters.ChoiceFilter(choices=GONE_CHOICES, method="filter_gone", label="Present", empty_label=None)
    # Context from DescribeInstances: what it is, where it runs, what it may do.
    instance_type = django_filters.CharFilter(label="Instance type", max_length=32)
    platform = django_filters.CharFilter(field_name="platform_details", label="Platform", max_length=64,
                                         widget=forms.TextInput(attrs={"placeholder": "Linux/UNIX, Windows…"}))
    vpc = django_filters.CharFilter(field_name="vpc_id", label="VPC", max_length=32,
                                    widget=forms.TextInput(attrs={"placeholder": "vpc-…"}))
    subnet = django_filters.CharFilter(field_name="subnet_id", label="Subnet", max_length=32,
                                       widget=forms.TextInput(attrs={"placeholder": "subnet-…"}))
    ip = IpFilter(method="filter_ip", label="IP address", help_text="private or public")
    instance_profile = django_filters.CharFilter(
        method="filter_instance_profile", label="Instance profile", max_length=2048,
        help_text="its name or ARN; \"none\" for instances without one",
    )
    launched_after = django_filters.DateFilter(field_name="launch_time", lookup_expr="date__gte", label="Launched from",
                                               widget=forms.DateInput(attrs={"type": "date"}))
    launched_before = django_filters.DateFilter(field_name="launch_time", lookup_expr="date__lte", label="Launched until",
                                                widget=forms.DateInput(attrs={"type": "date"}))
    tag = django_filters.CharFilter(
        method="filter_tag", label="Tag", max_length=400,
        widget=forms.TextInput(attrs={"placeholder": "Key=Value, Key or !Key"}),
        help_text="Key=Value: the tag has that value; Key: the tag is there; !Key: it is not",
    )
    # The owner tag chosen in settings (IMDSWEB_OWNER_TAG): "posture by team" links here.
    team = django_filters.CharFilter(method="filter_team", label="Team", max_length=256)
    # A selection by instance ids (the confirmation page's links for an ids selection).
    ids = django_filters.CharFilter(method="filter_ids", label="Instance ids", max_length=12000,
                                    widget=forms.HiddenInput)
    # What a change would do to each instance (fleet.changes.decision): the confirmation page's
    # counts link here, and the list counts them by the same rule.
    OUTCOME_CHOICES = [
        (code, label) for code, label in (
            ("queued", "would change"), ("already", "already at the target"), ("busy", "busy in another batch"),
            ("waived", "waived"),
            ("held", "held (any reason)"), ("held_owner", "held: owned by a managed service"),
            ("held_calls", "held: IMDSv1 calls seen"),
            ("held_error", "held: IMDSv1 use could not be read"), ("held_unmeasured", "held: never measured"),
            ("held_stale", "held: not measured recently"), ("unreachable", "terminated or gone"),
            ("stopped", "would change, stopped"), ("containers", "would change, container host with hop limit 1"),
        )
    ]
    outcome = django_filters.ChoiceFilter(choices=OUTCOME_CHOICES, method="filter_outcome",
                                          label="Change outcome", empty_label="any", widget=forms.HiddenInput)
    change = django_filters.CharFilter(method="filter_noop", label="Change", max_length=200, widget=forms.HiddenInput)
    drift_since = django_filters.DateFilter(
        method="filter_drift_since", label="Drift since", widget=forms.DateInput(attrs={"type": "date"}),
        help_text="New IMDSv1 launches and instances back to IMDSv1 allowed since this day",
    )
    # Where instances came from (AWS's own tags), for the links of a source's page.
    launch_template = django_filters.CharFilter(field_name="launch_template_id", label="Launch template", max_length=32)
    launch_template_version = django_filters.CharFilter(label="Template version", max_length=16)
    autoscaling_group = django_filters.CharFilter(label="Auto Scaling group", max_length=255)
    # The instances a waiver covers now (Instance.waiver), for the waiver's page.
    waiver = django_filters.NumberFilter(field_name="waiver_id", label="Waiver #", widget=forms.HiddenInput)

    class Meta:
        model = Instance
        fields = []
        form = InstanceFilterForm

    def __init__(self, data=None, *args, **kwargs):
        # django-filter's documented way to have a default: gone=present unless asked otherwise.
        # Always bound, so the default is both applied and shown in the form.
        if isinstance(data, QueryDict):
            data = data.copy()
        else:
            data, given = QueryDict(mutable=True), data or {}
            data.update(given)
        if not data.get("gone"):
            data["gone"] = "present"
        super().__init__(data, *args, **kwargs)

    def filter_q(self, queryset, name, value):
        value = value.strip()
        return queryset.filter(Q(name__icontains=value) | Q(instance_id__istartswith=value)) if value else queryset

    def filter_ou(self, queryset, name, value):
        return within_ou(queryset, value, prefix="account__")

    def filter_v1_usage(self, queryset, name, value):
        return queryset.filter(V1_USAGE[value])

    def filter_risk(self, queryset, name, value):
        return queryset.filter(RISKS[value])

    def filter_posture(self, queryset, name, value):
        return queryset.filter(posture.SCOPES[value])

    def filter_ids(self, queryset, name, value):
        return queryset.filter(instance_id__in=value)

    def filter_noop(self, queryset, name, value):
        return queryset  # read by filter_outcome

    def filter_outcome(self, queryset, name, value):
        from .changes import REQUIRE_IMDSV2, decide, outcome_group

        decided = decide(queryset, self.form.cleaned_data.get("change") or REQUIRE_IMDSV2)
        return queryset.filter(pk__in=decided.filter(outcome_group(value)).values("pk"))

    def filter_drift_since(self, queryset, name, value):
        # The few instances with drift since that day (the detected_at index), not a probe per listed row.
        since = timezone.make_aware(datetime.combine(value, time.min))
        return queryset.filter(pk__in=DriftEvent.objects.filter(detected_at__gte=since).values("instance_id"))

    def filter_ip(self, queryset, name, value):
        return queryset.filter(Q(private_ip=value) | Q(public_ip=value))

    def filter_instance_profile(self, queryset, name, value):
        value = value.strip()
        if value.lower() == "none":
            return queryset.filter(iam_instance_profile_arn__isnull=True)
        if value.startswith("arn:"):
            return queryset.filter(iam_instance_profile_arn=value)
        # An instance profile ARN ends with its path and name: arn:aws:iam::123456789012:instance-profile/path/name
        return queryset.filter(iam_instance_profile_arn__endswith=f"/{value}")

    def filter_tag(self, queryset, name, value):
        return filter_by_tag(queryset, value)

    def filter_team(self, queryset, name, value):
        from django.conf import settings

        return filter_by_tag(queryset, f"{settings.IMDSWEB_OWNER_TAG}={value}")

    def filter_gone(self, queryset, name, value):
        if value == "present":
            return queryset.filter(gone_at__isnull=True)
        if value == "gone":
            return queryset.filter(gone_at__isnull=False)
        return queryset

    # Shown under "More filters" on the list page (the context of an instance, not its posture).
    CONTEXT_FILTERS = ("hop_limit_min", "instance_type", "platform", "vpc", "subnet", "ip", "instance_profile", "launched_after",
                       "launched_before", "tag", "team", "launch_template", "launch_template_version",
                       "autoscaling_group", "drift_since")

    # Filters the posture summary rows are keyed by (it counts present instances).
    SUMMARY_KEYS = {"account", "ou", "region", "gone"}

    def summary_count(self):
        """This filter's count from the posture summary (account, region and what
        fleet.posture.summary_counter knows), else None."""
        if not self.is_valid():
            return None
        data = self.form.cleaned_data
        if data.get("gone") != "present":
            return None
        others = {
            name: value for name, value in data.items() if value not in (None, "", [], {}) and name not in self.SUMMARY_KEYS
        }
        counter = posture.summary_counter(others)
        team, _ = teams.team_of_filters(others)
        if counter is None and team is False:
            return None
        account = data.get("account")
        account_pks = [account.pk] if account else None
        if data.get("ou"):
            in_ou = within_ou(Account.objects.all(), data["ou"])
            account_pks = list((in_ou.filter(pk=account.pk) if account else in_ou).values_list("pk", flat=True))
            if not account_pks:
                return 0
        regions = [data["region"]] if data.get("region") else None
        if counter is None:  # a team's figure (the overview's posture by team)
            return teams.present_count(others, account_pks=account_pks, regions=regions)
        return posture.present_count(account_pks=account_pks, regions=regions, counter=counter)

    @property
    def active_querystring(self):
        """The filter as a query string, without pagination or sorting (for CSV and bulk links)."""
        data = QueryDict(mutable=True)
        for key in self.filters:
            values = [value for value in self.data.getlist(key) if value]
            if values:
                data.setlist(key, values)
        return data.urlencode()


class ChangeItemFilterSet(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=ItemState.choices, empty_label="any state")
    q = django_filters.CharFilter(method="filter_q", label="Instance", max_length=200)
    breakage = django_filters.BooleanFilter(
        field_name="breakage_suspected", label="Likely breakage",
        widget=forms.Select(choices=[("", "any"), ("true", "yes"), ("false", "no")]),
    )
    awaiting_start = django_filters.BooleanFilter(
        method="filter_awaiting_start", label="Waiting for start",
        widget=forms.Select(choices=[("", "any"), ("true", "yes"), ("false", "no")]),
    )
    # Why an item was held or skipped (the batch page's held-reason counts link here).
    outcome = django_filters.ChoiceFilter(choices=Outcome.choices, method="filter_outcome", label="Outcome",
                                          empty_label="any", widget=forms.HiddenInput)

    class Meta:
        model = ChangeItem
        fields = []
        form = FilterForm

    def filter_q(self, queryset, name, value):
        value = value.strip()
        return queryset.filter(instance__instance_id__istartswith=value) if value else queryset

    def filter_outcome(self, queryset, name, value):
        # Items held before outcomes were recorded carry none: the page counts them as IMDSv1 calls.
        if value == Outcome.HELD_CALLS:
            return queryset.filter(Q(outcome=value) | Q(state=ItemState.HELD) & ~Q(outcome__in=Outcome.values))
        return queryset.filter(outcome=value)

    def filter_awaiting_start(self, queryset, name, value):
        """Pending items on stopped instances (AWS applies them at the next start), or not those."""
        awaiting = Q(state=ItemState.PENDING, awaiting_start=True)
        return queryset.filter(awaiting) if value else queryset.exclude(awaiting)


class ChangeBatchFilterSet(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=ChangeKind.choices, empty_label="any kind")
    dry_run = django_filters.BooleanFilter(
        label="Dry run", widget=forms.Select(choices=[("", "any"), ("true", "dry runs only"), ("false", "real changes only")]),
    )

    class Meta:
        model = ChangeBatch
        fields = []
        form = FilterForm


# ---- drift ("new since …")


def _days_ago(days):
    return (timezone.now() - timedelta(days=days)).date()


class DriftEventFilterSet(django_filters.FilterSet):
    since = django_filters.DateFilter(
        field_name="detected_at", lookup_expr="date__gte", label="New since",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    kind = django_filters.ChoiceFilter(choices=DriftKind.choices, empty_label="any drift")
    account = django_filters.ModelChoiceFilter(
        queryset=Account.objects.all(), to_field_name="account_id", empty_label="any account"
    )
    region = django_filters.ChoiceFilter(choices=region_choices, empty_label="any region")
    still = django_filters.BooleanFilter(
        method="filter_still", label="Still allowing IMDSv1",
        widget=forms.Select(choices=[("", "any"), ("true", "yes"), ("false", "no (fixed since)")]),
    )

    class Meta:
        model = DriftEvent
        fields = []
        form = FilterForm

    def __init__(self, data=None, *args, **kwargs):
        # A week back unless asked otherwise, shown in the form (as InstanceFilterSet does "gone").
        if isinstance(data, QueryDict):
            data = data.copy()
        else:
            data, given = QueryDict(mutable=True), data or {}
            data.update(given)
        if not data.get("since"):
            data["since"] = _days_ago(7).isoformat()
        super().__init__(data, *args, **kwargs)

    def filter_still(self, queryset, name, value):
        allowing = Q(instance__gone_at__isnull=True) & ~Q(instance__http_tokens=HttpTokens.REQUIRED) & ~Q(
            instance__http_endpoint=Toggle.DISABLED)
        return queryset.filter(allowing) if value else queryset.exclude(allowing)


class LaunchSourceFilterSet(django_filters.FilterSet):
    """The Sources page: launch templates, Auto Scaling groups and launch configurations."""

    OWNER_CHOICES = [("none", "no managed owner"), *ManagedOwner.choices]
    GONE_CHOICES = InstanceFilterSet.GONE_CHOICES

    q = django_filters.CharFilter(
        method="filter_q", label="Search", max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "name or lt- id", "type": "search"}),
    )
    account = django_filters.ModelChoiceFilter(
        queryset=Account.objects.all(), to_field_name="account_id", empty_label="any account"
    )
    ou = django_filters.ChoiceFilter(choices=ou_choices, method="filter_ou", label="OU", empty_label="any OU")
    region = django_filters.ChoiceFilter(choices=region_choices, empty_label="any region")
    kind = django_filters.ChoiceFilter(choices=SourceKind.choices, empty_label="any kind")
    verdict = django_filters.ChoiceFilter(choices=LaunchVerdict.choices, label="Next launch", empty_label="any")
    owner = django_filters.ChoiceFilter(choices=OWNER_CHOICES, method="filter_owner", empty_label="any owner")
    # The SSRF risk of instances that allow IMDSv1 (fleet.models.inventory.RISKS), highest first.
    risk = django_filters.ChoiceFilter(
        choices=Risk.choices, method="filter_risk", label="IMDSv1 risk", empty_label="any"
    )
    gone = django_filters.ChoiceFilter(choices=GONE_CHOICES, method="filter_gone", label="Present", empty_label=None)

    class Meta:
        model = LaunchSource
        fields = []
        form = FilterForm

    def __init__(self, data=None, *args, **kwargs):
        data = data.copy() if isinstance(data, QueryDict) else QueryDict(mutable=True)
        if not data.get("gone"):
            data["gone"] = "present"
        super().__init__(data, *args, **kwargs)

    def filter_q(self, queryset, name, value):
        value = value.strip()
        return queryset.filter(Q(name__icontains=value) | Q(source_id__istartswith=value)) if value else queryset

    def filter_owner(self, queryset, name, value):
        return queryset.filter(owner="" if value == "none" else value)

    filter_gone = InstanceFilterSet.filter_gone
    filter_ou = InstanceFilterSet.filter_ou
    active_querystring = InstanceFilterSet.active_querystring


class WaiverFilterSet(django_filters.FilterSet):
    """The Waivers page: active (the default), expired, revoked or all; by scope; by owner or reason."""

    STATUS_CHOICES = [("active", "active"), ("expired", "expired"), ("revoked", "revoked"), ("all", "all")]

    status = django_filters.ChoiceFilter(choices=STATUS_CHOICES, method="filter_status", empty_label=None)
    scope = django_filters.ChoiceFilter(choices=WaiverScope.choices, empty_label="any scope")
    q = django_filters.CharFilter(
        method="filter_q", label="Search", max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "owner, reason or tag", "type": "search"}),
    )

    class Meta:
        model = Waiver
        fields = []
        form = FilterForm

    def __init__(self, data=None, *args, **kwargs):
        data = data.copy() if isinstance(data, QueryDict) else QueryDict(mutable=True)
        if not data.get("status"):
            data["status"] = "active"
        super().__init__(data, *args, **kwargs)

    def filter_status(self, queryset, name, value):
        if value == "active":
            return queryset.active()
        if value == "expired":
            return queryset.expired()
        if value == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset

    def filter_q(self, queryset, name, value):
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(Q(owner__icontains=value) | Q(reason__icontains=value) | Q(tag_key__icontains=value)
                               | Q(tag_value__icontains=value) | Q(instance__instance_id__istartswith=value))
