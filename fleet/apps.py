"""The fleet app: inventory cache, change engine and dashboard."""

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class FleetConfig(AppConfig):
    name = "fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import profile  # noqa: F401 - connects the login signal that remembers the time zone
        from .roles import ensure_roles

        # Sent once per app: after the fleet app's, auth has created every permission.
        post_migrate.connect(ensure_roles, sender=self, dispatch_uid="fleet.ensure_roles")
