"""Counts of AWS calls, throttled calls and errors by code, for ``/metrics``.

Every attempt botocore makes (its own retries included: each is a call AWS's bucket sees) is
counted from botocore's ``needs-retry`` event (and ``after-call-error`` for an unparsable answer), registered on each client ``session.client``
builds, so no call site changes. Counts go to one Redis hash shared by every worker and web
process; without Redis they stay in the process. Counters only grow; a Redis restart resets
them, which Prometheus's ``rate()`` handles as a counter reset.

Outside a task each attempt is sent at once (its HINCRBYs pipelined). A worker's task holds its
counts (``hold``) and sends them in one round trip when it ends (``flush``, from Celery's
task_prerun/postrun signals): a runner's task makes a dozen calls, and a round trip per call was
5 % of a worker's CPU at AWS's rate (P5b). A worker killed mid-task loses that task's counts.
"""

import logging
import threading
import time
from collections import Counter

import botocore.parsers
import redis
from django.conf import settings

log = logging.getLogger(__name__)

KEY = "imdsweb:aws-calls"
THROTTLE_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException"})

_local = Counter()
_lock = threading.Lock()
# Counts held during a task (``hold``/``flush``); ``_holds`` is the depth (an eager task in a task).
_held = Counter()
_holds = 0
_redis = None
_redis_failed_at = 0.0


def _client():
    global _redis, _redis_failed_at
    if not settings.IMDSWEB_REDIS_URL or (_redis is None and time.monotonic() - _redis_failed_at < 30):
        return _redis
    if _redis is None:
        try:
            _redis = redis.Redis.from_url(settings.IMDSWEB_REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
            _redis.ping()
        except redis.RedisError:
            _redis, _redis_failed_at = None, time.monotonic()
    return _redis


def field(kind, service, operation, code=""):
    return f"{kind}|{service}|{operation}|{code}"


def record(service, operation, code=""):
    fields = [field("calls", service, operation)]
    if code:
        fields.append(field("errors", service, operation, code))
        if code in THROTTLE_CODES:
            fields.append(field("throttled", service, operation))
    with _lock:
        if _holds:
            _held.update(fields)
            return
    _send(Counter(fields))


def hold():
    """Until the matching ``flush``, count this process's calls here and send them then."""
    global _holds
    with _lock:
        _holds += 1


def flush():
    """End a ``hold``: the outermost one sends what was held, in one round trip."""
    global _holds
    with _lock:
        _holds = max(0, _holds - 1)
        if _holds or not _held:
            return
        counts = Counter(_held)
        _held.clear()
    _send(counts)


def _send(counts):
    conn = _client()
    if conn is not None:
        try:
            pipe = conn.pipeline(transaction=False)
            for name, n in counts.items():
                pipe.hincrby(KEY, name, n)
            pipe.execute()
            return
        except redis.RedisError as exc:
            global _redis
            _redis = None
            log.debug("AWS call counters: Redis unreachable (%s); counting in-process", exc)
    with _lock:
        _local.update(counts)


def _on_attempt(response=None, operation=None, caught_exception=None, **kwargs):
    """botocore ``needs-retry`` handler: one per attempt. Returns None (no say in retrying)."""
    try:
        service = operation.service_model.service_id.hyphenize()  # as event names spell it
        if response is not None:
            code = response[1].get("Error", {}).get("Code", "") if isinstance(response[1], dict) else ""
        else:
            code = type(caught_exception).__name__ if caught_exception is not None else ""
        record(service, operation.name, code)
    except Exception:  # counting must never break a call
        log.debug("AWS call not counted", exc_info=True)


def _on_unparsed(exception=None, event_name="", **kwargs):
    """``after-call-error`` handler: a response botocore could not parse (an HTML error page)
    raises before ``needs-retry`` sees it; every other failure was counted there already."""
    if isinstance(exception, botocore.parsers.ResponseParserError):
        _, service, operation = (event_name.split(".", 2) + ["", ""])[:3]
        record(service, operation, "InvalidResponse")


def instrument(client):
    client.meta.events.register("needs-retry.*.*", _on_attempt, unique_id="imdsweb-aws-counters")
    client.meta.events.register("after-call-error.*.*", _on_unparsed, unique_id="imdsweb-aws-counters-unparsed")
    return client


def snapshot():
    """{(kind, service, operation, code): n} across every process (Redis) plus this one's own."""
    counts = Counter()
    conn = _client()
    if conn is not None:
        try:
            for name, value in conn.hgetall(KEY).items():
                counts[name.decode()] += int(value)
        except redis.RedisError:
            pass
    with _lock:
        counts.update(_local)
        counts.update(_held)
    return {tuple(name.split("|", 3)): n for name, n in counts.items()}

