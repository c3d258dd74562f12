"""The user's own time zone: every date on the site is shown in it (UTC until they choose one).

The zone is kept in the session (copied from ``UserProfile`` when the user logs in, and when they
save their profile), so showing a page in it costs no query; ``UserTimezoneMiddleware`` activates
it for each request, and Django's ``date`` filter and django-tables2's DateTimeColumn convert to
the active zone. The one date format (imdsweb/formats) always names the zone.
"""

import zoneinfo

from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.utils import timezone

from .models import UserProfile

SESSION_KEY = "imdsweb_timezone"
DEFAULT = "UTC"


def timezone_of(user):
    profile = UserProfile.objects.filter(user=user).only("timezone").first()
    return profile.timezone if profile else DEFAULT


def set_timezone(request, name):
    """Save the user's zone and use it from this request on."""
    UserProfile.objects.update_or_create(user=request.user, defaults={"timezone": name})
    request.session[SESSION_KEY] = name
    timezone.activate(zoneinfo.ZoneInfo(name))


@receiver(user_logged_in, dispatch_uid="fleet.profile.remember_timezone")
def remember_timezone(sender, request, user, **kwargs):
    if request is not None and hasattr(request, "session"):
        request.session[SESSION_KEY] = timezone_of(user)


class UserTimezoneMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        name = request.session.get(SESSION_KEY) if hasattr(request, "session") else None
        try:
            zone = zoneinfo.ZoneInfo(name) if name and name != DEFAULT else None
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            zone = None  # a zone this system no longer knows: UTC, as for everyone else
        if zone is None:
            timezone.deactivate()
        else:
            timezone.activate(zone)
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()
