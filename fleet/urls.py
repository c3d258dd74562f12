"""URLs of the dashboard (namespace ``fleet``)."""

from django.urls import path

from .views import (
    accounts,
    changes,
    defaults,
    enforcement,
    history,
    instances,
    overview,
    profile,
    sources,
    tokens,
    waivers,
)

app_name = "fleet"
urlpatterns = [
    path("", overview.OverviewView.as_view(), name="overview"),
    path("instances/", instances.InstanceListView.as_view(), name="instance_list"),
    path("instances/export.csv", instances.instance_export, name="instance_export"),
    path("instances/<str:instance_id>/", instances.InstanceDetailView.as_view(), name="instance_detail"),
    path("drift/", history.DriftListView.as_view(), name="drift_list"),
    path("tokens/", tokens.ApiTokenView.as_view(), name="api_tokens"),
    path("tokens/<int:pk>/revoke/", tokens.ApiTokenRevokeView.as_view(), name="api_token_revoke"),
    path("accounts/", accounts.AccountHealthView.as_view(), name="account_health"),
    path("sources/", sources.SourceListView.as_view(), name="source_list"),
    path("sources/require-imdsv2/", sources.SourceFixView.as_view(), name="source_fix"),
    path("sources/<int:pk>/", sources.SourceDetailView.as_view(), name="source_detail"),
    path("waivers/", waivers.WaiverListView.as_view(), name="waiver_list"),
    path("waivers/new/", waivers.WaiverCreateView.as_view(), name="waiver_new"),
    path("waivers/<int:pk>/", waivers.WaiverDetailView.as_view(), name="waiver_detail"),
    path("waivers/<int:pk>/extend/", waivers.WaiverActionView.as_view(verb="extend"), name="waiver_extend"),
    path("waivers/<int:pk>/revoke/", waivers.WaiverActionView.as_view(verb="revoke"), name="waiver_revoke"),
    path("profile/", profile.ProfileView.as_view(), name="profile"),
    path("defaults/", defaults.DefaultsView.as_view(), name="defaults"),
    path("defaults/change/", defaults.DefaultsChangeView.as_view(), name="defaults_change"),
    path("defaults/enforce/", enforcement.EnforcementView.as_view(), name="enforce"),
    path("changes/", changes.ChangeListView.as_view(), name="change_list"),
    path("changes/new/", changes.ChangeNewView.as_view(), name="change_new"),
    path("changes/<int:pk>/", changes.ChangeDetailView.as_view(), name="change_detail"),
    path("changes/<int:pk>/progress/", changes.change_progress, name="change_progress"),
    path("changes/<int:pk>/cancel/", changes.BatchActionView.as_view(action="cancel"), name="change_cancel"),
    path("changes/<int:pk>/retry/", changes.BatchActionView.as_view(action="retry"), name="change_retry"),
    path("changes/<int:pk>/rollback/", changes.RollbackView.as_view(), name="change_rollback"),
    path("changes/<int:pk>/approve/", changes.BatchActionView.as_view(action="approve"), name="change_approve"),
    path("changes/<int:pk>/refuse/", changes.BatchActionView.as_view(action="refuse"), name="change_refuse"),
    path("changes/<int:pk>/promote/", changes.BatchActionView.as_view(action="promote"), name="change_promote"),
    path("changes/<int:pk>/abort/", changes.BatchActionView.as_view(action="abort"), name="change_abort"),
    path("changes/measure-usage/", changes.MeasureUsageView.as_view(), name="measure_usage"),
    path("changes/measure-usage/status/", changes.measure_usage_status, name="measure_usage_status"),
    path(
        "changes/<int:pk>/rerun/",
        changes.BatchActionView.as_view(action="rerun", created_message="Dry run #{old} queued for real as batch #{new}."),
        name="change_rerun",
    ),
]
