"""django-filter filtersets: the instance list (and its CSV export and bulk selection), change items."""

import django_filters
from django import forms
from django.db.models import Q
from django.http import QueryDict

from . import posture
from .choices import (
    ChangeKind,
    HttpTokens,
    InstanceState,
    ItemState,
    LaunchVerdict,
    ManagedOwner,
    MetadataState,
    SourceKind,
    Toggle,
)
from .models import Account, ChangeBatch, ChangeItem, Instance, LaunchSource


class IntegerFilter(django_filters.NumberFilter):
    # NumberFilter takes decimals; a hop limit of 1.5 must be a form error, not a rounded match.
    field_class = forms.IntegerField


def region_choices():
    # From the accounts' configured regions: a small table, where DISTINCT over instances is a scan.
    regions = {region for regions in Account.objects.values_list("regions", flat=True) for region in regions or []}
    return [(region, region) for region in sorted(regions)]


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
    region = django_filters.ChoiceFilter(choices=region_choices, empty_label="any region")
    http_tokens = django_filters.ChoiceFilter(choices=HttpTokens.choices, label="HttpTokens", empty_label="any")
    http_endpoint = django_filters.ChoiceFilter(choices=Toggle.choices, label="HttpEndpoint", empty_label="any")
    hop_limit = IntegerFilter(label="Hop limit", min_value=1, max_value=64)
    metadata_state = django_filters.ChoiceFilter(choices=MetadataState.choices, label="Options state", empty_label="any")
    instance_state = django_filters.ChoiceFilter(choices=InstanceState.choices, empty_label="any")
    instance_metadata_tags = django_filters.ChoiceFilter(choices=Toggle.choices, label="Tags in IMDS", empty_label="any")
    v1_usage = django_filters.ChoiceFilter(
        choices=V1_CHOICES, method="filter_v1_usage", label="IMDSv1 in use", empty_label="any"
    )
    gone = django_filters.ChoiceFilter(choices=GONE_CHOICES, method="filter_gone", label="Present", empty_label=None)
    # Where instances came from (AWS's own tags), for the links of a source's page.
    launch_template = django_filters.CharFilter(field_name="launch_template_id", label="Launch template", max_length=32)
    launch_template_version = django_filters.CharFilter(label="Template version", max_length=16)
    autoscaling_group = django_filters.CharFilter(label="Auto Scaling group", max_length=255)

    class Meta:
        model = Instance
        fields = []

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

    def filter_v1_usage(self, queryset, name, value):
        return {
            "yes": queryset.filter(v1_calls__gt=0),
            "no": queryset.filter(v1_calls=0),
            "unknown": queryset.filter(v1_calls__isnull=True),
        }[value]

    def filter_gone(self, queryset, name, value):
        if value == "present":
            return queryset.filter(gone_at__isnull=True)
        if value == "gone":
            return queryset.filter(gone_at__isnull=False)
        return queryset

    # Filters the posture summary rows are keyed by (it counts present instances).
    SUMMARY_KEYS = {"account", "region", "gone"}

    def summary_count(self):
        """This filter's count from the posture summary (account, region and at most one other
        filter it counts: fleet.posture.SUMMARY_COUNTS), else None."""
        if not self.is_valid():
            return None
        data = self.form.cleaned_data
        used = {name for name, value in data.items() if value not in (None, "")}
        others = used - self.SUMMARY_KEYS
        if data.get("gone") != "present" or len(others) > 1:
            return None
        counter = None
        if others:
            name = others.pop()
            counter = posture.summary_counter(name, data[name])
            if counter is None:
                return None
        account = data.get("account")
        return posture.present_count(
            account_ids=[account.pk] if account else None, regions=[data["region"]] if data.get("region") else None,
            counter=counter,
        )

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

    class Meta:
        model = ChangeItem
        fields = []

    def filter_q(self, queryset, name, value):
        value = value.strip()
        return queryset.filter(instance__instance_id__istartswith=value) if value else queryset


class ChangeBatchFilterSet(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=ChangeKind.choices, empty_label="any kind")
    dry_run = django_filters.BooleanFilter(label="Dry run")

    class Meta:
        model = ChangeBatch
        fields = []


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
    region = django_filters.ChoiceFilter(choices=region_choices, empty_label="any region")
    kind = django_filters.ChoiceFilter(choices=SourceKind.choices, empty_label="any kind")
    verdict = django_filters.ChoiceFilter(choices=LaunchVerdict.choices, label="Next launch", empty_label="any")
    owner = django_filters.ChoiceFilter(choices=OWNER_CHOICES, method="filter_owner", empty_label="any owner")
    gone = django_filters.ChoiceFilter(choices=GONE_CHOICES, method="filter_gone", label="Present", empty_label=None)

    class Meta:
        model = LaunchSource
        fields = []

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
    active_querystring = InstanceFilterSet.active_querystring
