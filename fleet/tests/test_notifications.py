"""Notification rules: events become one message per rule per interval, delivered to a real SMTP
server and a real webhook receiver, retried per destination, recorded; batch events from the scan;
rules validated in the admin."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from fleet import notify
from fleet.choices import DeliveryStatus, EventKind
from fleet.models import Delivery, NotificationEvent, NotificationRule
from fleet.tests.factories import AccountFactory, ChangeItemFactory, UserFactory
from fleet.tests.receivers import SmtpReceiver, WebhookReceiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def smtp(settings):
    with SmtpReceiver() as receiver:
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", receiver.port
        yield receiver


@pytest.fixture
def webhook():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """Deliveries are sent by the tests themselves here (the live test goes through a worker)."""
    monkeypatch.setattr(notify, "_enqueue", lambda pk: None)


def event(kind=EventKind.NEW_V1, account=None, text=None, **kwargs):
    n = NotificationEvent.objects.count() + 1
    return NotificationEvent.objects.create(kind=kind, key=f"test:{n}", account=account, text=text or f"event {n}",
                                            created_at=timezone.now(), **kwargs)


def rule(**kwargs):
    return NotificationRule.objects.create(**{"name": "IMDSv1 launches", "event": EventKind.NEW_V1, **kwargs})


def test_one_message_per_rule_per_interval_to_email_and_webhook(smtp, webhook, django_capture_on_commit_callbacks):
    r = rule(email_to="sec@example.com, oncall@example.com", apprise_urls=webhook.apprise_url, interval_minutes=15)
    for n in range(3):
        event(text=f"new instance allowing IMDSv1: i-{n:017x}")
    event(kind=EventKind.SYNC_FAILING)  # another rule's kind

    now = timezone.now()
    [delivery] = notify.dispatch(now)
    notify.send(delivery.pk)

    [mail] = smtp.messages
    assert mail["Subject"] == "[imdsweb] IMDSv1 launches: new instance allowing IMDSv1 (3)"
    assert mail["X-Envelope-To"] == "sec@example.com, oncall@example.com"
    body = mail.get_content()
    assert all(f"i-{n:017x}" in body for n in range(3)) and "event 4" not in body
    [(path, payload)] = webhook.requests
    assert path == "/hook" and payload["title"] == mail["Subject"] and "i-00000000000000002" in payload["message"]
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT and delivery.attempts == 1 and delivery.event_count == 3
    assert delivery.result == {"email": "ok", "url 1 (json://127.0.0.1)": "ok"}

    # Nothing new: nothing sent. New events inside the interval wait for it to pass.
    assert notify.dispatch(now + timedelta(minutes=1)) == []
    event(text="later launch")
    assert notify.dispatch(now + timedelta(minutes=5)) == []
    [second] = notify.dispatch(now + timedelta(minutes=16))
    assert second.event_count == 1 and "later launch" in second.body and "i-0000" not in second.body
    r.refresh_from_db()
    assert r.last_event_id == NotificationEvent.objects.filter(kind=EventKind.NEW_V1).latest("id").pk


def test_a_failing_destination_is_retried_alone_then_recorded_as_failed(smtp, settings):
    with WebhookReceiver(fail=1) as webhook:
        rule(email_to="sec@example.com", apprise_urls=webhook.apprise_url)
        event()
        [delivery] = notify.dispatch()
        with pytest.raises(notify.DeliveryFailed):
            notify.send(delivery.pk)
        delivery.refresh_from_db()
        assert delivery.status == DeliveryStatus.QUEUED and delivery.result["email"] == "ok"
        assert "url 1" in delivery.error and len(smtp.messages) == 1

        notify.send(delivery.pk)  # the retry: only the webhook again
        delivery.refresh_from_db()
        assert delivery.status == DeliveryStatus.SENT and delivery.attempts == 2 and not delivery.error
        assert len(smtp.messages) == 1 and len(webhook.requests) == 1

    rule(name="dead end", apprise_urls="json://127.0.0.1:9/nothing-listens")
    event()
    dead = [d for d in notify.dispatch() if d.rule.name == "dead end"][0]
    with pytest.raises(notify.DeliveryFailed):
        notify.send(dead.pk)
    notify.send(dead.pk, final=True)
    dead.refresh_from_db()
    assert dead.status == DeliveryStatus.FAILED and dead.attempts == 2 and dead.error.startswith("url 1 (json://127.0.0.1)")


def test_rule_for_some_accounts_skips_the_others_without_holding_them(smtp):
    prod, dev = AccountFactory(name="prod"), AccountFactory(name="dev")
    r = rule(email_to="sec@example.com")
    r.accounts.set([prod])
    event(account=dev, text="dev launch")
    assert notify.dispatch() == []  # only dev's event: no message, but the watermark moves on
    event(account=prod, text="prod launch")
    [delivery] = notify.dispatch(timezone.now() + timedelta(hours=1))
    assert "prod launch" in delivery.body and "dev launch" not in delivery.body


def test_a_new_rule_speaks_only_of_what_happens_after_it(smtp):
    event(text="old news")
    rule(email_to="sec@example.com")
    assert notify.dispatch() == []


def test_a_long_message_is_capped_and_counts_the_rest(smtp):
    rule(email_to="sec@example.com")
    NotificationEvent.objects.bulk_create([
        NotificationEvent(kind=EventKind.NEW_V1, key=f"bulk:{n}", text=f"launch {n}", created_at=timezone.now())
        for n in range(notify.MAX_LINES + 20)
    ])
    [delivery] = notify.dispatch()
    assert delivery.event_count == notify.MAX_LINES + 20
    assert "… and 20 more" in delivery.body and delivery.body.count("- launch") == notify.MAX_LINES


def test_two_dispatchers_never_send_the_same_events_twice(smtp):
    r = rule(email_to="sec@example.com")
    event()
    stale = NotificationRule.objects.get(pk=r.pk)  # what a second, slower beat run read
    assert len(notify.dispatch()) == 1
    # The slower run's conditional update finds the watermark moved and sends nothing.
    assert NotificationRule.objects.filter(pk=stale.pk, last_event_id=stale.last_event_id).count() == 0
    assert notify.dispatch(timezone.now() + timedelta(hours=1)) == []
    assert Delivery.objects.count() == 1


def test_scan_records_batch_finished_failed_and_breakage_once():
    done = ChangeItemFactory(state="applied").batch
    failed = ChangeItemFactory(state="failed", error_code="UnauthorizedOperation").batch
    running = ChangeItemFactory(state="queued").batch
    broken_item = ChangeItemFactory(state="applied", breakage_suspected=True)
    broken = broken_item.batch
    broken.breakage_flagged_at = timezone.now()
    broken.save()

    notify.scan_batches()
    notify.scan_batches()  # again: nothing recorded twice

    kinds = {(e.kind, e.key) for e in NotificationEvent.objects.all()}
    assert kinds == {
        (EventKind.BATCH_FINISHED, f"batch:{done.pk}"), (EventKind.BATCH_FAILED, f"batch:{failed.pk}"),
        (EventKind.BATCH_FINISHED, f"batch:{broken.pk}"), (EventKind.BREAKAGE, f"batch:{broken.pk}"),
    }
    assert running.pk not in {int(k.split(":")[1]) for _, k in kinds}
    text = NotificationEvent.objects.get(kind=EventKind.BATCH_FAILED).text
    assert "1 failed" in text and failed.get_absolute_url() in text
    assert "1 instance(s) refuse IMDSv1" in NotificationEvent.objects.get(kind=EventKind.BREAKAGE).text


@pytest.mark.parametrize("fields, error", [
    ({"email_to": "not-an-address"}, "is not an email address"),
    ({"apprise_urls": "bogus://nowhere"}, "is not a URL apprise can send to"),
    ({}, "Give at least one email address or apprise URL"),
    ({"email_to": "a@example.com", "interval_minutes": "0"}, "greater than or equal to 1"),
])
def test_admin_refuses_a_rule_that_cannot_be_sent(client, fields, error):
    client.force_login(UserFactory(role="admin"))
    data = {"name": "r", "event": EventKind.NEW_V1, "enabled": "on", "interval_minutes": "15", "email_to": "",
            "apprise_urls": "", **fields}
    page = client.post(reverse("admin:fleet_notificationrule_add"), data)
    assert page.status_code == 200 and error in page.content.decode()
    assert not NotificationRule.objects.exists()


def test_admin_creates_a_rule_and_viewers_cannot(client):
    client.force_login(UserFactory(role="admin"))
    page = client.post(reverse("admin:fleet_notificationrule_add"), {
        "name": "breakage", "event": EventKind.BREAKAGE, "enabled": "on", "interval_minutes": "5",
        "email_to": "sec@example.com", "apprise_urls": "slack://T000/B000/XXXXXXXX"})
    assert page.status_code == 302 and NotificationRule.objects.get().urls == ["slack://T000/B000/XXXXXXXX"]
    client.force_login(UserFactory(role="viewer"))
    assert client.get(reverse("admin:fleet_notificationrule_changelist")).status_code == 302  # not staff: login
    operator = UserFactory(role="operator")
    operator.is_staff = True
    operator.save()
    client.force_login(operator)
    assert client.get(reverse("admin:fleet_notificationrule_changelist")).status_code == 403


def test_a_delivery_enqueued_twice_is_attempted_once(smtp):
    rule(email_to="sec@example.com")
    event()
    [delivery] = notify.dispatch()
    notify.send(delivery.pk, attempt=0)
    notify.send(delivery.pk, attempt=0)  # the same task again (re-dispatched while queued)
    assert len(smtp.messages) == 1
    delivery.refresh_from_db()
    assert delivery.attempts == 1 and delivery.status == DeliveryStatus.SENT


def test_the_task_retries_with_the_next_attempt_number(smtp, monkeypatch):
    from fleet import tasks

    calls, retried = [], {}

    def failing_send(pk, attempt, final):
        calls.append((attempt, final))
        raise notify.DeliveryFailed("url 1: refused")

    monkeypatch.setattr(notify, "send", failing_send)

    def retry(args, exc, countdown):
        retried.update(args=args, countdown=countdown)
        return RuntimeError("retry")

    monkeypatch.setattr(tasks.send_delivery, "retry", retry)
    with pytest.raises(RuntimeError):
        tasks.send_delivery.run(42, 0)
    assert calls == [(0, False)] and retried == {"args": (42, 1), "countdown": 5}
