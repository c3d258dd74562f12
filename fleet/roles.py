"""The three roles, as auth groups: viewer (read), operator (may queue changes), admin (admin site).

Created after every ``migrate`` (and after a test database flush) by a post_migrate handler, so
the groups always match this table. ``assign_role`` is the one way a user gets a role (the
``fleet_user`` command, single sign-on).
"""

from django.contrib.auth.models import Group, Permission
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
        "view_oidcidentity",
        # django-axes: see failed and locked-out sign-ins, unlock by deleting the attempt.
        "axes.view_accessattempt", "axes.delete_accessattempt", "axes.view_accessfailurelog",
        "axes.view_accesslog",
    ],
}


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
