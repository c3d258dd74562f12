"""Admin site: accounts are editable; everything that comes from AWS or records a change is read-only."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.db import transaction
from django.utils.html import format_html, format_html_join

from .aws.session import ec2_regions as aws_regions
from .models import (
    Account,
    AccountHealth,
    ApiToken,
    BatchEvent,
    ChangeBatch,
    ChangeItem,
    Delivery,
    DiscoveryRun,
    DriftEvent,
    Instance,
    MetadataDefaults,
    NotificationEvent,
    NotificationRule,
    OidcIdentity,
    OrganizationSource,
    SyncRun,
    Waiver,
    WaiverEvent,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by syncs and the change engine: visible, never edited or deleted by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AccountAdminForm(forms.ModelForm):
    """The external id is a shared secret: it can be set or cleared, never shown back.

    An empty box keeps the stored value; it is put back before the model's validation, so
    ``Account.clean`` (the rules ``fleet_account add`` applies too) judges what will be saved.
    """

    clear_external_id = forms.BooleanField(required=False, label="Clear the external id")
    # Real region names to pick from, not a JSON text box.
    regions = forms.MultipleChoiceField(
        choices=(), widget=FilteredSelectMultiple("regions", is_stacked=False),
        help_text="The regions imdsweb syncs and changes in this account.",
    )

    class Meta:
        model = Account
        fields = "__all__"  # noqa: DJ007 - the admin edits every field of an account
        widgets = {"external_id": forms.PasswordInput(render_value=False)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["external_id"].required = False
        self.fields["external_id"].help_text = "Leave empty to keep the current value."
        # botocore's regions, plus any this account already has that botocore does not know yet.
        known = set(aws_regions()) | set(self.instance.regions or [])
        self.fields["regions"].choices = [(region, region) for region in sorted(known)]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("clear_external_id"):
            cleaned["external_id"] = ""
        elif cleaned.get("external_id") == "" and self.instance.pk:
            cleaned["external_id"] = Account.objects.get(pk=self.instance.pk).external_id
        return cleaned


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    form = AccountAdminForm
    list_display = ("account_id", "name", "enabled", "ou_path", "org_status", "region_list", "role_arn")
    list_filter = ("enabled", "org_status", "source")
    search_fields = ("account_id", "name", "role_arn", "ou_path")
    readonly_fields = ("source", "ou_path", "ou_id", "org_status", "discovered_at")
    exclude = ()

    @admin.display(description="regions")
    def region_list(self, obj):
        return ", ".join(obj.regions)


@admin.register(Instance)
class InstanceAdmin(ReadOnlyAdmin):
    list_display = (
        "instance_id", "name", "account", "region", "instance_state", "http_tokens", "hop_limit",
        "http_endpoint", "instance_metadata_tags", "metadata_state", "last_seen", "gone_at",
    )
    list_filter = ("http_tokens", "http_endpoint", "metadata_state", "instance_state", "region", "account")
    search_fields = ("instance_id", "name")
    list_select_related = ("account",)
    show_full_result_count = False


@admin.register(MetadataDefaults)
class MetadataDefaultsAdmin(ReadOnlyAdmin):
    list_display = (
        "account", "region", "status", "http_tokens", "hop_limit", "http_endpoint",
        "instance_metadata_tags", "managed_by", "synced_at",
    )
    list_filter = ("status", "managed_by", "http_tokens", "region")
    search_fields = ("account__account_id", "account__name")
    list_select_related = ("account",)


@admin.register(SyncRun)
class SyncRunAdmin(ReadOnlyAdmin):
    list_display = ("account", "region", "started_at", "finished_at", "status", "seen", "new", "changed", "gone")
    list_filter = ("status", "region", "account")
    search_fields = ("account__account_id", "error")
    list_select_related = ("account",)



@admin.register(ChangeBatch)
class ChangeBatchAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "created_by", "kind", "desired", "dry_run", "comment")
    list_filter = ("kind", "dry_run", "created_at")
    search_fields = ("comment", "selection")
    list_select_related = ("created_by",)
    # Thousands of items make an inline useless; the item list filters by batch instead.


@admin.register(ChangeItem)
class ChangeItemAdmin(ReadOnlyAdmin):
    list_display = ("id", "batch", "instance", "account", "region", "state", "attempts", "error_code", "updated_at")
    list_filter = ("state", "error_code", "region", "batch")
    search_fields = ("instance__instance_id", "error_message", "request_id")
    list_select_related = ("account", "batch", "instance")


@admin.register(BatchEvent)
class BatchEventAdmin(ReadOnlyAdmin):
    """The rollout and approval trail: who approved or refused, when waves were released."""

    list_display = ("at", "batch", "kind", "wave", "user", "text")
    list_filter = ("kind", "at")
    search_fields = ("text", "user__username")
    list_select_related = ("batch", "user")


# ---- notification rules (edited here), what they sent and the drift they report (read-only)


@admin.register(NotificationRule)
class NotificationRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "event", "enabled", "interval_minutes", "last_sent_at")
    list_filter = ("event", "enabled")
    search_fields = ("name", "email_to")
    filter_horizontal = ("accounts",)
    readonly_fields = ("last_sent_at",)


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "rule", "subject", "event_count", "status", "attempts", "sent_at")
    list_filter = ("status", "rule")
    search_fields = ("subject", "body", "error")
    list_select_related = ("rule",)


@admin.register(NotificationEvent)
class NotificationEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "text")
    list_filter = ("kind",)
    search_fields = ("text", "key")


@admin.register(DriftEvent)
class DriftEventAdmin(ReadOnlyAdmin):
    list_display = ("detected_at", "kind", "instance", "account", "region")
    list_filter = ("kind", "region", "account")
    search_fields = ("instance__instance_id",)
    list_select_related = ("instance", "account")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """An admin sees and revokes tokens; only their owner creates them (and alone sees the key)."""

    list_display = ("name", "user", "key_start", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username", "key_start")
    list_select_related = ("user",)
    readonly_fields = ("user", "name", "key_start", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        for token in queryset.active():
            token.revoke()


@admin.register(OidcIdentity)
class OidcIdentityAdmin(ReadOnlyAdmin):
    """Who signed in through single sign-on, and the groups their last sign-in brought."""

    list_display = ("user", "subject", "issuer", "groups", "first_sign_in", "last_sign_in")
    search_fields = ("user__username", "subject")
    list_select_related = ("user",)


def _secret_widget(form, name):
    form.base_fields[name].widget = forms.PasswordInput(render_value=False)
    form.base_fields[name].required = False
    form.base_fields[name].help_text = "Leave empty to keep the current value."


@admin.register(OrganizationSource)
class OrganizationSourceAdmin(admin.ModelAdmin):
    """Where accounts are discovered from; "Discover now" queues the same discovery as the
    ``fleet_account discover`` command and the daily beat task."""

    list_display = ("name", "enabled", "management_account_id", "role_template", "include_management", "last_run")
    readonly_fields = ("management_account_id",)
    actions = ["discover_now"]

    @admin.display(description="last discovery")
    def last_run(self, obj):
        run = obj.runs.first()
        if run is None:
            return "never"
        return f"{run.started_at:%Y-%m-%d %H:%M} {run.status}: {len(run.changes)} change(s)"

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        for name in ("management_external_id", "external_id"):
            _secret_widget(form, name)
        return form

    def save_model(self, request, obj, form, change):
        if change:
            stored = OrganizationSource.objects.get(pk=obj.pk)
            for name in ("management_external_id", "external_id"):
                if not form.cleaned_data.get(name):
                    setattr(obj, name, getattr(stored, name))
        super().save_model(request, obj, form, change)

    @admin.action(description="Discover now (list the organization's accounts, OUs and regions)")
    def discover_now(self, request, queryset):
        from .tasks import discover_source

        pks = list(queryset.values_list("pk", flat=True))
        transaction.on_commit(lambda: [discover_source.delay(pk) for pk in pks])
        self.message_user(
            request, f"Discovery queued for {len(pks)} source(s); its changes appear under Discovery runs.",
            messages.SUCCESS,
        )


@admin.register(DiscoveryRun)
class DiscoveryRunAdmin(ReadOnlyAdmin):
    list_display = ("source", "started_at", "finished_at", "status", "accounts_seen", "change_summary", "error")
    list_filter = ("status", "source")
    readonly_fields = ("change_table",)
    exclude = ("changes",)

    @admin.display(description="changes")
    def change_summary(self, obj):
        counts = {}
        for item in obj.changes:
            counts[item["change"]] = counts.get(item["change"], 0) + 1
        return ", ".join(f"{n} {change}" for change, n in sorted(counts.items())) or "none"

    @admin.display(description="what changed")
    def change_table(self, obj):
        if not obj.changes:
            return "nothing"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((c["account_id"], c["name"], c["change"], c["detail"]) for c in obj.changes),
        )
        return format_html("<table><tr><th>account</th><th>name</th><th>change</th><th>detail</th></tr>{}</table>", rows)


@admin.register(AccountHealth)
class AccountHealthAdmin(ReadOnlyAdmin):
    list_display = ("account", "healthy", "readable", "checked_at", "region", "first_error")
    list_filter = ("healthy", "readable")
    search_fields = ("account__account_id", "account__name")
    list_select_related = ("account",)


@admin.register(Waiver)
class WaiverAdmin(ReadOnlyAdmin):
    """Read-only here: the Waivers pages create, extend and revoke, so every change is audited."""

    list_display = ("id", "scope", "owner", "expires_on", "revoked_at", "created_by", "created_at")
    list_filter = ("scope",)
    search_fields = ("owner", "reason", "tag_key", "tag_value")


@admin.register(WaiverEvent)
class WaiverEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "waiver", "action", "user", "comment")
    list_filter = ("action",)
