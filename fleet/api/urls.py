"""``/api/v1/``: the JSON API and its OpenAPI schema. No login redirect: the API answers 401/403."""

from django.contrib.auth.decorators import login_not_required
from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from . import changes, views

app_name = "api"


def route(pattern, view, name):
    return path(pattern, login_not_required(view.as_view()), name=name)


urlpatterns = [
    route("instances/", views.InstanceListView, "instance_list"),
    route("instances/<str:instance_id>/", views.InstanceDetailView, "instance_detail"),
    route("posture/", views.PostureView, "posture"),
    route("posture/history/", views.PostureHistoryView, "posture_history"),
    route("defaults/", views.DefaultsListView, "defaults"),
    route("drift/", views.DriftListView, "drift"),
    route("waivers/", views.WaiverListView, "waiver_list"),
    route("batches/", views.BatchListView, "batch_list"),
    route("changes/plan/", changes.PlanView, "change_plan"),
    route("changes/", changes.QueueView, "change_queue"),
    route("batches/<int:pk>/", views.BatchDetailView, "batch_detail"),
    route("batches/<int:pk>/items/", views.BatchItemListView, "batch_items"),
    route("schema/", SpectacularAPIView, "schema"),
]
