"""What the engine's workers coordinate through the cache: the one runner per account/region,
the backoff streak after AWS throttled us, and the at-most-every-few-seconds posture refresh."""

import random
import time
import uuid

from django.core.cache import cache

RUNNER_TTL = 60
# A runner renews its lock at most this often (a Redis round trip per item is not needed).
RUNNER_RENEW_SECONDS = 5
# While changes run, a region's summary is refreshed at most this often (and at once when its
# queue, or its last tracking round, is done): each refresh recounts the whole region, and at
# AWS's rate a runner or tracking round ends every second or two in every region.
POSTURE_REFRESH_SECONDS = 15


class RegionLock:
    """At most one runner per account/region; expires by itself if its worker dies."""

    def __init__(self, account_pk, region):
        self.key = f"imdsweb:runner:{account_pk}:{region}"
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
        return cache.get(f"imdsweb:runner:{account_pk}:{region}") is not None


def posture_refresh_due(account_pk, region):
    """True at most once per POSTURE_REFRESH_SECONDS per account/region, across workers."""
    return cache.add(f"imdsweb:posture:{account_pk}:{region}", 1, POSTURE_REFRESH_SECONDS)


def _backoff_key(account_pk, region):
    return f"imdsweb:backoff:{account_pk}:{region}"


def backoff(account_pk, region):
    """Jittered exponential backoff after AWS throttled or failed us (full jitter, cap 60 s)."""
    key = _backoff_key(account_pk, region)
    streak = cache.get(key, 0) + 1
    cache.set(key, streak, 300)
    return random.uniform(0, min(60.0, 0.5 * 2**streak))


def clear_backoff(account_pk, region):
    """AWS took a call: the backoff streak starts over."""
    cache.delete(_backoff_key(account_pk, region))
