"""A user's own settings: the time zone every date on the site is shown in (UTC by default)."""

import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


def validate_timezone(value):
    if value not in zoneinfo.available_timezones():
        raise ValidationError("%(value)s is not an IANA time zone name (e.g. Europe/Berlin).",
                              code="unknown_timezone", params={"value": value})


class UserProfile(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile")
    # An IANA name (zoneinfo); activated per request by fleet.signin.UserTimezoneMiddleware.
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])

    def __str__(self):
        return f"{self.user}: {self.timezone}"
