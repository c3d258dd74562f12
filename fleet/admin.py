"""Admin site: accounts are editable; everything that comes from AWS or records a change is read-only."""

from django.contrib import admin

from .models import Account, ChangeBatch, ChangeItem, Instance, MetadataDefaults, OidcIdentity, SyncRun


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by syncs and the change engine: visible, never edited or deleted by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("account_id", "name", "enabled", "region_list", "role_arn")
    list_filter = ("enabled",)
    search_fields = ("account_id", "name", "role_arn")
    exclude = ()

    @admin.display(description="regions")
    def region_list(self, obj):
        return ", ".join(obj.regions)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        # The external id is a shared secret: it can be set, never shown back.
        from django import forms

        form.base_fields["external_id"].widget = forms.PasswordInput(render_value=False)
        form.base_fields["external_id"].required = False
        form.base_fields["external_id"].help_text = "Leave empty to keep the current value."
        return form

    def save_model(self, request, obj, form, change):
        if change and not form.cleaned_data.get("external_id"):
            obj.external_id = Account.objects.get(pk=obj.pk).external_id
        super().save_model(request, obj, form, change)


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


@admin.register(OidcIdentity)
class OidcIdentityAdmin(ReadOnlyAdmin):
    """Who signed in through single sign-on, and the groups their last sign-in brought."""

    list_display = ("user", "subject", "issuer", "groups", "first_sign_in", "last_sign_in")
    search_fields = ("user__username", "subject")
    list_select_related = ("user",)
