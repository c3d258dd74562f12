"""Top-level URLs: the dashboard, Django's login views, the admin site, the JSON API and /metrics."""

from django.contrib import admin
from django.urls import include, path

from fleet.metrics import metrics_view

urlpatterns = [
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),  # Prometheus (fleet.metrics)
    path("api/v1/", include("fleet.api.urls")),  # the JSON API (fleet.api)
    path("", include("fleet.urls")),
]
# Every refusal, the admin site's included, says the user's role and what the page needs.
handler403 = "fleet.views.errors.permission_denied"
