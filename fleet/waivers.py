"""The waiver service: create, extend, revoke and expire waivers, and keep ``Instance.waiver`` true.

:func:`apply_waivers` is the one function that writes ``Instance.waiver``; everything that
changes waivers (the functions below) or instances (a sync) calls it, and it refreshes the posture
summary of each account/region whose waived instances changed. So the summary's ``waived``
counter, the list's ``posture=waived`` filter and the overview count the same column.

Expiry is enforced at two speeds, on purpose:

- bulk changes check the date at read time (``fleet.changes.decision``): a waiver past its date
  never skips an instance, not even for a second;
- the posture summary is a maintained count, so the ``expire-waivers`` beat task (every minute)
  records each expiry (audit row, ``waiver_expired`` notification) and re-applies the waivers,
  which refreshes the summaries. Counting at read time instead would mean a join per instance on
  every overview, which the summary exists to avoid; a minute's lag on a date-granular expiry is
  the price, and the README says so.
"""

import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from . import posture
from .choices import EventKind, WaiverAction
from .models import Instance, NotificationEvent, Waiver, WaiverEvent
from .models.waivers import utc_today
from .notify import absolute

log = logging.getLogger(__name__)


def _author(user):
    return user if user and user.is_authenticated else None


def _pairs_q(pairs):
    q = Q(pk__in=[])
    for account_id, region in pairs:
        q |= Q(account_id=account_id, region=region)
    return q


def _waived_pairs(instances):
    return set(instances.filter(waiver__isnull=False).values_list("account_id", "region").distinct().order_by())


def apply_waivers(pairs=None, *, today=None, refresh=True):
    """Point every instance (of the (account pk, region) ``pairs``, or all) at the active waiver
    that covers it — the one expiring last — or at none. Returns the account/regions whose waived
    instances changed, after refreshing their summaries (unless ``refresh`` is False: the caller
    refreshes, as a sync does anyway).

    One UPDATE clears the scope's waived instances and one UPDATE per active waiver (latest expiry
    first) sets the still-unwaived ones it covers, so each instance is written at most twice."""
    today = today or utc_today()
    instances = Instance.objects.all()
    if pairs is not None:
        pairs = list(pairs)
        if not pairs:
            return set()
        instances = instances.filter(_pairs_q(pairs))
    with transaction.atomic():
        before = dict(instances.filter(waiver__isnull=False).values_list("pk", "waiver_id"))
        instances.filter(waiver__isnull=False).update(waiver=None)
        active = Waiver.objects.active(today).select_related("instance", "source").order_by("-expires_on", "-pk")
        for waiver in active:
            if pairs is not None and not waiver.reaches(set(pairs)):
                continue  # a sync of one region runs only the waivers that can reach it
            instances.filter(waiver__isnull=True, gone_at__isnull=True).filter(waiver.instance_condition()).update(
                waiver=waiver)
        after = dict(instances.filter(waiver__isnull=False).values_list("pk", "waiver_id"))
        moved = {pk for pk in before.keys() | after.keys() if before.get(pk) != after.get(pk)}
        changed = set(
            Instance.objects.filter(pk__in=moved).values_list("account_id", "region").distinct().order_by()
        ) if moved else set()
        if refresh:
            for account_id, region in sorted(changed):
                posture.refresh_region(account_id, region)
    return changed


def _audit(waiver, action, user, detail=None, comment=""):
    WaiverEvent.objects.create(waiver=waiver, action=action, user=_author(user), at=timezone.now(),
                               detail=detail or {}, comment=comment)


def _values(waiver):
    return {"scope": waiver.scope_text, "owner": waiver.owner, "reason": waiver.reason,
            "expires_on": waiver.expires_on.isoformat()}


def _snapshot(waiver):
    """The audit detail of a create, revoke or expiry: {field: [value]} (an extension's is [old, new])."""
    return {key: [value] for key, value in _values(waiver).items()}


def create_waiver(user, waiver):
    """Save a new (validated) waiver, audit it and apply it. Returns it."""
    with transaction.atomic():
        waiver.created_by = _author(user)
        waiver.save()
        _audit(waiver, WaiverAction.CREATED, user, _snapshot(waiver))
        apply_waivers()
    log.info("waiver %s created by %s: %s until %s", waiver.pk, user, waiver.scope_text, waiver.expires_on)
    return waiver


def extend_waiver(user, waiver, expires_on, reason=None, comment=""):
    """A new expiry date (and optionally reason) for a waiver that is still active."""
    with transaction.atomic():
        old = _values(waiver)
        waiver.expires_on = expires_on
        if reason:
            waiver.reason = reason
        waiver.save(update_fields=["expires_on", "reason", "updated_at"])
        new = _values(waiver)
        _audit(waiver, WaiverAction.EXTENDED, user,
               {key: [old[key], new[key]] for key in new if old[key] != new[key]}, comment)
        apply_waivers()
    return waiver


def revoke_waiver(user, waiver, comment=""):
    """End a waiver now: its instances are no longer exempt."""
    with transaction.atomic():
        waiver.revoked_at = timezone.now()
        waiver.save(update_fields=["revoked_at", "updated_at"])
        _audit(waiver, WaiverAction.REVOKED, user, _snapshot(waiver), comment)
        apply_waivers()
    return waiver


def expire_waivers(now=None):
    """Record every waiver that passed its date since the last run: an audit row, a
    ``waiver_expired`` notification event, and the waivers re-applied (which refreshes the
    summaries, so its instances count as non-compliant again). Returns the waivers expired."""
    now = now or timezone.now()
    today = utc_today(now)
    with transaction.atomic():
        due = list(Waiver.objects.expired(today).filter(expired_at__isnull=True).select_for_update(skip_locked=True, of=("self",))
                   .select_related("instance", "source", "account"))
        if not due:
            return []
        covered = {waiver.pk: waiver.instances.count() for waiver in due}
        for waiver in due:
            waiver.expired_at = now
            waiver.save(update_fields=["expired_at", "updated_at"])
            _audit(waiver, WaiverAction.EXPIRED, None, _snapshot(waiver))
        NotificationEvent.objects.bulk_create([
            NotificationEvent(
                kind=EventKind.WAIVER_EXPIRED, key=f"waiver:{waiver.pk}", created_at=now,
                account_id=waiver.account_id or (waiver.instance.account_id if waiver.instance else None)
                or (waiver.source.account_id if waiver.source else None),
                instance_id=waiver.instance_id,
                text=(f"waiver #{waiver.pk} ({waiver.scope_text}, owner {waiver.owner}) expired on "
                      f"{waiver.expires_on:%Y-%m-%d}: {covered[waiver.pk]} instance(s) it exempted count as "
                      f"non-compliant again and bulk changes enforce them — {absolute(waiver.get_absolute_url())}"),
            )
            for waiver in due
        ], ignore_conflicts=True)
        apply_waivers(today=today)
    log.info("expired %d waiver(s)", len(due))
    return due
