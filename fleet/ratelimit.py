"""Token buckets per account/region/action, shared by every worker through Redis.

AWS throttles EC2 per account, per region and per action with token buckets (the EC2 API reference, "Request throttling").
Taking our own token before each call keeps a whole worker fleet under AWS's refill rate, so
calls are paced instead of being refused with ``RequestLimitExceeded``. No maintained library
offers a Redis token bucket with a burst size and a fractional refill rate, hence this small
Lua script: one atomic round trip per token.

When Redis cannot be reached (the embedded demo without Redis) the buckets live in the
process, which is exact for the single worker that setup runs.
"""

import logging
import threading
import time

import redis
from django.conf import settings

log = logging.getLogger(__name__)

# KEYS[1] bucket; ARGV: capacity, refill per second, now (s), only_if_available (0/1).
# Returns the seconds to wait for the token (0 = taken now).
# - only_if_available=0 ("reserve"): the token is always taken, possibly on credit; a caller that
#   must wait has its token already, so waiting callers are served in order, never starved.
# - only_if_available=1 ("try"): the token is taken only if it is there now; otherwise nothing is
#   taken and the caller learns when one will be, so a worker can do other work meanwhile.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if ARGV[4] == '1' and tokens < 1 then
  wait = (1 - tokens) / rate
else
  tokens = tokens - 1
  if tokens < 0 then wait = -tokens / rate end
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now)
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 60)
return tostring(wait)
"""


class _LocalBuckets:
    def __init__(self):
        self._lock = threading.Lock()
        self._state = {}

    def take(self, key, capacity, rate, now, only_if_available=False):
        with self._lock:
            tokens, ts = self._state.get(key, (capacity, now))
            tokens = min(capacity, tokens + max(0.0, now - ts) * rate)
            if only_if_available and tokens < 1:
                self._state[key] = (tokens, now)
                return (1 - tokens) / rate
            tokens -= 1
            self._state[key] = (tokens, now)
        return 0.0 if tokens >= 0 else -tokens / rate


_local = _LocalBuckets()
_redis = None
_redis_failed_at = 0.0


def _client():
    global _redis, _redis_failed_at
    if not settings.IMDSWEB_REDIS_URL:
        return None
    if _redis is None and time.monotonic() - _redis_failed_at > 30:
        try:
            conn = redis.Redis.from_url(settings.IMDSWEB_REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
            conn.ping()
            _redis = conn
        except redis.RedisError as exc:
            _redis_failed_at = time.monotonic()
            log.warning("rate limiter: Redis unreachable (%s); using in-process buckets", exc)
    return _redis


def limits_for(action):
    capacity, rate = settings.IMDSWEB_RATE_LIMITS.get(action, (50, 5.0))
    return capacity, rate * settings.IMDSWEB_RATE_TIME_SCALE * settings.IMDSWEB_RATE_HEADROOM


def _take(account_id, region, action, only_if_available):
    global _redis
    capacity, rate = limits_for(action)
    key = f"imdsweb:bucket:{account_id}:{region}:{action}"
    conn = _client()
    if conn is not None:
        try:
            return float(conn.eval(_TAKE, 1, key, capacity, rate, time.time(), int(only_if_available)))
        except redis.RedisError as exc:
            log.warning("rate limiter: Redis error (%s); using in-process buckets", exc)
            _redis = None
    return _local.take(key, capacity, rate, time.time(), only_if_available)


def reserve(account_id, region, action):
    """Take one token; return how many seconds the caller must wait before using it."""
    return _take(account_id, region, action, only_if_available=False)


def try_take(account_id, region, action):
    """Take one token if one is there now (returns 0), else return the seconds until one is."""
    return _take(account_id, region, action, only_if_available=True)


def acquire(account_id, region, action, already_taken=False):
    """Block until a token for this account/region/action is ours.

    ``already_taken``: the caller took it with :func:`try_take` (the change engine does).
    """
    if already_taken:
        return 0.0
    wait = reserve(account_id, region, action)
    if wait > 0:
        time.sleep(wait)
    return wait
