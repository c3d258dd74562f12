"""Notifications: rules an admin configures, the events they can be about, and every delivery.

Whatever notices something (a sync, the scan of batches) only inserts a :class:`NotificationEvent`
row, unique per ``(kind, key)`` so the same fact is never recorded twice; nothing is sent inline.
A beat task turns each due rule's new events into one :class:`Delivery` (one message per rule per
interval) and a Celery task sends it with retries (``fleet.notify``).
"""

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, validate_email
from django.db import models

from ..choices import DeliveryStatus, EventKind
from .inventory import Account, Instance


def _lines(text):
    return [part.strip() for part in text.replace(",", "\n").splitlines() if part.strip()]


class NotificationRule(models.Model):
    name = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    event = models.CharField(max_length=20, choices=EventKind.choices)
    accounts = models.ManyToManyField(
        Account, blank=True, related_name="+", help_text="Only events of these accounts; none selected = all."
    )
    email_to = models.TextField(blank=True, help_text="Email addresses, one per line or comma-separated.")
    apprise_urls = models.TextField(
        blank=True,
        help_text="Apprise URLs, one per line: slack://…, msteams://…, json://host/path (generic webhook) …",
    )
    interval_minutes = models.PositiveIntegerField(
        default=15, validators=[MinValueValidator(1)],
        help_text="At most one message per interval; events in between are sent together.",
    )
    # Events up to this id have been handed to a delivery (or predate the rule).
    last_event_id = models.BigIntegerField(default=0, editable=False)
    last_sent_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        if self._state.adding and not self.last_event_id:
            # A new rule speaks of what happens from now on, not of every event ever recorded.
            self.last_event_id = NotificationEvent.objects.aggregate(last=models.Max("id"))["last"] or 0
        super().save(*args, **kwargs)

    def clean(self):
        errors = {}
        for address in self.recipients:
            try:
                validate_email(address)
            except ValidationError:
                errors.setdefault("email_to", []).append(f"{address!r} is not an email address.")
        from ..notify import invalid_apprise_urls

        for url in invalid_apprise_urls(self.urls):
            errors.setdefault("apprise_urls", []).append(f"{url!r} is not a URL apprise can send to.")
        if not self.recipients and not self.urls and not errors:
            errors["email_to"] = ["Give at least one email address or apprise URL."]
        if errors:
            raise ValidationError(errors)

    @property
    def recipients(self):
        return _lines(self.email_to)

    @property
    def urls(self):
        return [line.strip() for line in self.apprise_urls.splitlines() if line.strip()]


class NotificationEvent(models.Model):
    kind = models.CharField(max_length=20, choices=EventKind.choices)
    # What makes two events the same fact (a drift event's id, a batch id, a failed sync run's id).
    key = models.CharField(max_length=200)
    account = models.ForeignKey(Account, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    region = models.CharField(max_length=32, blank=True)
    instance = models.ForeignKey(Instance, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    text = models.TextField()
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["kind", "key"], name="uniq_notification_event")]
        indexes = [models.Index(fields=["kind", "id"])]

    def __str__(self):
        return f"{self.kind}: {self.text[:80]}"


class Delivery(models.Model):
    """One message of one rule: what it said, to whom, and what happened."""

    rule = models.ForeignKey(NotificationRule, on_delete=models.CASCADE, related_name="deliveries")
    created_at = models.DateTimeField()
    subject = models.CharField(max_length=200)
    body = models.TextField()
    event_count = models.PositiveIntegerField()
    first_event_id = models.BigIntegerField()
    last_event_id = models.BigIntegerField()
    status = models.CharField(max_length=8, choices=DeliveryStatus.choices, default=DeliveryStatus.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)
    # Per destination: {"email": "ok" | error, "<apprise url scheme://host>": "ok" | error}
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self):
        return f"{self.rule}: {self.subject} ({self.status})"
