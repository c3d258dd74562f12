"""Who a single sign-on user is at their identity provider: the issuer and the subject (``sub``).

Users are matched by this pair, never by email or username: an address can be re-assigned or
changed at the provider, and a local account that happens to share an email must not be taken over
by whoever signs in with it.
"""

from django.conf import settings
from django.db import models


class OidcIdentity(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="oidc_identity")
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=255)
    # The groups claim of the last sign-in, as the provider sent it (the role is derived from it).
    groups = models.JSONField(default=list, blank=True)
    first_sign_in = models.DateTimeField(auto_now_add=True)
    last_sign_in = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "single sign-on identity"
        verbose_name_plural = "single sign-on identities"
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="oidc_identity_unique_subject")]

    def __str__(self):
        return f"{self.subject} @ {self.issuer}"
