"""Top-level URLs: the dashboard, signing in (local accounts and single sign-on) and the admin site.

Only the sign-in pages the configuration allows exist: password change with local accounts,
password reset only when email is configured (EMAIL_URL), single sign-on when an issuer is set.
"""

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.urls import include, path
from django.views.generic import RedirectView

from fleet import signin

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

urlpatterns = [path("accounts/", include(accounts))]
if settings.IMDSWEB_OIDC_ISSUER:
    urlpatterns += [
        path("oidc/authenticate/", login_not_required(signin.OidcSignInView.as_view()),
             name="oidc_authentication_init"),
        path("oidc/callback/", login_not_required(signin.OidcCallbackView.as_view()),
             name="oidc_authentication_callback"),
    ]
if not settings.IMDSWEB_LOCAL_LOGIN:
    # The admin's own password form would accept nothing: send admins through the app's sign-in.
    urlpatterns += [path("admin/login/", login_not_required(RedirectView.as_view(
        url="/accounts/login/?next=/admin/", permanent=False)))]
urlpatterns += [
    path("admin/", admin.site.urls),
    path("", include("fleet.urls")),
]
