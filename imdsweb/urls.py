"""Top-level URLs: the dashboard, Django's login views and the admin site."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("", include("fleet.urls")),
]
# Every refusal, the admin site's included, says the user's role and what the page needs.
handler403 = "fleet.views.errors.permission_denied"
