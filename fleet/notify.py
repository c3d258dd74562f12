"""Notifications: find what happened, batch it per rule, send it.

- :func:`scan_batches` records events the database already knows (a batch finished or failed, a
  batch flagged with likely breakage); syncs record drift and sync failures themselves
  (``fleet.history``). Both only insert :class:`NotificationEvent` rows.
- :func:`dispatch` gives each enabled rule whose interval has passed one :class:`Delivery` with all
  its new events (one message per rule per interval, however many instances), claimed with a
  conditional UPDATE of the rule's watermark so two beat runs cannot send the same events twice.
- :func:`send` delivers it from a Celery task that retries with backoff; a destination that already
  succeeded is not sent again on a retry.

Email goes through Django's mail (``IMDSWEB_EMAIL_URL``); every other destination (Slack, Teams, a
generic JSON webhook, …) through apprise, which keeps each service's payload format so we don't.
"""

import logging
from datetime import timedelta
from urllib.parse import urlsplit

import apprise
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Count, F, Max, Q
from django.urls import reverse
from django.utils import timezone

from .choices import BatchStatus, DeliveryStatus, EventKind, ItemState
from .models import ChangeBatch, ChangeItem, Delivery, NotificationEvent, NotificationRule

log = logging.getLogger(__name__)

# Lines in one message; the rest are counted ("… and 1,234 more").
MAX_LINES = 100
# Batches older than this are not scanned for a finish any more.
SCAN_DAYS = 7


class DeliveryFailed(Exception):
    pass


def invalid_apprise_urls(urls):
    """The URLs apprise cannot send to (unknown scheme, missing token …)."""
    return [url for url in urls if not apprise.Apprise().add(url)]


def absolute(path):
    return settings.IMDSWEB_BASE_URL.rstrip("/") + path


# ------------------------------------------------------------------ events the database knows


def _batch_line(batch, counts):
    what = f"rollback of #{batch.rollback_of_id}" if batch.rollback_of_id else ", ".join(
        f"{key}={value}" for key, value in batch.desired.items())
    figures = ", ".join(f"{counts[state]} {state}" for state in ItemState.values if counts.get(state))
    return f"batch #{batch.pk} ({what}) by {batch.created_by or 'a command'}: {figures} — {absolute(batch.get_absolute_url())}"


def scan_batches(now=None):
    """Record batch finished / failed and likely-breakage events not recorded yet."""
    now = now or timezone.now()
    since = now - timedelta(days=SCAN_DAYS)
    done_kinds = [EventKind.BATCH_FINISHED, EventKind.BATCH_FAILED]
    recorded = set(
        NotificationEvent.objects.filter(kind__in=done_kinds, created_at__gte=since - timedelta(days=1))
        .values_list("key", flat=True)
    )
    open_batches = [b for b in ChangeBatch.objects.filter(created_at__gte=since).select_related("created_by")
                    if f"batch:{b.pk}" not in recorded]
    counts = {}
    for row in (ChangeItem.objects.filter(batch__in=open_batches).values("batch_id", "state")
                .annotate(n=Count("id")).order_by()):
        counts.setdefault(row["batch_id"], {})[row["state"]] = row["n"]
    events = []
    for batch in open_batches:
        if batch.expanding:  # items are still being written: not finished, whatever they say so far
            continue
        by_state = counts.get(batch.pk, {})
        by_state["total"] = sum(by_state.values())
        full = dict.fromkeys(ItemState.values, 0) | by_state
        status = ChangeBatch.status_from_counts(full)
        if status in (BatchStatus.DONE, BatchStatus.CANCELLED):
            kind = EventKind.BATCH_FINISHED
        elif status == BatchStatus.DONE_WITH_ERRORS:
            kind = EventKind.BATCH_FAILED
        else:
            continue
        events.append(NotificationEvent(kind=kind, key=f"batch:{batch.pk}", text=_batch_line(batch, full),
                                        created_at=now))
    flagged = (
        ChangeBatch.objects.filter(breakage_flagged_at__gte=since)
        .exclude(pk__in=[int(key.split(":")[1]) for key in NotificationEvent.objects.filter(
            kind=EventKind.BREAKAGE, created_at__gte=since - timedelta(days=1)).values_list("key", flat=True)])
        .annotate(n_broken=Count("items", filter=Q(items__breakage_suspected=True)))
    )
    for batch in flagged:
        events.append(NotificationEvent(kind=EventKind.BREAKAGE, key=f"batch:{batch.pk}", created_at=now, text=(
            f"likely breakage after batch #{batch.pk}: {batch.n_broken} instance(s) refuse IMDSv1 calls "
            f"(MetadataNoTokenRejected) since the change; review or roll back: {absolute(batch.get_absolute_url())}"
        )))
    NotificationEvent.objects.bulk_create(events, ignore_conflicts=True)
    return len(events)


# ------------------------------------------------------------------ rules -> deliveries


def _message(rule, events, more):
    label = EventKind(rule.event).label
    subject = f"[imdsweb] {rule.name}: {label} ({len(events) + more})"
    lines = [f"- {event.text}" for event in events]
    if more:
        lines.append(f"… and {more:,} more")
    body = "\n".join([f"{rule.name} ({label}), since the last message:", "", *lines, "",
                      f"imdsweb: {absolute(reverse('fleet:overview'))}"])
    return subject[:200], body


def dispatch(now=None):
    """One delivery per due rule with new events. Returns the deliveries created."""
    now = now or timezone.now()
    created = []
    for rule in NotificationRule.objects.filter(enabled=True).prefetch_related("accounts"):
        if rule.last_sent_at and now < rule.last_sent_at + timedelta(minutes=rule.interval_minutes):
            continue
        newer = NotificationEvent.objects.filter(kind=rule.event, id__gt=rule.last_event_id)
        last_id = newer.aggregate(last=Max("id"))["last"]
        if last_id is None:
            continue
        matching = newer.filter(id__lte=last_id)
        accounts = list(rule.accounts.all())
        if accounts:
            matching = matching.filter(account__in=accounts)
        events = list(matching.order_by("id")[:MAX_LINES])
        more = matching.count() - len(events) if len(events) == MAX_LINES else 0
        with transaction.atomic():
            # The claim: only the run that moves the watermark from where it read it sends these.
            claimed = NotificationRule.objects.filter(pk=rule.pk, last_event_id=rule.last_event_id).update(
                last_event_id=last_id, **({"last_sent_at": now} if events else {})
            )
            if not claimed or not events:
                continue
            subject, body = _message(rule, events, more)
            delivery = Delivery.objects.create(
                rule=rule, created_at=now, subject=subject, body=body, event_count=len(events) + more,
                first_event_id=events[0].pk, last_event_id=last_id,
            )
            transaction.on_commit(lambda pk=delivery.pk: _enqueue(pk))
        created.append(delivery)
    # A delivery whose task never reached a worker (broker down) is sent again from its row.
    stale = Delivery.objects.filter(status=DeliveryStatus.QUEUED, attempts=0, created_at__lt=now - timedelta(minutes=5))
    for pk in stale.values_list("pk", flat=True):
        _enqueue(pk)
    return created


def _enqueue(delivery_pk):
    from .tasks import send_delivery

    try:
        send_delivery.delay(delivery_pk)
    except Exception:  # the broker is down: the row stays queued and the next dispatch retries it
        log.warning("delivery %s not enqueued; will retry", delivery_pk, exc_info=True)


# ------------------------------------------------------------------ sending


def _label(index, url):
    # Never the whole URL: apprise URLs carry the destination's secret (a Slack token, a password).
    parts = urlsplit(url)
    return f"url {index} ({parts.scheme}://{parts.hostname or ''})"


def _send_email(rule, delivery):
    send_mail(delivery.subject, delivery.body, settings.DEFAULT_FROM_EMAIL, rule.recipients)


def _send_apprise(url, delivery):
    notifier = apprise.Apprise()
    if not notifier.add(url):
        raise DeliveryFailed("apprise does not understand this URL")
    with apprise.LogCapture(level=logging.WARNING) as output:
        ok = notifier.notify(title=delivery.subject, body=delivery.body)
    if not ok:
        raise DeliveryFailed(output.getvalue().strip().splitlines()[-1] if output.getvalue().strip() else "not delivered")


def send(delivery_pk, attempt=None, final=False):
    """Send one delivery to every destination not yet reached. Raises DeliveryFailed (to be retried)
    while a destination fails, unless ``final``: then the delivery is recorded as failed.

    ``attempt`` is the number of attempts the caller expects to have been made (the task passes
    its own count): the claim moves it on by one, so a delivery enqueued twice (the stale
    re-dispatch racing a slow queue) is attempted once per number, never twice."""
    delivery = Delivery.objects.select_related("rule").get(pk=delivery_pk)
    expected = delivery.attempts if attempt is None else attempt
    claimed = Delivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.QUEUED, attempts=expected).update(
        attempts=F("attempts") + 1)
    if not claimed:
        return delivery
    delivery.attempts += 1
    rule = delivery.rule
    destinations = []
    if rule.recipients:
        destinations.append(("email", lambda: _send_email(rule, delivery)))
    for index, url in enumerate(rule.urls, 1):
        destinations.append((_label(index, url), lambda url=url: _send_apprise(url, delivery)))
    result = dict(delivery.result)
    for label, deliver in destinations:
        if result.get(label) == "ok":
            continue
        try:
            deliver()
            result[label] = "ok"
        except Exception as exc:  # SMTP, socket, apprise: each destination's failure is recorded
            log.warning("delivery %s to %s failed: %s", delivery.pk, label, exc)
            result[label] = f"{type(exc).__name__}: {exc}"[:500]
    failed = {label: outcome for label, outcome in result.items() if outcome != "ok"}
    delivery.result = result
    delivery.error = "; ".join(f"{label}: {outcome}" for label, outcome in failed.items())[:4000]
    if not failed:
        delivery.status, delivery.sent_at = DeliveryStatus.SENT, timezone.now()
    elif final:
        delivery.status = DeliveryStatus.FAILED
    delivery.save(update_fields=["result", "error", "status", "sent_at"])
    if failed and not final:
        raise DeliveryFailed(delivery.error)
    return delivery
