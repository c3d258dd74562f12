"""Posture by team: counted instances per value of the owner tag (``IMDSWEB_OWNER_TAG``), per
account/region.

Maintained beside :class:`~fleet.models.posture.RegionPosture` by the same refresh (one GROUP BY
over an account/region's instances, ``fleet.teams``), so the overview reads a few hundred rows
whatever the fleet's size. A changed owner tag setting takes effect at the next refresh of each
account/region (the periodic ``posture.refresh_all`` reaches them all).
"""

from django.db import models

from .inventory import Account


class TeamPosture(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="team_posture")
    region = models.CharField(max_length=32)
    # The owner tag's value; NULL for instances without the tag (absent is one value).
    team = models.CharField(max_length=256, null=True, blank=True)  # noqa: DJ001
    total = models.PositiveIntegerField(default=0)
    enforced = models.PositiveIntegerField(default=0)
    waived = models.PositiveIntegerField(default=0)  # not enforced, under an active waiver
    v1_in_use = models.PositiveIntegerField(default=0)
    risk_role_public = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["team", "account_id", "region"]
        indexes = [models.Index(fields=["account", "region"], name="team_posture_region")]

    def __str__(self):
        return f"{self.team or '(no team)'} {self.account_id}/{self.region}: {self.enforced}/{self.total}"
