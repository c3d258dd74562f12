"""The three roles as groups: viewer (read), operator (may queue changes), admin (admin site)."""

from django.db import migrations

ROLES = {
    "viewer": [],
    "operator": ["queue_change"],
    "admin": [
        "queue_change",
        "add_account", "change_account", "delete_account", "view_account",
        "view_instance", "view_metadatadefaults", "view_syncrun", "view_changebatch", "view_changeitem",
    ],
}


def create_roles(apps, schema_editor):
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after migrate; this migration needs them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in ROLES.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(Permission.objects.filter(content_type__app_label="fleet", codename__in=codenames))


class Migration(migrations.Migration):
    dependencies = [("fleet", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
