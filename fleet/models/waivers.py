"""Waivers: an admin's decision that some instances may keep IMDSv1 until a date, and its audit.

A waiver's scope is one of: one instance, a tag selector (``key=value``), a launch source, or an
account (one region or all). It has an owner, a reason and an expiry date (required, at most
``IMDSWEB_WAIVER_MAX_DAYS`` ahead); it exempts through the end of that day (UTC).

Which waiver covers an instance is denormalised on ``Instance.waiver`` by one function,
:func:`fleet.waivers.apply_waivers`, so that the posture summary counts waived instances with the
same GROUP BY as everything else and the list filters them with one indexed column. Every
create, extend, revoke and expiry is a :class:`WaiverEvent` row: the waivers' audit trail.
"""

import re
from datetime import UTC, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.lookups import Exact
from django.urls import reverse
from django.utils import timezone

from ..choices import WaiverAction, WaiverScope
from .inventory import Account, Instance
from .sources import LaunchSource

# An EC2 tag: key up to 128 characters, value up to 256 (AWS's limits); keys starting "aws:" are
# AWS's own but may be selected (aws:autoscaling:groupName is a common one).
TAG_SELECTOR = re.compile(r"(?P<key>[^=]{1,128})=(?P<value>.{0,256})", re.DOTALL)


def utc_today(now=None):
    """Today in UTC: a waiver's date is a UTC day, whatever the server's time zone."""
    return (now or timezone.now()).astimezone(UTC).date()


def parse_tag_selector(text):
    """``key=value`` -> (key, value); ValidationError when it is not one."""
    match = TAG_SELECTOR.fullmatch((text or "").strip())
    if not match or not match["key"].strip():
        raise ValidationError(
            "A tag selector is key=value (one tag, e.g. app=vendor-appliance); the key is 1-128 characters, "
            "the value at most 256.", code="bad_tag_selector")
    return match["key"].strip(), match["value"].strip()


class WaiverQuerySet(models.QuerySet):
    def active(self, today=None):
        """Not revoked, and not past its expiry date (UTC): the waivers that exempt today."""
        return self.filter(revoked_at__isnull=True, expires_on__gte=today or utc_today())

    def expired(self, today=None):
        return self.filter(revoked_at__isnull=True, expires_on__lt=today or utc_today())

    def with_counts(self):
        """With ``n_instances``: the instances it covers now (``Instance.waiver``), for lists and the API."""
        return self.select_related("instance", "source", "account", "created_by").annotate(
            n_instances=models.Count("instances"))


class Waiver(models.Model):
    scope = models.CharField(max_length=16, choices=WaiverScope.choices)
    instance = models.ForeignKey(Instance, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    tag_key = models.CharField(max_length=128, blank=True)
    tag_value = models.CharField(max_length=256, blank=True)
    source = models.ForeignKey(LaunchSource, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    account = models.ForeignKey(Account, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    region = models.CharField(max_length=32, blank=True, help_text="Blank: every region of the account.")

    owner = models.CharField(max_length=150, help_text="Who answers for the exemption (a person or a team).")
    reason = models.TextField(help_text="Why these instances still need IMDSv1.")
    expires_on = models.DateField(help_text="Exempts through the end of this day (UTC).")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Set by the expiry task once it has recorded the expiry (audit, notification, summaries).
    expired_at = models.DateTimeField(null=True, blank=True)

    objects = WaiverQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["revoked_at", "expires_on"], name="waiver_active")]
        constraints = [
            models.CheckConstraint(
                name="waiver_scope_fields",
                condition=(
                    Q(scope=WaiverScope.INSTANCE, instance__isnull=False, source__isnull=True, account__isnull=True)
                    | Q(scope=WaiverScope.TAG, instance__isnull=True, source__isnull=True, account__isnull=True)
                    & ~Q(tag_key="")
                    | Q(scope=WaiverScope.SOURCE, instance__isnull=True, source__isnull=False, account__isnull=True)
                    | Q(scope=WaiverScope.ACCOUNT, instance__isnull=True, source__isnull=True, account__isnull=False)
                ),
            ),
        ]

    def __str__(self):
        return f"waiver #{self.pk}: {self.scope_text}"

    def get_absolute_url(self):
        return reverse("fleet:waiver_detail", args=[self.pk])

    @property
    def scope_text(self):
        if self.scope == WaiverScope.INSTANCE:
            return f"instance {self.instance.instance_id}" if self.instance else "instance"
        if self.scope == WaiverScope.TAG:
            return f"tag {self.tag_key}={self.tag_value}"
        if self.scope == WaiverScope.SOURCE:
            return f"{self.source.get_kind_display()} {self.source.name}" if self.source else "source"
        account = self.account.account_id if self.account else ""
        return f"account {account}/{self.region}" if self.region else f"account {account} (all regions)"

    @property
    def status(self):
        if self.revoked_at:
            return "revoked"
        return "expired" if self.expires_on < utc_today() else "active"

    @property
    def reason_text(self):
        """What a skipped item says (the same words as ``fleet.changes.decision``'s reason)."""
        return f"waived until {self.expires_on:%Y-%m-%d} by {self.owner}: {self.reason}"

    def instance_condition(self):
        """The instances this waiver covers, as a filter condition over Instance (an expression
        for a tag, so that any key works: ``tags__<key>`` would split a key containing ``__``)."""
        if self.scope == WaiverScope.INSTANCE:
            return Q(pk=self.instance_id)
        if self.scope == WaiverScope.TAG:
            return Exact(KeyTextTransform(self.tag_key, "tags"), Value(self.tag_value))
        if self.scope == WaiverScope.SOURCE:
            return self.source.instance_condition() if self.source_id else Q(pk__in=[])
        q = Q(account_id=self.account_id)
        return q & Q(region=self.region) if self.region else q

    def reaches(self, pairs):
        """Whether it may cover an instance of these (account pk, region) pairs (a tag: anywhere)."""
        if self.scope == WaiverScope.INSTANCE:
            return (self.instance.account_id, self.instance.region) in pairs
        if self.scope == WaiverScope.SOURCE:
            return (self.source.account_id, self.source.region) in pairs
        if self.scope == WaiverScope.ACCOUNT:
            return any(account_id == self.account_id and (not self.region or region == self.region)
                       for account_id, region in pairs)
        return True

    def clean(self):
        """The rules for every way a waiver is written (the forms, the admin)."""
        errors = {}
        today = utc_today()
        latest = today + timedelta(days=settings.IMDSWEB_WAIVER_MAX_DAYS)
        if self.expires_on is None:
            errors["expires_on"] = "An expiry date is required."
        elif self.expires_on < today:
            errors["expires_on"] = f"The expiry date {self.expires_on:%Y-%m-%d} is in the past (today is {today:%Y-%m-%d} UTC)."
        elif self.expires_on > latest:
            errors["expires_on"] = (
                f"At most {settings.IMDSWEB_WAIVER_MAX_DAYS} days ahead: {latest:%Y-%m-%d} at the latest "
                "(IMDSWEB_WAIVER_MAX_DAYS).")
        if self.scope == WaiverScope.ACCOUNT and self.account_id and self.region:
            if self.region not in (self.account.regions or []):
                errors["region"] = f"{self.region} is not a region of account {self.account.account_id}."
        if errors:
            raise ValidationError(errors)


class WaiverEvent(models.Model):
    """One line of a waiver's audit trail: who did what, when, and the values before and after."""

    waiver = models.ForeignKey(Waiver, on_delete=models.CASCADE, related_name="events")
    action = models.CharField(max_length=16, choices=WaiverAction.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    at = models.DateTimeField()
    # {"expires_on": [old, new], "reason": [old, new], ...} or the created values.
    detail = models.JSONField(default=dict, blank=True)
    comment = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self):
        return f"waiver #{self.waiver_id} {self.action} by {self.user or 'imdsweb'} at {self.at:%Y-%m-%d %H:%M}"
