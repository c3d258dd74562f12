"""Token buckets per account/region/action, shared by every worker through Redis, paced by what
AWS's throttling answers teach.

AWS throttles EC2 per account, per region and per action with token buckets (the EC2 API reference, "Request throttling").
Taking our own token before each call keeps a whole worker fleet under AWS's refill rate, so
calls are paced instead of being refused with ``RequestLimitExceeded``.

Our bucket has AWS's size and starts at AWS's refill rate times ``IMDSWEB_RATE_HEADROOM`` (0.96 by
default: measured alone, pacing at the full rate had 1.5-2.2 % of calls throttled with four pool
processes' calls in flight, the fixed margin none; 1.0 lets the controller alone find the rate).
But the bucket is shared with every other caller of the account
(a CI pipeline, a console user, another tool), so the rate is learned from AWS's answers:

- a throttle means AWS's bucket is empty now, so ours is emptied too (:func:`throttled`). A lone
  engine whose bucket ran a little ahead of AWS's (clock steps, calls in flight) is back in step
  and nothing else changes: its rate stays at AWS's;
- a second throttle within one bucket-refill time confirms that someone else spends the bucket:
  the rate is cut multiplicatively (``DECREASE``), at most once per few token-times, since the
  calls already in flight meet the same empty bucket;
- without throttles the rate grows back towards AWS's, slowly just after a cut (the engine sits
  just under what the other caller leaves, so it is rarely throttled) and faster the longer no
  throttle comes (when the other caller has gone, the ceiling is back within about a minute).

That is additive-increase / multiplicative-decrease with an accelerating increase (in the spirit
of TCP CUBIC), plus the resynchronisation a token bucket allows. The learned rate, the tokens and
the times of the last throttle and cut live in one Redis hash per bucket, updated by one Lua
script per token or throttle, so every worker of an account/region paces by the same state. No
maintained library offers a Redis token bucket with a burst size, a fractional refill rate and a
rate learned from the server's refusals, hence this small module. An idle bucket's state expires,
so a new batch starts at the ceiling again.

When Redis cannot be reached (the embedded demo without Redis) the buckets live in the
process, which is exact for the single worker that setup runs.
"""

import logging
import threading
import time

import redis
from django.conf import settings

log = logging.getLogger(__name__)

# The pacing controller's constants (see the module docstring). Rates are fractions of AWS's.
DECREASE = 0.8           # a confirmed throttle cuts the learned rate to 80 %
FLOOR = 0.05             # never below 5 % of AWS's rate: the engine keeps probing
GROWTH = 0.001           # recovery per second, as a fraction of AWS's rate, just after a cut ...
ACCELERATE_SECONDS = 10  # ... growing by that much again every 10 s without a throttle
# Two throttles within WINDOW_BUCKETS bucket-refill times (capacity / rate: 20 s for
# ModifyInstanceMetadataOptions) confirm that someone else spends the bucket; at most one cut per
# HOLD_TOKENS token-times (the calls already in flight meet the same empty bucket).
WINDOW_BUCKETS = 1.0
HOLD_TOKENS = 4

# KEYS[1] bucket; ARGV: capacity, AWS's refill per second (the ceiling), now (s), only_if_available
# (0/1), and the controller's constants. Returns the seconds to wait for the token (0 = taken now).
# - only_if_available=0 ("reserve"): the token is always taken, possibly on credit; a caller that
#   must wait has its token already, so waiting callers are served in order, never starved.
# - only_if_available=1 ("try"): the token is taken only if it is there now; otherwise nothing is
#   taken and the caller learns when one will be, so a worker can do other work meanwhile.
_LOAD = """
local capacity = tonumber(ARGV[1])
local ceiling = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'rate', 'cut_at', 'throttled_at')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
local rate = tonumber(state[3]) or ceiling
local cut_at = tonumber(state[4]) or 0
local throttled_at = tonumber(state[5]) or 0
-- Two workers' calls can reach Redis in the other order than their clocks read: never move the
-- bucket's time backwards, or the next call would be credited the same refill twice.
if now < ts then now = ts end
local elapsed = now - ts
if rate < ceiling then
  local quiet = math.max(0, now - cut_at)
  rate = math.min(ceiling, rate + ceiling * tonumber(ARGV[6]) * elapsed * (1 + quiet / tonumber(ARGV[7])))
end
tokens = math.min(capacity, tokens + elapsed * rate)
"""
_SAVE = """
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now, 'rate', rate, 'cut_at', cut_at, 'throttled_at', throttled_at)
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / ceiling) + 60)
"""
_TAKE = _LOAD + """
local wait = 0
if ARGV[4] == '1' and tokens < 1 then
  wait = (1 - tokens) / rate
else
  tokens = tokens - 1
  if tokens < 0 then wait = -tokens / rate end
end
""" + _SAVE + "return tostring(wait)"
# AWS answered RequestLimitExceeded: its bucket is empty now, so ours is emptied too (a lone
# engine whose bucket ran a little ahead of AWS's is back in step, nothing else changes). A second
# throttle within the window means another caller spends the bucket: cut the rate (once per hold).
# Returns the seconds until the next token.
_THROTTLED = _LOAD + """
tokens = math.min(tokens, 0)
local window = capacity / ceiling * tonumber(ARGV[9])
local hold = tonumber(ARGV[10]) / rate
if throttled_at > 0 and now - throttled_at < window and now - cut_at >= hold then
  rate = math.max(ceiling * tonumber(ARGV[8]), rate * tonumber(ARGV[5]))
  cut_at = now
end
throttled_at = now
""" + _SAVE + "return tostring((1 - tokens) / rate)"


def _constants():
    return (DECREASE, GROWTH, ACCELERATE_SECONDS, FLOOR, WINDOW_BUCKETS, HOLD_TOKENS)


class _LocalBuckets:
    """The same controller in the process, for a worker without Redis."""

    def __init__(self):
        self._lock = threading.Lock()
        self._state = {}

    def _load(self, key, capacity, ceiling, now):
        tokens, ts, rate, cut_at, throttled_at = self._state.get(key, (capacity, now, ceiling, 0.0, 0.0))
        now = max(now, ts)  # threads can arrive out of clock order: never credit a refill twice
        elapsed = now - ts
        if rate < ceiling:
            quiet = max(0.0, now - cut_at)
            rate = min(ceiling, rate + ceiling * GROWTH * elapsed * (1 + quiet / ACCELERATE_SECONDS))
        return min(capacity, tokens + elapsed * rate), rate, cut_at, throttled_at, now

    def take(self, key, capacity, ceiling, now, only_if_available=False):
        with self._lock:
            tokens, rate, cut_at, throttled_at, now = self._load(key, capacity, ceiling, now)
            if only_if_available and tokens < 1:
                self._state[key] = (tokens, now, rate, cut_at, throttled_at)
                return (1 - tokens) / rate
            tokens -= 1
            self._state[key] = (tokens, now, rate, cut_at, throttled_at)
        return 0.0 if tokens >= 0 else -tokens / rate

    def throttled(self, key, capacity, ceiling, now):
        with self._lock:
            tokens, rate, cut_at, throttled_at, now = self._load(key, capacity, ceiling, now)
            tokens = min(tokens, 0.0)
            window = capacity / ceiling * WINDOW_BUCKETS
            if throttled_at > 0 and now - throttled_at < window and now - cut_at >= HOLD_TOKENS / rate:
                rate, cut_at = max(ceiling * FLOOR, rate * DECREASE), now
            self._state[key] = (tokens, now, rate, cut_at, now)
        return (1 - tokens) / rate

    def rate(self, key, capacity, ceiling, now):
        with self._lock:
            return self._load(key, capacity, ceiling, now)[1] if key in self._state else ceiling


_local = _LocalBuckets()
_now = time.time  # the buckets' clock (wall time: every worker's Lua call passes its own)
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
    """(bucket size, refill per second) of AWS's bucket for ``action``, time-scaled: the ceiling
    of the controller (times IMDSWEB_RATE_HEADROOM: 0.96 by default, AWS's buckets being shared with
    other callers; 1.0 lets the controller alone find the rate)."""
    capacity, rate = settings.IMDSWEB_RATE_LIMITS.get(action, (50, 5.0))
    return capacity, rate * settings.IMDSWEB_RATE_TIME_SCALE * settings.IMDSWEB_RATE_HEADROOM


def _key(account_id, region, action):
    return f"imdsweb:bucket:{account_id}:{region}:{action}"


def _run(script, local, account_id, region, action, flag=0, local_args=()):
    global _redis
    capacity, ceiling = limits_for(action)
    key = _key(account_id, region, action)
    conn = _client()
    if conn is not None:
        try:
            return float(conn.eval(script, 1, key, capacity, ceiling, _now(), flag, *_constants()))
        except redis.RedisError as exc:
            log.warning("rate limiter: Redis error (%s); using in-process buckets", exc)
            _redis = None
    return local(key, capacity, ceiling, _now(), *local_args)


def _take(account_id, region, action, only_if_available):
    return _run(_TAKE, _local.take, account_id, region, action, int(only_if_available), (only_if_available,))


def reserve(account_id, region, action):
    """Take one token; return how many seconds the caller must wait before using it."""
    return _take(account_id, region, action, only_if_available=False)


def try_take(account_id, region, action):
    """Take one token if one is there now (returns 0), else return the seconds until one is."""
    return _take(account_id, region, action, only_if_available=True)


def throttled(account_id, region, action):
    """AWS answered RequestLimitExceeded for this account/region/action: learn from it (for every
    worker) and return the seconds until the next token."""
    return _run(_THROTTLED, _local.throttled, account_id, region, action)


def learned_rate(account_id, region, action):
    """The refill rate the controller paces this bucket at now (calls per second)."""
    global _redis
    capacity, ceiling = limits_for(action)
    conn = _client()
    if conn is not None:
        try:
            rate = conn.hget(_key(account_id, region, action), "rate")
            return min(ceiling, float(rate)) if rate is not None else ceiling
        except redis.RedisError:
            _redis = None
    return _local.rate(_key(account_id, region, action), capacity, ceiling, _now())


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
