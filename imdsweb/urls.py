"""Top-level URLs: the dashboard, Django's login views, the admin site and Prometheus's /metrics."""

from django.contrib import admin
from django.urls import include, path

from fleet.metrics import metrics_view

urlpatterns = [
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),  # Prometheus (fleet.metrics)
    path("", include("fleet.urls")),
]
