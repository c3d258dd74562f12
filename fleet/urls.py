"""URLs of the dashboard (namespace ``fleet``)."""

from django.urls import path

from .views import changes, defaults, enforcement, instances, overview, sources

app_name = "fleet"
urlpatterns = [
    path("", overview.OverviewView.as_view(), name="overview"),
    path("instances/", instances.InstanceListView.as_view(), name="instance_list"),
    path("instances/export.csv", instances.instance_export, name="instance_export"),
    path("instances/<str:instance_id>/", instances.InstanceDetailView.as_view(), name="instance_detail"),
    path("sources/", sources.SourceListView.as_view(), name="source_list"),
    path("sources/require-imdsv2/", sources.SourceFixView.as_view(), name="source_fix"),
    path("sources/<int:pk>/", sources.SourceDetailView.as_view(), name="source_detail"),
    path("defaults/", defaults.DefaultsView.as_view(), name="defaults"),
    path("defaults/change/", defaults.DefaultsChangeView.as_view(), name="defaults_change"),
    path("defaults/enforce/", enforcement.EnforcementView.as_view(), name="enforce"),
    path("changes/", changes.ChangeListView.as_view(), name="change_list"),
    path("changes/new/", changes.ChangeNewView.as_view(), name="change_new"),
    path("changes/<int:pk>/", changes.ChangeDetailView.as_view(), name="change_detail"),
    path("changes/<int:pk>/progress/", changes.change_progress, name="change_progress"),
    path("changes/<int:pk>/cancel/", changes.BatchActionView.as_view(action="cancel"), name="change_cancel"),
    path("changes/<int:pk>/retry/", changes.BatchActionView.as_view(action="retry"), name="change_retry"),
    path("changes/<int:pk>/rollback/", changes.BatchActionView.as_view(action="rollback"), name="change_rollback"),
    path(
        "changes/<int:pk>/rerun/",
        changes.BatchActionView.as_view(action="rerun", created_message="Dry run #{old} queued for real as batch #{new}."),
        name="change_rerun",
    ),
]
