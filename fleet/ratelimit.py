"""Token buckets per account/region/action, shared by every worker through Redis, paced at the
rate AWS's throttling answers show is left for us.

AWS throttles EC2 per account, per region and per action with token buckets (the EC2 API
reference, "Request throttling"): a bucket of ``capacity`` tokens refilled at a fixed rate, shared
by every caller of the account. Taking our own token before each call keeps a whole worker fleet
under AWS's refill, so calls are paced instead of refused with ``RequestLimitExceeded``. Our
bucket has AWS's size; its refill is the *learned rate*, at most AWS's refill times
``IMDSWEB_RATE_HEADROOM`` (1.0 by default: alone, the engine uses all of AWS's bucket).

How the rate is learned (the estimator), from the token bucket's own semantics:

- a throttle means AWS's bucket holds less than one token at that moment: an *empty moment*. Our
  bucket is emptied too, so the two are back in step (:func:`throttled`);
- between two empty moments AWS refilled ``refill x span`` tokens and every one was spent, by us
  (the calls it accepted, which we count) or by someone else. So our accepted calls over the span
  are, to within one token, exactly the rate the other callers leave us: the estimate is
  ``accepted / span``, whatever the others' pattern, once the burst is spent;
- the first empty moment (or the first after a long quiet) only resynchronises and becomes the
  reference: a lone engine whose bucket ran a little ahead of AWS's (AWS's full bucket wasting
  refill before our first call arrived) is back in step and keeps AWS's full rate;
- a later throttle, once the span holds ``MIN_SPAN_TOKENS`` token-times, sets the rate to
  ``MARGIN`` below the estimate and moves the reference; over a shorter span the estimate is
  uncertain, so only its upper bound ``(accepted + 1) / span`` is used (at least a ``MARGIN`` cut).
  Throttles within ``HOLD_TOKENS`` token-times of a decision are calls that were already in flight:
  they resynchronise only;
- after a decision the rate is held for ``COOL_TOKENS`` token-times, then probed up additively
  (``PROBE`` of AWS's rate per second, growing by as much again every ``ACCELERATE_SECONDS``
  without a throttle), so the engine sits just under what is left, is throttled about once per
  probe cycle, and is back at AWS's full rate about a minute after the other caller has gone.

The state (tokens, learned rate, accepted-call counter, reference, cool-down) lives in one Redis
hash per bucket, updated by one Lua script per token or throttle, so every worker of an
account/region paces by the same state. No maintained library offers a Redis token bucket with a
burst size, a fractional refill and a rate learned from the server's refusals (botocore's
``adaptive`` retry mode is per process and cuts by 30 % per throttle), hence this small module. An
idle bucket's state expires, so a new batch starts at the ceiling again.

When Redis cannot be reached (the embedded demo without Redis) the buckets live in the process
(:class:`_LocalBuckets`, the same controller in Python), which is exact for the single worker that
setup runs.
"""

import logging
import threading
import time

import redis
from django.conf import settings

log = logging.getLogger(__name__)

# The estimator's constants (see the module docstring). Rates are fractions of AWS's refill;
# "token-times" are multiples of AWS's refill interval (0.2 s for ModifyInstanceMetadataOptions).
MARGIN = 0.03            # pace this far below the estimated rate that is left
SHORT_DECREASE = 0.85    # over a span too short to estimate, cut at least this much
MIN_SPAN_TOKENS = 60     # a span of 60 token-times (12 s) estimates within 1/60 of AWS's rate
HOLD_TOKENS = 0.5        # throttles this soon after a decision were already in flight
COOL_TOKENS = 50         # hold the rate 50 token-times (10 s) after a decision ...
PROBE = 0.002            # ... then probe up by 0.2 % of AWS's rate per second ...
ACCELERATE_SECONDS = 30  # ... and by as much again every 30 s without a throttle
FLOOR = 0.05             # never below 5 % of AWS's rate: the engine keeps probing
WINDOW_BUCKETS = 15      # a throttle after 15 bucket-refill times (300 s) of quiet starts afresh

# One Lua script per operation, all starting with _LOAD (read the hash, refill, probe) and ending
# with _SAVE. KEYS[1] the bucket; ARGV: capacity, the ceiling (AWS's refill per second), now (s),
# only_if_available (0/1), then the constants above in _constants()'s order.
# - only_if_available=0 ("reserve"): the token is always taken, possibly on credit; a caller that
#   must wait has its token already, so waiting callers are served in order, never starved.
# - only_if_available=1 ("try"): the token is taken only if it is there now; otherwise nothing is
#   taken and the caller learns when one will be, so a worker can do other work meanwhile.
_LOAD = """
local capacity = tonumber(ARGV[1])
local ceiling = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local MARGIN, SHORT_DECREASE, MIN_SPAN = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local HOLD, COOL, PROBE = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local ACCELERATE, FLOOR, WINDOW = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'rate', 'accepted', 'ref_at', 'ref_accepted',
                     'decided_at', 'cool_until', 'throttled_at')
local tokens = tonumber(s[1]) or capacity
local ts = tonumber(s[2]) or now
local rate = math.min(ceiling, tonumber(s[3]) or ceiling)
local accepted = tonumber(s[4]) or 0
local ref_at = tonumber(s[5]) or 0
local ref_accepted = tonumber(s[6]) or 0
local decided_at = tonumber(s[7]) or 0
local cool_until = tonumber(s[8]) or 0
local throttled_at = tonumber(s[9]) or 0
-- Two workers' calls can reach Redis in the other order than their clocks read: never move the
-- bucket's time backwards, or the next call would be credited the same refill twice.
if now < ts then now = ts end
tokens = math.min(capacity, tokens + (now - ts) * rate)
if rate < ceiling and now > cool_until then
  -- additive probe, PROBE of the ceiling per second plus as much again every ACCELERATE s
  local q0 = math.max(0, ts - cool_until)
  local q1 = now - cool_until
  rate = math.min(ceiling, rate + ceiling * PROBE * ((q1 - q0) + (q1 * q1 - q0 * q0) / (2 * ACCELERATE)))
end
"""
_SAVE = """
redis.call('HSET', KEYS[1], 'tokens', tokens, 'ts', now, 'rate', rate, 'accepted', accepted, 'ref_at', ref_at,
           'ref_accepted', ref_accepted, 'decided_at', decided_at, 'cool_until', cool_until,
           'throttled_at', throttled_at)
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / ceiling) + 60)
"""
_TAKE = _LOAD + """
local wait = 0
if ARGV[4] == '1' and tokens < 1 then
  wait = (1 - tokens) / rate
else
  tokens = tokens - 1
  accepted = accepted + 1
  if tokens < 0 then wait = -tokens / rate end
end
""" + _SAVE + "return tostring(wait)"
# Up to ARGV[14] tokens at once, but only once at least ARGV[15] are there (or, when ARGV[16] > 0,
# what refills in ARGV[16] seconds at the learned rate, if fewer); else nothing is taken and the
# caller learns when that many will be. Returns "taken wait".
_TAKE_SOME = _LOAD + """
local most, least, within = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
if within > 0 then least = math.max(1, math.min(least, math.floor(rate * within))) end
local taken, wait = 0, 0
if tokens < least then
  wait = (least - tokens) / rate
else
  taken = math.min(most, math.floor(tokens))
  tokens = tokens - taken
  accepted = accepted + taken
end
""" + _SAVE + "return tostring(taken) .. ' ' .. tostring(wait)"
# AWS answered RequestLimitExceeded: an empty moment of AWS's bucket (see the module docstring).
# Returns the seconds until the next token.
_THROTTLED = _LOAD + """
tokens = math.min(tokens, 0)
accepted = accepted - 1  -- the token was taken, the call refused
if ref_at == 0 or now - throttled_at > WINDOW * capacity / ceiling then
  ref_at, ref_accepted, decided_at = now, accepted, now  -- resynchronise only
elseif now - decided_at >= HOLD / rate then
  local span = now - ref_at
  local got = accepted - ref_accepted
  if span * ceiling >= MIN_SPAN then
    rate = math.min(rate, got / span) * (1 - MARGIN)
    ref_at, ref_accepted = now, accepted
  else
    rate = math.min(rate * SHORT_DECREASE, (got + 1) / span * (1 - MARGIN))
  end
  rate = math.max(ceiling * FLOOR, rate)
  decided_at, cool_until = now, now + COOL / ceiling
end
throttled_at = now
""" + _SAVE + "return tostring((1 - tokens) / rate)"
# ARGV[14] tokens taken for calls that were never made: back into the bucket, and out of the
# count of calls AWS accepted.
_GIVE_BACK = _LOAD + """
local n = tonumber(ARGV[14])
tokens = math.min(capacity, tokens + n)
accepted = accepted - n
""" + _SAVE + "return tostring(tokens)"
_PEEK = _LOAD + "return tostring(rate)"


def _constants():
    return (MARGIN, SHORT_DECREASE, MIN_SPAN_TOKENS, HOLD_TOKENS, COOL_TOKENS, PROBE, ACCELERATE_SECONDS, FLOOR,
            WINDOW_BUCKETS)


class _Bucket:
    """One bucket's state; the same steps as the Lua scripts above."""

    def __init__(self, capacity, ceiling, now):
        self.tokens, self.ts, self.rate = float(capacity), now, ceiling
        self.accepted = self.ref_accepted = 0.0
        self.ref_at = self.decided_at = self.cool_until = self.throttled_at = 0.0

    def load(self, capacity, ceiling, now):
        now = max(now, self.ts)  # threads can arrive out of clock order: never credit a refill twice
        self.rate = min(ceiling, self.rate)
        self.tokens = min(capacity, self.tokens + (now - self.ts) * self.rate)
        if self.rate < ceiling and now > self.cool_until:
            q0, q1 = max(0.0, self.ts - self.cool_until), now - self.cool_until
            self.rate = min(ceiling, self.rate + ceiling * PROBE * ((q1 - q0) + (q1 * q1 - q0 * q0) /
                                                                     (2 * ACCELERATE_SECONDS)))
        self.ts = now
        return now

    def take(self, only_if_available):
        if only_if_available and self.tokens < 1:
            return (1 - self.tokens) / self.rate
        self.tokens -= 1
        self.accepted += 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def give_back(self, n, capacity):
        self.tokens = min(capacity, self.tokens + n)
        self.accepted -= n
        return self.tokens

    def take_some(self, most, least, within=0):
        if within > 0:
            least = max(1, min(least, int(self.rate * within)))
        if self.tokens < least:
            return 0, (least - self.tokens) / self.rate
        taken = min(most, int(self.tokens))
        self.tokens -= taken
        self.accepted += taken
        return taken, 0.0

    def throttled(self, capacity, ceiling, now):
        self.tokens = min(self.tokens, 0.0)
        self.accepted -= 1
        if not self.ref_at or now - self.throttled_at > WINDOW_BUCKETS * capacity / ceiling:
            self.ref_at, self.ref_accepted, self.decided_at = now, self.accepted, now
        elif now - self.decided_at >= HOLD_TOKENS / self.rate:
            span, got = now - self.ref_at, self.accepted - self.ref_accepted
            if span * ceiling >= MIN_SPAN_TOKENS:
                rate = min(self.rate, got / span) * (1 - MARGIN)
                self.ref_at, self.ref_accepted = now, self.accepted
            else:
                rate = min(self.rate * SHORT_DECREASE, (got + 1) / span * (1 - MARGIN))
            self.rate = max(ceiling * FLOOR, rate)
            self.decided_at, self.cool_until = now, now + COOL_TOKENS / ceiling
        self.throttled_at = now
        return (1 - self.tokens) / self.rate


class _LocalBuckets:
    """The same controller in the process, for a worker without Redis."""

    def __init__(self):
        self._lock = threading.Lock()
        self._state = {}

    def _bucket(self, key, capacity, ceiling, now):
        bucket = self._state.get(key)
        if bucket is None:
            bucket = self._state[key] = _Bucket(capacity, ceiling, now)
        bucket.load(capacity, ceiling, now)
        return bucket

    def take(self, key, capacity, ceiling, now, only_if_available=False):
        with self._lock:
            return self._bucket(key, capacity, ceiling, now).take(only_if_available)

    def give_back(self, key, capacity, ceiling, now, n):
        with self._lock:
            return self._bucket(key, capacity, ceiling, now).give_back(n, capacity)

    def take_some(self, key, capacity, ceiling, now, most, least, within=0):
        with self._lock:
            return self._bucket(key, capacity, ceiling, now).take_some(most, least, within)

    def throttled(self, key, capacity, ceiling, now):
        with self._lock:
            bucket = self._bucket(key, capacity, ceiling, now)
            return bucket.throttled(capacity, ceiling, bucket.ts)

    def rate(self, key, capacity, ceiling, now):
        with self._lock:
            if key not in self._state:
                return ceiling
            return self._bucket(key, capacity, ceiling, now).rate


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
    of the controller (times IMDSWEB_RATE_HEADROOM, 1.0 by default: the estimator finds what other
    callers leave; a lower value keeps a fixed share of AWS's bucket for them)."""
    capacity, rate = settings.IMDSWEB_RATE_LIMITS.get(action, (50, 5.0))
    return capacity, rate * settings.IMDSWEB_RATE_TIME_SCALE * settings.IMDSWEB_RATE_HEADROOM


def _key(account_id, region, action):
    return f"imdsweb:bucket:{account_id}:{region}:{action}"


def _run(script, local, account_id, region, action, flag=0, local_args=(), extra=(), parse=float):
    global _redis
    capacity, ceiling = limits_for(action)
    key = _key(account_id, region, action)
    conn = _client()
    if conn is not None:
        try:
            return parse(conn.eval(script, 1, key, capacity, ceiling, _now(), flag, *_constants(), *extra))
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


def _taken_and_wait(answer):
    taken, wait = answer.split()
    return int(float(taken)), float(wait)


def take_some(account_id, region, action, most, least=1, within=0.0):
    """Take up to ``most`` tokens, but only once at least ``least`` are there (``1 <= least <= most``),
    or, with ``within`` seconds, what refills in that time at the learned rate if that is fewer.

    Returns ``(taken, 0.0)``, or ``(0, seconds until that many will be there)`` with nothing
    taken. The change engine takes a chunk's tokens in one round trip, and waits for a few
    seconds' refill to gather instead of running again for every single token (fleet.engine.runner);
    when AWS leaves us a lower rate, it gathers fewer, never waiting longer."""
    capacity, _ = limits_for(action)
    least = max(1, min(least, most, capacity))
    return _run(_TAKE_SOME, _local.take_some, account_id, region, action, 1, (most, least, within),
                (most, least, within), _taken_and_wait)


def give_back(account_id, region, action, n):
    """``n`` tokens this caller took were not spent on calls (a chunk cut short): they go back to
    the bucket, and the pacing does not count them as calls AWS accepted."""
    if n > 0:
        _run(_GIVE_BACK, _local.give_back, account_id, region, action, 0, (n,), (n,))


def throttled(account_id, region, action):
    """AWS answered RequestLimitExceeded for this account/region/action: learn from it (for every
    worker) and return the seconds until the next token."""
    return _run(_THROTTLED, _local.throttled, account_id, region, action)


def learned_rate(account_id, region, action):
    """The refill rate the controller paces this bucket at now (calls per second)."""
    return _run(_PEEK, _local.rate, account_id, region, action)


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
