"""Forms: what a user may ask for, validated before anything reaches the change engine.

Selections arrive as instance ids or as an instance filter query string; option values are
checked here for shape and then by ``changes.clean_*_desired`` for the domain rules.
"""

from django import forms
from django.core.exceptions import ValidationError
from django.http import QueryDict
from django.utils import timezone

from . import changes
from .changes import rollout
from .choices import DefaultsHttpTokens, DefaultsToggle, HttpTokens, Toggle, WaiverScope, WaveMode
from .filters import InstanceFilterSet
from .models import Account, Instance, LaunchSource, MetadataDefaults, Waiver
from .models.inventory import DEFAULTS_FIELDS, INSTANCE_OPTION_FIELDS
from .models.waivers import parse_tag_selector
from .validators import account_id_validator, instance_id_validator, region_validator

# Under DATA_UPLOAD_MAX_NUMBER_FIELDS (1000), past which Django answers 400 on its own.
MAX_SELECTED_IDS = 500
UNCHANGED = [("", "(unchanged)")]


class MultipleValueField(forms.Field):
    """A list of strings from repeated parameters (``?ids=a&ids=b``), each checked by ``validator``."""

    widget = forms.MultipleHiddenInput

    def __init__(self, *, validator, max_values, **kwargs):
        self.item_validator = validator
        self.max_values = max_values
        super().__init__(**kwargs)

    def to_python(self, value):
        if not value:
            return []
        if isinstance(value, str):
            value = [value]
        values = [item.strip() for item in value if item and item.strip()]
        if len(values) > self.max_values:
            raise ValidationError(f"At most {self.max_values:,} values at once; use a filter instead.")
        bad = []
        for item in values:
            try:
                self.item_validator(item)
            except ValidationError:
                bad.append(item)
        if bad:
            shown = ", ".join(item[:40] for item in bad[:5])
            raise ValidationError(f"{len(bad)} invalid value(s): {shown}")
        return list(dict.fromkeys(values))


def option_fields(hidden=False):
    """The five instance metadata options, blank meaning "leave as is"."""
    select = forms.HiddenInput if hidden else forms.Select
    return {
        "http_tokens": forms.ChoiceField(
            label="HttpTokens", required=False, choices=UNCHANGED + HttpTokens.choices, widget=select
        ),
        "hop_limit": forms.IntegerField(
            label="Hop limit", required=False, min_value=1, max_value=64,
            widget=forms.HiddenInput if hidden else forms.NumberInput,
        ),
        "http_endpoint": forms.ChoiceField(
            label="HttpEndpoint", required=False, choices=UNCHANGED + Toggle.choices, widget=select
        ),
        "http_protocol_ipv6": forms.ChoiceField(
            label="HttpProtocolIpv6", required=False, choices=UNCHANGED + Toggle.choices, widget=select
        ),
        "instance_metadata_tags": forms.ChoiceField(
            label="InstanceMetadataTags", required=False, choices=UNCHANGED + Toggle.choices, widget=select
        ),
    }


class InstanceChangeForm(forms.Form):
    """The confirmation step: a selection, the options to set, and how to run the change."""

    ids = MultipleValueField(validator=instance_id_validator, max_values=MAX_SELECTED_IDS, required=False)
    filter = forms.CharField(required=False, max_length=4000, widget=forms.HiddenInput)
    comment = forms.CharField(
        required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why: ends up in the audit trail.",
    )
    dry_run = forms.BooleanField(
        required=False, label="Dry run first", help_text="Preflight every account/region with DryRun; change nothing."
    )
    override_usage = forms.BooleanField(
        required=False, label="Apply even where IMDSv1 calls were seen",
        help_text="Otherwise such instances are held back.",
    )
    override_owner = forms.BooleanField(
        required=False, label="Change instances a managed service owns anyway",
        help_text="Instances whose launch template or Auto Scaling group EKS, Elastic Beanstalk, EMR or "
                  "CloudFormation owns are otherwise held back: a change outside the owner breaks or drifts it.",
    )
    override_waivers = forms.BooleanField(
        required=False, label="Apply to waived instances too (this batch only)",
        help_text="Otherwise instances under an active waiver are skipped, the waiver as the reason.",
    )
    # Staged rollout, schedule and window (fleet.changes.rollout).
    wave_mode = forms.ChoiceField(
        required=False, choices=WaveMode.choices, initial=WaveMode.NONE, label="Waves",
        help_text="Run a canary first; the rest follows after a clean soak.",
    )
    canary = forms.CharField(
        required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 2}), label="Canary",
        help_text="N instances, a percentage (10%), a tag (Env=sandbox), or accounts/OUs, one wave per line "
                  "(sandbox / staging / prod).",
    )
    rest_waves = forms.IntegerField(required=False, min_value=1, max_value=20, initial=1, label="Waves for the rest")
    soak_minutes = forms.FloatField(
        required=False, min_value=0, max_value=7 * 24 * 60, initial=60, label="Soak between waves (minutes)",
        help_text="imdsweb watches CloudWatch MetadataNoTokenRejected of the wave's instances meanwhile: any "
                  "refused IMDSv1 call pauses the batch.",
    )
    start_at = forms.DateTimeField(
        required=False, label="Start at", widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Leave empty to start now (server time zone).",
    )
    window_days = forms.MultipleChoiceField(
        required=False, choices=list(enumerate(rollout.DAYS)), widget=forms.CheckboxSelectMultiple,
        label="Run only in a window on",
    )
    window_start = forms.TimeField(required=False, label="Window from", widget=forms.TimeInput(attrs={"type": "time"}))
    window_end = forms.TimeField(required=False, label="Window until", widget=forms.TimeInput(attrs={"type": "time"}))
    window_tz = forms.CharField(required=False, max_length=64, initial="UTC", label="Window time zone")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields.update(option_fields(hidden=True))
        self.instances = Instance.objects.none()
        self.desired = {}
        self.selection = ""
        self.rollout = rollout.RolloutOptions()

    def clean_rest_waves(self):
        return self.cleaned_data.get("rest_waves") or 1

    def _clean_rollout(self, data):
        mode = data.get("wave_mode") or WaveMode.NONE
        if mode != WaveMode.NONE and not (data.get("canary") or "").strip():
            self.add_error("canary", "Say which instances make the canary.")
        elif mode != WaveMode.NONE:
            try:
                rollout.check_canary(mode, data["canary"])
            except changes.ChangeRefused as exc:
                self.add_error("canary", str(exc))
        if data.get("start_at") and data["start_at"] <= timezone.now():
            self.add_error("start_at", "The scheduled start is in the past.")
        window = {}
        if any(name in self.errors for name in ("window_days", "window_start", "window_end", "window_tz")):
            pass  # the field's own error is shown
        elif data.get("window_days") or data.get("window_start") or data.get("window_end"):
            if not data.get("window_start") or not data.get("window_end"):
                self.add_error("window_start", "A window needs a start and an end time.")
            else:
                try:
                    window = rollout.parse_window(data.get("window_days"), data["window_start"], data["window_end"],
                                                  (data.get("window_tz") or "UTC").strip())
                except ValueError as exc:
                    self.add_error("window_days", str(exc))
        soak = data.get("soak_minutes")
        return rollout.RolloutOptions(
            mode=mode, canary=data.get("canary") or "", rest_waves=data.get("rest_waves") or 1,
            soak_minutes=60 if soak is None else soak, start_at=data.get("start_at"), window=window,
        )

    def clean(self):
        data = super().clean()
        # A bad comment or flag must not hide the plan: the page then shows that field's error.
        if any(name in self.errors for name in ("ids", "filter", *INSTANCE_OPTION_FIELDS)):
            return data
        self.desired = self._clean_desired(data)
        self.instances, self.selection = self._clean_targets(data)
        self.rollout = self._clean_rollout(data)
        return data

    def _clean_desired(self, data):
        desired = {name: data[name] for name in INSTANCE_OPTION_FIELDS if data.get(name) not in ("", None)}
        if not desired:
            raise ValidationError("Choose at least one metadata option to change.")
        return changes.clean_instance_desired(desired)

    def _clean_targets(self, data):
        ids, query = data["ids"], data["filter"]
        if bool(ids) == bool(query):
            raise ValidationError("Select some instances, or a filter, first.")
        present = Instance.objects.present().select_related("account")
        if ids:
            found = set(present.filter(instance_id__in=ids).values_list("instance_id", flat=True))
            missing = [instance_id for instance_id in ids if instance_id not in found]
            if missing:
                shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
                raise ValidationError(f"{len(missing)} selected instance(s) are unknown or gone: {shown}")
            return present.filter(instance_id__in=ids), f"instances: {', '.join(ids[:20])}" + (
                f" … ({len(ids)} in all)" if len(ids) > 20 else ""
            )
        filterset = InstanceFilterSet(QueryDict(query), queryset=present)
        if not filterset.is_valid():
            errors = "; ".join(f"{name}: {' '.join(msgs)}" for name, msgs in filterset.errors.items())
            raise ValidationError(f"The filter is not valid ({errors}).")
        return filterset.qs.filter(gone_at__isnull=True), f"filter: {filterset.active_querystring}"


class InstanceOptionsForm(forms.Form):
    """The five options of one instance, prefilled; only what differs becomes the change."""

    def __init__(self, *args, instance, **kwargs):
        kwargs["initial"] = instance.options | kwargs.get("initial", {})
        super().__init__(*args, **kwargs)
        self.instance = instance
        self.fields.update(option_fields())
        for field in self.fields.values():
            if isinstance(field, forms.ChoiceField):
                field.choices = field.choices[1:]
            field.required = True

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        self.changed_options = {
            name: data[name] for name in INSTANCE_OPTION_FIELDS if data[name] != getattr(self.instance, name)
        }
        if not self.changed_options:
            raise ValidationError("Nothing to change: every option already has that value.")
        return data


def parse_target(value):
    """``"123456789012/us-east-1"`` -> (account_id, region); raises ValidationError."""
    account_id, _, region = value.partition("/")
    account_id_validator(account_id)
    region_validator(region)
    return account_id, region


def target_validator(value):
    parse_target(value)


class DefaultsChangeForm(forms.Form):
    """Account-level defaults for one or more account/regions. ``no-preference`` / -1 clear a setting."""

    targets = MultipleValueField(validator=target_validator, max_values=2000)
    http_tokens = forms.ChoiceField(
        label="HttpTokens", required=False, choices=UNCHANGED + DefaultsHttpTokens.choices
    )
    hop_limit = forms.IntegerField(
        label="Hop limit", required=False, min_value=-1, max_value=64, help_text="1–64, or -1 for no preference."
    )
    http_endpoint = forms.ChoiceField(
        label="HttpEndpoint", required=False, choices=UNCHANGED + DefaultsToggle.choices
    )
    instance_metadata_tags = forms.ChoiceField(
        label="InstanceMetadataTags", required=False, choices=UNCHANGED + DefaultsToggle.choices
    )
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    dry_run = forms.BooleanField(required=False, label="Dry run first")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resolved = []
        self.desired = {}

    def clean_hop_limit(self):
        value = self.cleaned_data["hop_limit"]
        if value == 0:
            raise ValidationError("The hop limit is 1–64, or -1 for no preference.")
        return value

    def clean_targets(self):
        """-> [(Account, region, MetadataDefaults or None)], refusing policy-managed ones."""
        pairs = [parse_target(value) for value in self.cleaned_data["targets"]]
        accounts = Account.objects.in_bulk({account_id for account_id, _ in pairs}, field_name="account_id")
        rows = {
            (row.account_id, row.region): row
            for row in MetadataDefaults.objects.filter(account__in=accounts.values())
        }
        resolved, unknown, managed = [], [], []
        for account_id, region in pairs:
            account = accounts.get(account_id)
            row = rows.get((account.pk, region)) if account else None
            if account is None or (region not in account.regions and row is None):
                unknown.append(f"{account_id}/{region}")
            elif row is not None and row.policy_managed:
                managed.append(f"{account_id}/{region}: {row.managed_exception_message or 'declarative policy'}")
            else:
                resolved.append((account, region, row))
        if unknown:
            raise ValidationError(f"Unknown account/region: {', '.join(unknown[:5])}")
        if managed:
            raise ValidationError(f"Managed by a declarative policy, cannot be changed here — {'; '.join(managed[:5])}")
        self.resolved = resolved
        return self.cleaned_data["targets"]

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        desired = {name: data[name] for name in DEFAULTS_FIELDS if data.get(name) not in ("", None)}
        if not desired:
            raise ValidationError("Choose at least one default to change.")
        self.desired = changes.clean_defaults_desired(desired)
        return data


class RollbackForm(forms.Form):
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))


def source_pk_validator(value):
    if not value.isdigit():
        raise ValidationError("not a source id")


class SourceFixForm(forms.Form):
    """"Require IMDSv2 at the source": launch templates chosen by id (``?ids=<pk>``) or by a
    Sources filter query string (only the launch templates it matches)."""

    ids = MultipleValueField(validator=source_pk_validator, max_values=MAX_SELECTED_IDS, required=False)
    filter = forms.CharField(required=False, max_length=4000, widget=forms.HiddenInput)
    hop_limit = forms.IntegerField(
        label="Also set the hop limit", required=False, min_value=1, max_value=64,
        help_text="Leave empty to keep each template's own hop limit.",
    )
    update_pinned = forms.BooleanField(
        required=False, label="Also point Auto Scaling groups pinned to a version number at the new version"
    )
    override_owner = forms.BooleanField(
        required=False, label="Change templates owned by a managed service (EKS, Beanstalk, EMR, CloudFormation) anyway"
    )
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    dry_run = forms.BooleanField(required=False, label="Dry run first")

    def clean_ids(self):
        return [int(value) for value in self.cleaned_data["ids"]]

    def clean(self):
        from .filters import LaunchSourceFilterSet
        from .models import LaunchSource

        data = super().clean()
        if self.errors:
            return data
        if data.get("ids"):
            queryset = LaunchSource.objects.filter(pk__in=data["ids"])
            self.selection = f"{len(data['ids'])} selected source(s)"
        elif data.get("filter"):
            filterset = LaunchSourceFilterSet(QueryDict(data["filter"]), queryset=LaunchSource.objects.all())
            if not filterset.is_valid():
                raise ValidationError("The Sources filter is not valid.")
            queryset = filterset.qs.filter(kind="launch_template")
            self.selection = f"launch templates matching {data['filter']}"
        else:
            raise ValidationError("Choose the launch templates to change.")
        self.sources = self._with_group_templates(
            list(queryset.select_related("account").order_by("account__name", "region", "name")[:MAX_SELECTED_IDS])
        )
        if not self.sources:
            raise ValidationError("No launch template matches.")
        return data


    @staticmethod
    def _with_group_templates(selected):
        """An Auto Scaling group chosen here stands for the launch templates it launches from."""
        from .source_kinds import fix_targets

        return fix_targets(selected)


class EnforcementForm(forms.Form):
    """Account-level IMDSv2 enforcement (HttpTokensEnforced) for one or more account/regions."""

    targets = MultipleValueField(validator=target_validator, max_values=2000)
    enable = forms.TypedChoiceField(
        label="HttpTokensEnforced", choices=[("1", "enabled"), ("0", "disabled")], coerce=lambda v: v == "1",
        initial="1", required=False, empty_value=True,  # enabling is what the page is for
    )
    override_held = forms.BooleanField(
        required=False, label="Enforce even where launch sources would stop launching (or were never read)"
    )
    comment = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    dry_run = forms.BooleanField(required=False, label="Dry run first")

    def clean_targets(self):
        pairs = [parse_target(value) for value in self.cleaned_data["targets"]]
        accounts = Account.objects.in_bulk({account_id for account_id, _ in pairs}, field_name="account_id")
        unknown = [f"{a}/{r}" for a, r in pairs if a not in accounts or r not in accounts[a].regions]
        if unknown:
            raise ValidationError(f"Unknown account/region: {', '.join(unknown[:5])}")
        self.resolved = [(accounts[a], r) for a, r in pairs]
        return self.cleaned_data["targets"]


class WaiverForm(forms.Form):
    """A new waiver: its scope (one of four), owner, reason and expiry date. Each scope's target
    must exist; the rules between fields are ``Waiver.clean`` (the admin would apply the same)."""

    scope = forms.ChoiceField(choices=WaiverScope.choices, widget=forms.RadioSelect, initial=WaiverScope.INSTANCE)
    instance_id = forms.CharField(required=False, max_length=19, label="Instance id",
                                  widget=forms.TextInput(attrs={"placeholder": "i-0123456789abcdef0"}))
    tag = forms.CharField(required=False, max_length=400, label="Tag selector",
                          widget=forms.TextInput(attrs={"placeholder": "app=vendor-appliance"}))
    source = forms.IntegerField(required=False, min_value=1, label="Launch source #",
                                help_text="The number in the source's page address (/sources/<number>/).")
    account = forms.CharField(required=False, max_length=12, label="Account id")
    region = forms.CharField(required=False, max_length=32, label="Region",
                             help_text="Blank: every region of the account.")
    owner = forms.CharField(max_length=150, help_text="Who answers for the exemption (a person or a team).")
    reason = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2}),
                             help_text="Why these instances still need IMDSv1.")
    expires_on = forms.DateField(label="Expires on", widget=forms.DateInput(attrs={"type": "date"}),
                                 help_text="Exempts through the end of this day (UTC).")

    SCOPE_FIELD = {WaiverScope.INSTANCE: "instance_id", WaiverScope.TAG: "tag", WaiverScope.SOURCE: "source",
                   WaiverScope.ACCOUNT: "account"}

    def clean(self):
        data = super().clean()
        scope = data.get("scope")
        if not scope:
            return data
        field = self.SCOPE_FIELD[scope]
        if data.get(field) in (None, ""):
            self.add_error(field, f"Required for a waiver of {WaiverScope(scope).label}.")
            return data
        waiver = Waiver(scope=scope, owner=data.get("owner", ""), reason=data.get("reason", ""),
                        expires_on=data.get("expires_on"))
        try:
            self._target(waiver, data)
        except ValidationError as exc:
            self.add_error(field, exc)
            return data
        try:
            waiver.clean()
        except ValidationError as exc:
            for name, errors in exc.message_dict.items():
                self.add_error(name if name in self.fields else None, errors)
        self.waiver = waiver
        return data

    def _target(self, waiver, data):
        scope = waiver.scope
        if scope == WaiverScope.INSTANCE:
            instance_id_validator(data["instance_id"].strip())
            waiver.instance = Instance.objects.present().filter(instance_id=data["instance_id"].strip()).first()
            if waiver.instance is None:
                raise ValidationError(f"No present instance {data['instance_id'].strip()} in the inventory.")
        elif scope == WaiverScope.TAG:
            waiver.tag_key, waiver.tag_value = parse_tag_selector(data["tag"])
        elif scope == WaiverScope.SOURCE:
            waiver.source = LaunchSource.objects.filter(pk=data["source"], gone_at__isnull=True).first()
            if waiver.source is None:
                raise ValidationError(f"No launch source #{data['source']} (see the Sources page).")
        else:
            account_id_validator(data["account"].strip())
            waiver.account = Account.objects.filter(account_id=data["account"].strip()).first()
            if waiver.account is None:
                raise ValidationError(f"No account {data['account'].strip()} is registered.")
            region = (data.get("region") or "").strip()
            if region:
                region_validator(region)
            waiver.region = region


class WaiverExtendForm(forms.Form):
    """A later expiry date (still at most IMDSWEB_WAIVER_MAX_DAYS from today), optionally a new reason."""

    expires_on = forms.DateField(label="New expiry date", widget=forms.DateInput(attrs={"type": "date"}))
    reason = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}),
                             help_text="Blank keeps the current reason.")
    comment = forms.CharField(required=False, max_length=2000, help_text="Why it is extended: in the audit trail.")

    def __init__(self, *args, waiver, **kwargs):
        super().__init__(*args, **kwargs)
        self.waiver = waiver

    def clean_expires_on(self):
        value = self.cleaned_data["expires_on"]
        if value <= self.waiver.expires_on:
            raise ValidationError(f"Extending means a date after the current one ({self.waiver.expires_on:%Y-%m-%d}); "
                                  "to end a waiver sooner, revoke it.")
        candidate = Waiver(scope=self.waiver.scope, expires_on=value)
        try:
            candidate.clean()
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["expires_on"]) from exc
        return value


class WaiverRevokeForm(forms.Form):
    comment = forms.CharField(max_length=2000, label="Why", help_text="In the audit trail.")
