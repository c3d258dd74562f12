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
