"""Top-level URLs: the dashboard, signing in (local accounts and single sign-on), the admin site,
the JSON API and /metrics.

Only the sign-in pages the configuration allows exist: password change with local accounts,
password reset only when email is configured (EMAIL_URL); the single sign-on views answer 404
unless an issuer is set.
"""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.urls import include, path

from fleet import signin
from fleet.metrics import metrics_view

accounts = [
    path("login/", signin.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
if settings.IMDSWEB_LOCAL_LOGIN:
    accounts += [
        path("password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
        path("password_change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    ]
    if settings.IMDSWEB_EMAIL_CONFIGURED:
        accounts += [
            path("password_reset/", auth_views.PasswordResetView.as_view(), name="password_reset"),
            path("password_reset/done/", auth_views.PasswordResetDoneView.as_view(), name="password_reset_done"),
            path("reset/<uidb64>/<token>/", auth_views.PasswordResetConfirmView.as_view(),
                 name="password_reset_confirm"),
            path("reset/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
        ]

urlpatterns = [
    path("accounts/", include(accounts)),
    # Answer 404 unless single sign-on is configured (IMDSWEB_OIDC_ISSUER).
    path("oidc/authenticate/", login_not_required(signin.OidcSignInView.as_view()), name="oidc_authentication_init"),
    path("oidc/callback/", login_not_required(signin.OidcCallbackView.as_view()), name="oidc_authentication_callback"),
    # The admin's own login form, unless local logins are off (then: the app's sign-in page).
    path("admin/login/", login_not_required(signin.admin_login)),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),  # Prometheus (fleet.metrics)
    path("api/v1/", include("fleet.api.urls")),  # the JSON API (fleet.api)
    path("", include("fleet.urls")),
]
# Every refusal, the admin site's included, says the user's role and what the page needs.
handler403 = "fleet.views.errors.permission_denied"
