"""The audit trail of a batch's rollout and approval (fleet.changes.rollout writes it): who
approved or refused, when each wave was released, what paused it. Rows are never deleted."""

from django.conf import settings
from django.db import models

from ..choices import BatchEventKind


class BatchEvent(models.Model):
    batch = models.ForeignKey("fleet.ChangeBatch", on_delete=models.PROTECT, related_name="events")
    at = models.DateTimeField(auto_now_add=True)
    # Null for the engine's own steps (a clean soak releasing the next wave).
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="+")
    kind = models.CharField(max_length=24, choices=BatchEventKind.choices)
    wave = models.PositiveSmallIntegerField(null=True, blank=True)
    text = models.TextField(blank=True)

    class Meta:
        ordering = ["batch_id", "at", "id"]
        indexes = [models.Index(fields=["batch", "at"])]

    def __str__(self):
        return f"batch #{self.batch_id}: {self.get_kind_display()}"
