"""The three roles, as auth groups: viewer (read), operator (may queue changes), admin (admin site).

Created after every ``migrate`` (and after a test database flush) by a post_migrate handler, so
the groups always match this table.
"""

from django.contrib.auth.models import Group, Permission

ROLES = {
    "viewer": [],
    "operator": ["queue_change"],
    "admin": [
        "queue_change",
        "add_account", "change_account", "delete_account", "view_account",
        "view_instance", "view_metadatadefaults", "view_syncrun", "view_changebatch", "view_changeitem",
        "add_organizationsource", "change_organizationsource", "view_organizationsource",
        "view_discoveryrun", "view_accounthealth",
    ],
}


def ensure_roles(**kwargs):
    """post_migrate handler (after auth's, which creates the permissions)."""
    for name, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(Permission.objects.filter(content_type__app_label="fleet", codename__in=codenames))
