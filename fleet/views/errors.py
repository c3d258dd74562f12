"""The 403 page: who the user is, what the refused page needs, and whether asking for a role helps.

Installed as ``handler403`` in ``imdsweb.urls``, so it answers every PermissionDenied: the
dashboard's (``fleet.roles.RoleRequired``, which names the role the page needs) and the admin
site's (which carry no message).
"""

from django.shortcuts import render
from django.urls import reverse

from ..roles import ROLE_CAN, RoleRequired, role_of

ADMIN_SITE_REFUSAL = (
    "This part of the admin site is closed to every role: instances, defaults, sync runs and change "
    "records come from AWS or are the audit trail and are read-only, and logins are managed with "
    "manage.py fleet_user."
)


def permission_denied(request, exception):
    user = request.user
    role = role_of(user) if user.is_authenticated else None
    needed_role = exception.role if isinstance(exception, RoleRequired) else None
    if isinstance(exception, RoleRequired):
        needed = str(exception)
    elif request.path.startswith(reverse("admin:index")):
        needed = ADMIN_SITE_REFUSAL
    else:
        needed = str(exception) or "Your role does not allow this."
    context = {
        "needed": needed,
        "role": role,
        "role_can": ROLE_CAN.get(role, ""),
        # Asking for a role helps only when the page needs one this user does not have.
        "ask_for": needed_role if needed_role and not user.has_perm(exception.permission) else None,
    }
    return render(request, "403.html", context, status=403)


class ProductErrorPagesMiddleware:
    """Under DEBUG, Django answers an unknown address and an unhandled exception with its
    technical pages (settings, URL patterns, a traceback). A demo runs with DEBUG on (for its
    known logins) but is for users: with ``IMDSWEB_DEBUG_ERROR_PAGES`` off (``scripts/demo.py``
    sets it), they get the product's own 404 and 500 pages, rendered by the same handlers Django
    uses without DEBUG. The 403 page is ``handler403`` whatever DEBUG says. Without DEBUG this
    middleware steps aside (Django's own handling is the product's pages already)."""

    def __init__(self, get_response):
        from django.conf import settings
        from django.core.exceptions import MiddlewareNotUsed

        if not settings.DEBUG or settings.IMDSWEB_DEBUG_ERROR_PAGES:
            raise MiddlewareNotUsed
        self.get_response = get_response

    def __call__(self, request):
        from django.urls import Resolver404, resolve
        from django.views.defaults import page_not_found

        try:
            resolve(request.path_info)
        except Resolver404 as exc:
            return page_not_found(request, exc)
        return self.get_response(request)

    def process_exception(self, request, exception):
        import logging
        import sys

        from django.core.exceptions import PermissionDenied
        from django.http import Http404
        from django.views.defaults import page_not_found, server_error

        if isinstance(exception, Http404):
            return page_not_found(request, exception)
        if isinstance(exception, PermissionDenied):
            return None  # handler403, as without DEBUG
        logging.getLogger("django.request").error(
            "Internal Server Error: %s", request.path, exc_info=sys.exc_info(), extra={"status_code": 500, "request": request}
        )
        return server_error(request)
