"""What the engine's workers coordinate through the cache: the one runner per account/region
(and the mark of its next run while it waits for it), the backoff streak after AWS failed us,
and the at-most-every-few-seconds posture refresh."""

import math
import random
import time
import uuid

from django.conf import settings
from django.core.cache import cache

RUNNER_TTL = 60
BACKOFF_CAP_SECONDS = 20.0
# A runner renews its lock at most this often (a Redis round trip per item is not needed).
RUNNER_RENEW_SECONDS = 5
# While changes run, a region's summary is refreshed at most this often (and at once when its
# queue, or its last tracking round, is done): each refresh recounts the whole region, and at
# AWS's rate a runner or tracking round ends every second or two in every region.
POSTURE_REFRESH_SECONDS = 15


class RegionLock:
    """At most one runner per account/region; expires by itself if its worker dies."""

    def __init__(self, account_pk, region):
        self.key = _runner_key(account_pk, region)
        self.token = uuid.uuid4().hex

    def acquire(self):
        self.renewed = time.monotonic()
        return cache.add(self.key, self.token, RUNNER_TTL)

    def refresh(self):
        if time.monotonic() - self.renewed >= RUNNER_RENEW_SECONDS:
            cache.touch(self.key, RUNNER_TTL)
            self.renewed = time.monotonic()

    def release(self):
        if cache.get(self.key) == self.token:
            cache.delete(self.key)

    @staticmethod
    def held(account_pk, region):
        return cache.get(_runner_key(account_pk, region)) is not None

    @staticmethod
    def queued_again(account_pk, region, delay):
        """The region's runner queued its next run for ``delay`` seconds from now. Between two runs
        no lock is held (at AWS's rate a region's runner waits in its countdown nearly all the
        time): this mark tells the sweeper the region has a runner until that run is
        IMDSWEB_SUBMIT_TIMEOUT_SECONDS late, when it is presumed lost with its worker."""
        cache.set(_queued_key(account_pk, region), 1, math.ceil(delay + settings.IMDSWEB_SUBMIT_TIMEOUT_SECONDS))

    @staticmethod
    def attended(account_pk, region):
        """A runner has the region now, or has queued its next run there."""
        return bool(cache.get_many([_runner_key(account_pk, region), _queued_key(account_pk, region)]))


def _runner_key(account_pk, region):
    return f"imdsweb:runner:{account_pk}:{region}"


def _queued_key(account_pk, region):
    return f"imdsweb:runner-queued:{account_pk}:{region}"


def posture_refresh_due(account_pk, region):
    """True at most once per POSTURE_REFRESH_SECONDS per account/region, across workers."""
    return cache.add(f"imdsweb:posture:{account_pk}:{region}", 1, POSTURE_REFRESH_SECONDS)


def _backoff_key(account_pk, region):
    return f"imdsweb:backoff:{account_pk}:{region}"


def backoff(account_pk, region):
    """Jittered exponential backoff after AWS failed us with a retryable error other than a
    throttle (full jitter, 0.5 s doubling per error in a row, capped at 20 s as botocore's
    standard retry mode is). The streak is the region's errors since AWS last accepted a call."""
    key = _backoff_key(account_pk, region)
    streak = cache.get(key, 0) + 1
    cache.set(key, streak, 300)
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, 0.5 * 2**streak))


def clear_backoff(account_pk, region):
    """AWS took a call: the backoff streak starts over."""
    cache.delete(_backoff_key(account_pk, region))
