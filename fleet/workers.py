"""The worker heartbeat: is any Celery worker taking work?

Each worker notes, in the shared cache, when it starts a task and under which hostname (a
Celery ``task_prerun`` signal, see ``fleet.tasks``). The pages compare that with the queue: when
items have been queued for a while and no worker has taken work for as long, the engine is
stalled (no worker was started, or none reaches the broker) and the overview and the batch page
say so, with the command that starts one. Celery's own worker heartbeats are broker events that
only a running monitor (``celery events``) would collect; one cache key answers the question the
pages ask, at the cost of one SET every few seconds per worker process.
"""

import logging
import time
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import cache
from django.db.models import Min
from django.utils import timezone

from .choices import ItemState
from .models import ChangeItem

log = logging.getLogger(__name__)

KEY = "imdsweb:worker:heartbeat"
# A worker process writes the key at most this often (the stall limit is a minute).
WRITE_EVERY_SECONDS = 5
# The README's commands (section "Running the engine").
WORKER_COMMAND = ".venv/bin/celery -A imdsweb worker -l info -O fair"
BEAT_COMMAND = ".venv/bin/celery -A imdsweb beat -l info"

_written_at = 0.0


def heartbeat(hostname):
    """Note that this worker (``hostname``, Celery's ``name@host``) is taking work now."""
    global _written_at
    now = time.time()
    if now - _written_at < WRITE_EVERY_SECONDS:
        return
    try:
        cache.set(KEY, {"hostname": hostname, "at": now}, timeout=None)
        _written_at = now
    except Exception as exc:  # noqa: BLE001 - the cache being down must not fail the task itself
        log.warning("worker heartbeat not written: %s", exc)


def last_heartbeat():
    """``{"hostname", "at": aware datetime}`` of the last worker seen taking work, or None."""
    value = cache.get(KEY)
    if not value:
        return None
    return {"hostname": value["hostname"], "at": datetime.fromtimestamp(value["at"], tz=UTC)}


def stalled(batch=None):
    """None while workers take work; else what the pages say: how many items (of ``batch``, or
    of every batch) have been queued longer than ``IMDSWEB_WORKER_STALL_SECONDS`` while no worker
    took work for as long, since when, and the last worker seen (None: never one)."""
    limit = timezone.timedelta(seconds=settings.IMDSWEB_WORKER_STALL_SECONDS)
    now = timezone.now()
    try:
        last = last_heartbeat()
    except Exception as exc:  # noqa: BLE001 - the page still renders; the cache's state is unknown
        log.warning("worker heartbeat not readable: %s", exc)
        return None
    if last and now - last["at"] < limit:
        return None
    queued = ChangeItem.objects.filter(state=ItemState.QUEUED, created_at__lt=now - limit)
    if batch is not None:
        queued = queued.filter(batch=batch)
    found = queued.aggregate(oldest=Min("created_at"))
    if found["oldest"] is None:
        return None
    return {
        "queued": queued.count(), "oldest": found["oldest"], "last": last,
        "worker_command": WORKER_COMMAND, "beat_command": BEAT_COMMAND,
    }
