"""The three roles, as auth groups: viewer (read), operator (may queue changes), admin (admin site).

Created after every ``migrate`` (and after a test database flush) by a post_migrate handler, so
the groups always match this table. ``role_of`` and ``RoleRequired`` let a refusal say which role
the user has and which one the page needs, from this same table; ``assign_role`` is the one way a
user gets a role (the ``fleet_user`` command, single sign-on).
"""

from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.db.models import Q

# Lowest to highest.
ROLE_ORDER = ("viewer", "operator", "admin")

ROLES = {
    "viewer": [],
    "operator": ["queue_change"],
    "admin": [
        "queue_change",
        "add_account", "change_account", "delete_account", "view_account",
        "view_instance", "view_metadatadefaults", "view_syncrun", "view_changebatch", "view_changeitem",
        "add_notificationrule", "change_notificationrule", "delete_notificationrule", "view_notificationrule",
        "view_delivery", "view_notificationevent", "view_driftevent", "view_apitoken", "change_apitoken",
        "view_oidcidentity",
        # django-axes: see failed and locked-out sign-ins, unlock by deleting the attempt.
        "axes.view_accessattempt", "axes.delete_accessattempt", "axes.view_accessfailurelog",
        "axes.view_accesslog",
        "add_organizationsource", "change_organizationsource", "view_organizationsource",
        "view_discoveryrun", "view_accounthealth",
        # Waivers: only admins create, extend or revoke them (fleet.views.waivers); everyone sees them.
        "add_waiver", "change_waiver", "view_waiver", "view_waiverevent",
    ],
}

# What each role may do, as the 403 page tells a refused user.
ROLE_CAN = {
    "viewer": "viewers look at the fleet, its defaults and its change history",
    "operator": "operators look at everything and queue changes, retries and rollbacks",
    "admin": "admins do what operators do and manage the accounts in the admin site and the waivers",
    "superuser": "a superuser holds every permission",
}


def role_of(user):
    """The user's role name (``superuser`` for one), or None for a login in no role group."""
    if user.is_superuser:
        return "superuser"
    names = {group.name for group in user.groups.all()}
    # Highest first: a user in two groups acts with the larger one's permissions.
    return next((name for name in reversed(ROLES) if name in names), None)


def lowest_role_with(codename):
    return next((name for name, codenames in ROLES.items() if codename in codenames), None)


class RoleRequired(PermissionDenied):
    """A refusal that knows what the page needs: ``action`` needs ``permission`` ("app.codename")."""

    def __init__(self, permission, action):
        self.permission = permission
        self.role = lowest_role_with(permission.split(".", 1)[1])
        super().__init__(f"{action} needs the {self.role} role.")


def _permissions(codenames):
    query = Q(pk__in=[])
    for name in codenames:
        app_label, _, codename = name.rpartition(".")
        query |= Q(content_type__app_label=app_label or "fleet", codename=codename)
    return Permission.objects.filter(query)


def ensure_roles(**kwargs):
    """post_migrate handler (after auth's, which creates the permissions)."""
    for name, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(_permissions(codenames))


def assign_role(user, role):
    """Put ``user`` in exactly one role group; admins (only) get the admin site."""
    user.is_staff = role == "admin"
    user.save(update_fields=["is_staff"] if user.pk else None)
    user.groups.set([Group.objects.get(name=role)])
