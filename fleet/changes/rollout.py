"""Staged rollouts, windows and four-eyes approval: the gates in front of the change engine.

A batch's items carry a wave number from the start (``assign_waves``); the runner claims only
``ChangeItem.objects.claimable()`` — items of released waves, of batches not awaiting approval,
inside their allowed time (``run_from`` .. ``run_until``, kept here on the current or next opening
of the batch's window). Nothing else in the engine knows about waves.

``advance_all`` (the beat's ``advance_rollouts``) moves batches on:

- a wave whose items are all done starts its soak (``soak_seconds``, shortened by
  ``IMDSWEB_ROLLOUT_TIME_SCALE`` in tests, as the simulator's time scale shortens AWS's minutes);
  a wave with failed or stuck items pauses instead: an operator decides;
- during the soak, CloudWatch ``MetadataNoTokenRejected`` of the wave's applied instances: any
  refused IMDSv1 call pauses the batch, flags likely breakage on those items and names them; the
  wave can be rolled back (``fleet.changes.rollbacks.plan_rollback`` restricted to it). A reading
  that fails keeps the batch soaking (no evidence is no all-clear). A clean soak releases the next
  wave;
- a window that closed moves ``run_from``/``run_until`` to its next opening; an approval request
  past its expiry cancels the batch's queued items.

Operators promote (release the next wave now) or abort (cancel every queued item) at any time.
Every step is a BatchEvent, and every move is a conditional UPDATE from the state it was decided
in, so a tick and an operator's click never both act on one step.

Hand-written: no library models wave/soak gates over Celery; the window arithmetic is zoneinfo's.
"""

import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from .. import aws
from ..choices import ApprovalState, BatchEventKind, ItemState, RolloutState, WaveMode
from ..models import Account, BatchEvent, ChangeBatch, ChangeItem
from .validation import ChangeRefused

log = logging.getLogger(__name__)

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
UPDATE_CHUNK = 5000
TICK_LOCK = "imdsweb:rollout-tick"
# Items of a wave still moving (an item waiting for its stopped instance to start is done for now).
MOVING = Q(state__in=[ItemState.QUEUED, ItemState.SUBMITTING]) | Q(state=ItemState.PENDING, awaiting_start=False)
ACTIVE_ROLLOUT = [RolloutState.RUNNING, RolloutState.SOAKING, RolloutState.PAUSED]


@dataclass
class RolloutOptions:
    """What the confirmation page (or the API, a command) asked for."""

    mode: str = WaveMode.NONE
    canary: str = ""  # N, a percentage, key=value, or one line of accounts/OUs per wave
    rest_waves: int = 1
    soak_minutes: float = 0
    start_at: datetime | None = None
    window: dict = field(default_factory=dict)

    @property
    def gated(self):
        """Whether this asks for waves, a scheduled start or a window (the soak matters only with waves)."""
        return self.mode != WaveMode.NONE or self.start_at is not None or bool(self.window)


def _event(batch, kind, user=None, wave=None, text=""):
    BatchEvent.objects.create(batch=batch, kind=kind, user=user if user and user.is_authenticated else None,
                              wave=wave, text=text[:4000])


def _who(user):
    return getattr(user, "username", None) or "system"


def _dispatch_on_commit(batch_pk):
    from .requests import _dispatch_on_commit as dispatch

    dispatch(ChangeBatch(pk=batch_pk))


# ---------------------------------------------------------------- windows


def parse_window(days, start, end, tz):
    """A recurring window as stored on a batch; ValueError with a reason on bad input."""
    if not days:
        raise ValueError("choose at least one day for the window")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r}") from None
    if start == end:
        raise ValueError("the window must not start and end at the same time")
    return {"days": sorted({int(d) for d in days}), "start": start.strftime("%H:%M"), "end": end.strftime("%H:%M"),
            "tz": tz}


def next_opening(window, now):
    """(opens, closes) of the window's current opening if ``now`` is inside one, else its next.
    A window whose end is not after its start runs over midnight into the next day."""
    tz = ZoneInfo(window["tz"])
    start, end = time.fromisoformat(window["start"]), time.fromisoformat(window["end"])
    local = now.astimezone(tz).date()
    for offset in range(-1, 9):
        day = local + timedelta(days=offset)
        if day.weekday() not in window["days"]:
            continue
        opens = datetime.combine(day, start, tzinfo=tz)
        closes = datetime.combine(day if end > start else day + timedelta(days=1), end, tzinfo=tz)
        if closes > now:
            return opens, closes
    raise ValueError("the window never opens")  # pragma: no cover - days is never empty


def describe_window(window):
    if not window:
        return ""
    days = ", ".join(DAYS[d] for d in window["days"])
    return f"{days} {window['start']}–{window['end']} {window['tz']}"


def _gate_times(start_at, window, now):
    """run_from / run_until for a batch with this schedule, from ``now`` on."""
    if not window:
        return start_at, None
    opens, closes = next_opening(window, max(now, start_at) if start_at else now)
    return (max(opens, start_at) if start_at else opens), closes


# ---------------------------------------------------------------- waves


def _tokens(line):
    return [token for token in re.split(r"[\s,]+", line.strip()) if token]


def _rest_split(groups, rest_waves, first_wave):
    """{pk: wave}: each account/region's remaining items split in order over ``rest_waves`` waves."""
    waves = {}
    for pks in groups.values():
        for index, pk in enumerate(sorted(pks)):
            waves[pk] = first_wave + index * rest_waves // len(pks)
    return waves


def check_canary(mode, canary):
    """The canary's size (a number) or tag ((key, value)) as written; ChangeRefused when it is
    not well formed (the form shows it on the field)."""
    canary = canary.strip()
    if mode in (WaveMode.COUNT, WaveMode.PERCENT):
        try:
            value = float(canary.rstrip("%"))
        except ValueError:
            raise ChangeRefused(f"The canary size {canary!r} is not a number.") from None
        if value <= 0 or (mode == WaveMode.PERCENT and value >= 100) or (mode == WaveMode.COUNT and value != int(value)):
            raise ChangeRefused("The canary is a whole number of instances (at least 1) or a percentage between "
                                "0 and 100.")
        return value
    if mode == WaveMode.TAG:
        key, sep, value = canary.partition("=")
        if not sep or not key.strip():
            raise ChangeRefused("The canary tag is key=value, e.g. Env=sandbox.")
        return key.strip(), value.strip()
    if mode == WaveMode.ACCOUNTS:
        if not canary:
            raise ChangeRefused("Name the accounts or OUs of each wave, one wave per line (e.g. sandbox, then "
                                "staging, then prod).")
        return canary
    raise ChangeRefused(f"Unknown wave mode {mode!r}.")


def _canary_waves(options, rows):
    """{pk: wave} for the waves before the rest, and their labels."""
    mode, canary = options.mode, options.canary.strip()
    by_region = defaultdict(list)
    for row in rows:
        by_region[(row[1], row[2])].append(row[0])
    checked = check_canary(mode, canary)
    if mode in (WaveMode.COUNT, WaveMode.PERCENT):
        value = checked
        chosen = {}
        for pks in by_region.values():
            size = int(value) if mode == WaveMode.COUNT else math.ceil(len(pks) * value / 100)
            chosen.update(dict.fromkeys(sorted(pks)[:size], 0))
        unit = f"{int(value)} instance(s)" if mode == WaveMode.COUNT else f"{value:g}%"
        return chosen, [f"canary: {unit} per account/region"]
    if mode == WaveMode.TAG:
        key, value = checked
        chosen = {row[0]: 0 for row in rows if (row[3] or {}).get(key) == value}
        if not chosen:
            raise ChangeRefused(f"No queued instance has the tag {key}={value}: the canary would be empty.")
        return chosen, [f"canary: instances tagged {key}={value}"]
    if mode == WaveMode.ACCOUNTS:
        lines = [_tokens(line) for line in canary.splitlines() if line.strip()]
        known = {}
        for account in Account.objects.all().only("pk", "account_id", "name", "ou_id"):
            for name in (account.account_id, account.name, account.ou_id):
                if name:
                    known.setdefault(name, set()).add(account.pk)
        chosen, labels = {}, []
        for wave, tokens in enumerate(lines):
            unknown = [token for token in tokens if token not in known]
            if unknown:
                raise ChangeRefused(f"Wave {wave + 1}: no account or OU named {', '.join(unknown)}.")
            accounts = set().union(*(known[token] for token in tokens))
            members = [row[0] for row in rows if row[1] in accounts and row[0] not in chosen]
            if not members:
                raise ChangeRefused(f"Wave {wave + 1} ({' '.join(tokens)}) has no queued instance.")
            chosen.update(dict.fromkeys(members, wave))
            labels.append(" ".join(tokens))
        return chosen, labels
    raise ChangeRefused(f"Unknown wave mode {mode!r}.")  # pragma: no cover - check_canary refused it


def assign_waves(batch, options, now):
    """Give the batch's queued items their wave numbers and the batch its rollout state."""
    if not 1 <= options.rest_waves <= 20:
        raise ChangeRefused("The rest runs in 1 to 20 waves.")
    if options.soak_minutes < 0 or options.soak_minutes > 7 * 24 * 60:
        raise ChangeRefused("The soak time is between 0 minutes and 7 days.")
    rows = list(batch.items.filter(state=ItemState.QUEUED).values_list("pk", "account_id", "region", "instance__tags"))
    chosen, labels = _canary_waves(options, rows)
    rest = defaultdict(list)
    for pk, account_pk, region, _tags in rows:
        if pk not in chosen:
            rest[(account_pk, region)].append(pk)
    first_rest = len(labels)
    waves = {**chosen, **_rest_split(rest, options.rest_waves, first_rest)}
    used = sorted(set(waves.values()))
    renumber = {wave: index for index, wave in enumerate(used)}  # a rest split finer than its items
    all_labels = labels + [("the rest" if options.rest_waves == 1 else f"the rest, part {n + 1} of {options.rest_waves}")
                           for n in range(options.rest_waves)]
    by_wave = defaultdict(list)
    for pk, wave in waves.items():
        by_wave[renumber[wave]].append(pk)
    for wave, pks in by_wave.items():
        if wave:  # wave 0 is every item's default
            for offset in range(0, len(pks), UPDATE_CHUNK):
                ChangeItem.objects.filter(pk__in=pks[offset : offset + UPDATE_CHUNK]).update(wave=wave)
    batch.waves = len(used)
    batch.wave_labels = [all_labels[wave] for wave in used]
    batch.released_wave = 0
    batch.soak_seconds = round(options.soak_minutes * 60)
    batch.rollout_state = RolloutState.RUNNING
    batch.wave_started_at = now


def approval_configured():
    """Whether any batch may need a second person's approval (the settings' four-eyes rule)."""
    return bool(settings.IMDSWEB_APPROVAL_MIN_ITEMS or settings.IMDSWEB_APPROVAL_ACCOUNTS)


def approval_needed(batch):
    """Why this batch needs a second person's approval (IMDSWEB_APPROVAL_MIN_ITEMS,
    IMDSWEB_APPROVAL_ACCOUNTS), or ""."""
    minimum, accounts = settings.IMDSWEB_APPROVAL_MIN_ITEMS, settings.IMDSWEB_APPROVAL_ACCOUNTS
    if not minimum and not accounts:
        return ""
    queued = batch.items.filter(state=ItemState.QUEUED)
    reasons = []
    if minimum:
        count = queued.count()
        if count >= minimum:
            reasons.append(f"{count:,} instances (approval needed from {minimum:,})")
    if accounts:
        touched = Account.objects.filter(Q(account_id__in=accounts) | Q(name__in=accounts) | Q(ou_id__in=accounts),
                                         pk__in=queued.values("account_id"))
        names = sorted(account.name or account.account_id for account in touched)
        if names:
            reasons.append(f"touches {', '.join(names)}")
    return "; ".join(reasons)


def prepare(batch, options, user, now):
    """Inside the request's transaction, once its items exist: waves, schedule and approval."""
    if options.mode != WaveMode.NONE:
        assign_waves(batch, options, now)
    if options.start_at and options.start_at <= now:
        raise ChangeRefused("The scheduled start is in the past.")
    batch.start_at, batch.window = options.start_at, options.window or {}
    batch.run_from, batch.run_until = _gate_times(batch.start_at, batch.window, now)
    reason = approval_needed(batch)
    if reason:
        batch.approval = ApprovalState.AWAITING
        batch.approval_reason = reason
        batch.approval_expires_at = now + timedelta(hours=settings.IMDSWEB_APPROVAL_EXPIRY_HOURS)
    batch.save()
    if reason:
        _event(batch, BatchEventKind.APPROVAL_REQUESTED, user, text=f"by {_who(user)}: {reason}")


# ---------------------------------------------------------------- approval


def approve(batch, user):
    if batch.approval != ApprovalState.AWAITING:
        raise ChangeRefused(f"Batch #{batch.pk} is not awaiting approval.")
    if batch.created_by_id is not None and batch.created_by_id == user.pk:
        raise ChangeRefused("You requested this batch: a second person has to approve it.")
    now = timezone.now()
    if batch.approval_expires_at and batch.approval_expires_at <= now:
        raise ChangeRefused("This approval request has expired; request the change again.")
    with transaction.atomic():
        done = ChangeBatch.objects.filter(pk=batch.pk, approval=ApprovalState.AWAITING).update(
            approval=ApprovalState.APPROVED, approved_by=user, approved_at=now)
        if not done:
            raise ChangeRefused(f"Batch #{batch.pk} was approved or refused at the same moment.")
        _event(batch, BatchEventKind.APPROVED, user, text=f"approved by {_who(user)}")
        _dispatch_on_commit(batch.pk)
    return f"Batch #{batch.pk} approved; it runs now" + (" (within its window)." if batch.run_from else ".")


def refuse(batch, user, reason=""):
    if batch.approval != ApprovalState.AWAITING:
        raise ChangeRefused(f"Batch #{batch.pk} is not awaiting approval.")
    with transaction.atomic():
        done = ChangeBatch.objects.filter(pk=batch.pk, approval=ApprovalState.AWAITING).update(
            approval=ApprovalState.REFUSED, approved_by=user, approved_at=timezone.now())
        if not done:
            raise ChangeRefused(f"Batch #{batch.pk} was approved or refused at the same moment.")
        text = f"refused by {_who(user)}" + (f": {reason}" if reason else "")
        cancelled = batch.items.filter(state=ItemState.QUEUED).update(
            state=ItemState.CANCELLED, reason=f"approval {text}"[:2000], finished_at=timezone.now())
        _event(batch, BatchEventKind.REFUSED, user, text=text)
    return f"Batch #{batch.pk} refused: {cancelled:,} queued item(s) cancelled."


# ---------------------------------------------------------------- operators


def _release(batch, wave, user, kind, text, now):
    """Release ``wave`` if the batch is still where the caller saw it; True when it did."""
    moved = ChangeBatch.objects.filter(
        pk=batch.pk, released_wave=wave - 1, rollout_state__in=ACTIVE_ROLLOUT
    ).update(released_wave=wave, rollout_state=RolloutState.RUNNING, wave_started_at=now, soak_until=None,
             rollout_note="")
    if moved:
        _event(batch, kind, user, wave=wave, text=text)
        _dispatch_on_commit(batch.pk)
    return bool(moved)


def promote(batch, user):
    if batch.rollout_state not in ACTIVE_ROLLOUT:
        raise ChangeRefused(f"Batch #{batch.pk} has no rollout in progress.")
    wave = batch.released_wave + 1
    if wave >= batch.waves:
        raise ChangeRefused("Every wave is already released.")
    with transaction.atomic():
        if not _release(batch, wave, user, BatchEventKind.PROMOTED,
                        f"wave {wave + 1} released by {_who(user)}", timezone.now()):
            raise ChangeRefused("The rollout moved on at the same moment; look again.")
    return f"Wave {wave + 1} of batch #{batch.pk} released."


def abort(batch, user, text=None):
    if batch.rollout_state not in ACTIVE_ROLLOUT:
        raise ChangeRefused(f"Batch #{batch.pk} has no rollout in progress.")
    with transaction.atomic():
        moved = ChangeBatch.objects.filter(pk=batch.pk, rollout_state__in=ACTIVE_ROLLOUT).update(
            rollout_state=RolloutState.ABORTED, soak_until=None)
        if not moved:
            raise ChangeRefused("The rollout was stopped at the same moment.")
        text = text or f"aborted by {_who(user)}"
        cancelled = batch.items.filter(state=ItemState.QUEUED).update(
            state=ItemState.CANCELLED, reason=f"rollout {text}"[:2000], finished_at=timezone.now())
        _event(batch, BatchEventKind.ABORTED, user, wave=batch.released_wave, text=text)
    return f"Rollout of batch #{batch.pk} aborted: {cancelled:,} queued item(s) cancelled."


def stopped_by_rollback(batch, user, rollback_batch):
    """Inside the rollback's transaction: a rolled-back rollout goes no further."""
    if batch.rollout_state in ACTIVE_ROLLOUT:
        ChangeBatch.objects.filter(pk=batch.pk).update(rollout_state=RolloutState.ABORTED, soak_until=None)
        _event(batch, BatchEventKind.ABORTED, user, wave=batch.released_wave,
               text=f"rolled back by batch #{rollback_batch.pk} ({_who(user)})")


# ---------------------------------------------------------------- the beat's tick


def _time_scale():
    return settings.IMDSWEB_ROLLOUT_TIME_SCALE or 1.0


def _pause(batch, wave, text, now, from_state):
    moved = ChangeBatch.objects.filter(pk=batch.pk, rollout_state=from_state, released_wave=wave).update(
        rollout_state=RolloutState.PAUSED, rollout_note=text[:4000], soak_until=None)
    if moved:
        _event(batch, BatchEventKind.PAUSED, wave=wave, text=text)
    return bool(moved)


def _wave_done(batch, now):
    wave = batch.released_wave
    items = batch.items.filter(wave=wave)
    if items.filter(MOVING).exists():
        return False
    broken = items.filter(state__in=[ItemState.FAILED, ItemState.STUCK]).count()
    if broken:
        _pause(batch, wave, f"{broken:,} item(s) of wave {wave + 1} failed or are stuck: promote to go on anyway, "
                            "or abort.", now, RolloutState.RUNNING)
        return False
    if wave + 1 >= batch.waves:
        if ChangeBatch.objects.filter(pk=batch.pk, rollout_state=RolloutState.RUNNING, released_wave=wave).update(
                rollout_state=RolloutState.COMPLETE):
            _event(batch, BatchEventKind.COMPLETED, wave=wave, text="every wave released and done")
        return False
    until = now + timedelta(seconds=batch.soak_seconds / _time_scale())
    if ChangeBatch.objects.filter(pk=batch.pk, rollout_state=RolloutState.RUNNING, released_wave=wave).update(
            rollout_state=RolloutState.SOAKING, soak_until=until):
        _event(batch, BatchEventKind.SOAK_STARTED, wave=wave,
               text=f"watching MetadataNoTokenRejected of wave {wave + 1} for {batch.soak_seconds // 60} min")
    return True


def soak_reading(batch):
    """{instance_id: refused IMDSv1 calls} of the current wave's applied instances since it was
    released. Raises aws.AwsError when CloudWatch cannot be read."""
    items = batch.items.filter(wave=batch.released_wave, state=ItemState.APPLIED, instance__isnull=False)
    by_region = defaultdict(list)
    for account_pk, region, instance_id in items.values_list("account_id", "region", "instance__instance_id"):
        by_region[(account_pk, region)].append(instance_id)
    accounts = Account.objects.in_bulk({pk for pk, _ in by_region})
    since = batch.wave_started_at or batch.created_at
    rejected = {}
    for (account_pk, region), ids in by_region.items():
        rejected.update(aws.get_rejected_calls(accounts[account_pk], region, ids, since))
    return rejected


def _soak(batch, now):
    wave = batch.released_wave
    try:
        rejected = soak_reading(batch)
    except aws.AwsError as exc:
        note = (f"CloudWatch could not be read ({exc.code}: {exc.message}); wave {wave + 2} waits until a reading "
                "succeeds.")[:4000]
        ChangeBatch.objects.filter(pk=batch.pk, rollout_state=RolloutState.SOAKING).update(rollout_note=note)
        log.warning("batch %s soak: %s", batch.pk, note)
        return False
    refusing = sorted(instance_id for instance_id, calls in rejected.items() if calls > 0)
    if refusing:
        names = ", ".join(refusing[:20]) + (f" and {len(refusing) - 20:,} more" if len(refusing) > 20 else "")
        text = (f"Likely breakage: {len(refusing):,} instance(s) of wave {wave + 1} refused IMDSv1 calls during the "
                f"soak (MetadataNoTokenRejected): {names}. Roll back wave {wave + 1}, or fix the callers and "
                "promote.")
        with transaction.atomic():
            if _pause(batch, wave, text, now, RolloutState.SOAKING):
                batch.items.filter(wave=wave, instance__instance_id__in=refusing).update(breakage_suspected=True)
                ChangeBatch.objects.filter(pk=batch.pk, breakage_flagged_at__isnull=True).update(breakage_flagged_at=now)
        return False
    if batch.soak_until and now >= batch.soak_until:
        with transaction.atomic():
            return _release(batch, wave + 1, None, BatchEventKind.WAVE_RELEASED,
                            f"clean soak of wave {wave + 1}: no IMDSv1 call refused", now)
    if batch.rollout_note:
        ChangeBatch.objects.filter(pk=batch.pk, rollout_state=RolloutState.SOAKING).update(rollout_note="")
    return False


def _expire_approval(batch, now):
    with transaction.atomic():
        if ChangeBatch.objects.filter(pk=batch.pk, approval=ApprovalState.AWAITING).update(
                approval=ApprovalState.EXPIRED):
            cancelled = batch.items.filter(state=ItemState.QUEUED).update(
                state=ItemState.CANCELLED, reason="approval request expired", finished_at=now)
            _event(batch, BatchEventKind.APPROVAL_EXPIRED, text=f"nobody approved it in time; {cancelled:,} "
                                                                "queued item(s) cancelled")


def advance(batch, now=None):
    """One step of one batch; True when it released work (the caller dispatches it)."""
    now = now or timezone.now()
    if batch.approval == ApprovalState.AWAITING and batch.approval_expires_at and batch.approval_expires_at <= now:
        _expire_approval(batch, now)
        return False
    if batch.run_until and batch.run_until <= now and batch.window:
        run_from, run_until = _gate_times(batch.start_at, batch.window, now)
        ChangeBatch.objects.filter(pk=batch.pk, run_until=batch.run_until).update(run_from=run_from,
                                                                                    run_until=run_until)
    if batch.rollout_state == RolloutState.RUNNING:
        _wave_done(batch, now)  # a finished wave starts its soak: nothing new to send yet
        return False
    if batch.rollout_state == RolloutState.SOAKING:
        return _soak(batch, now)
    return False


def advance_all():
    """The beat's tick over every batch with a gate to move. Returns the pks of batches that
    released work (already dispatched on commit; returned for the log)."""
    if not cache.add(TICK_LOCK, 1, 120):
        return []  # the previous tick is still reading CloudWatch
    try:
        now = timezone.now()
        watched = ChangeBatch.objects.filter(
            Q(rollout_state__in=[RolloutState.RUNNING, RolloutState.SOAKING])
            | Q(approval=ApprovalState.AWAITING, approval_expires_at__lte=now)
            | Q(run_until__lte=now, items__state=ItemState.QUEUED)
        ).distinct()
        released = []
        for batch in watched:
            try:
                if advance(batch, now):
                    released.append(batch.pk)
            except Exception:  # one batch's trouble must not stall the others
                log.exception("rollout tick failed for batch %s", batch.pk)
        return released
    finally:
        cache.delete(TICK_LOCK)


# ---------------------------------------------------------------- the batch page


def gate_notes(batch, now=None):
    """What keeps a batch's queued items waiting, in words (the batch page and the API)."""
    now = now or timezone.now()
    notes = []
    if batch.approval == ApprovalState.AWAITING:
        notes.append(f"Awaiting approval by a second operator ({batch.approval_reason}); the request expires "
                     f"{timezone.localtime(batch.approval_expires_at):%Y-%m-%d %H:%M}.")
    if batch.run_from and batch.run_from > now:
        what = f"its window ({describe_window(batch.window)})" if batch.window else "its scheduled start"
        notes.append(f"Waiting for {what}: items are sent from {timezone.localtime(batch.run_from):%Y-%m-%d %H:%M}.")
    elif batch.run_until and batch.run_until <= now:
        notes.append(f"Its window ({describe_window(batch.window)}) has closed; items wait for the next opening.")
    elif batch.run_until:
        notes.append(f"Inside its window ({describe_window(batch.window)}) until "
                     f"{timezone.localtime(batch.run_until):%Y-%m-%d %H:%M}.")
    return notes


def wave_rows(batch, now=None):
    """One row per wave: its label, state and item counts, and the soak countdown (seconds)."""
    if not batch.rollout_state:
        return []
    now = now or timezone.now()
    counts = defaultdict(lambda: defaultdict(int))
    for row in batch.items.values("wave", "state").annotate(n=Count("id")).order_by():
        counts[row["wave"]][row["state"]] += row["n"]
    rows, labels = [], batch.wave_labels or []
    for wave in range(batch.waves):
        c = counts[wave]
        if wave > batch.released_wave:
            state = "cancelled" if batch.rollout_state == RolloutState.ABORTED else "waiting"
        elif wave < batch.released_wave:
            state = "done"
        else:
            state = {RolloutState.RUNNING: "running", RolloutState.SOAKING: "soaking", RolloutState.PAUSED: "paused",
                     RolloutState.ABORTED: "aborted", RolloutState.COMPLETE: "done"}.get(batch.rollout_state, "running")
        rows.append({
            "number": wave + 1, "label": labels[wave] if wave < len(labels) else "", "state": state,
            "total": sum(c.values()),
            "applied": c[ItemState.APPLIED], "queued": c[ItemState.QUEUED],
            "failed": c[ItemState.FAILED] + c[ItemState.STUCK], "cancelled": c[ItemState.CANCELLED],
            "soak_left": max(0, round((batch.soak_until - now).total_seconds()))
            if state == "soaking" and batch.soak_until else None,
        })
    return rows
