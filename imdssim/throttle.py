"""EC2 request throttling and the simulator's runtime knobs and call statistics.

Throttling follows "Request throttling for the Amazon EC2 API": one token bucket per account, per
region and per action, with a bucket size and a refill rate that depend on the action's category.
The knobs (``Knobs``) are the values an operator or a test can change at runtime through the admin
endpoint; the statistics (``Stats``) are what tests and benchmarks read back.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

# (bucket size, refill per second), from the AWS page "Request throttling for the Amazon EC2 API".
ACTION_BUCKETS: dict[str, tuple[int, float]] = {
    "ModifyInstanceMetadataOptions": (100, 5.0),
    "ModifyInstanceMetadataDefaults": (2, 2.0),
}
NON_MUTATING_BUCKET = (100, 20.0)
MUTATING_BUCKET = (50, 5.0)
_NON_MUTATING_PREFIXES = ("Describe", "Get", "List")


def bucket_spec(action: str) -> tuple[int, float]:
    if action in ACTION_BUCKETS:
        return ACTION_BUCKETS[action]
    if action.startswith(_NON_MUTATING_PREFIXES):
        return NON_MUTATING_BUCKET
    return MUTATING_BUCKET


@dataclass
class Knobs:
    """Runtime-adjustable behaviour. Validated on every change so a bad admin call fails loudly."""

    apply_delay: float = 3.0
    throttle: bool = True
    time_scale: float = 1.0
    throttle_rate: float = 0.0
    error_rate: float = 0.0
    latency_ms: float = 0.0

    def update(self, changes: dict) -> None:
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(sorted(unknown))}")
        staged = {**asdict(self), **changes}
        if not isinstance(staged["throttle"], bool):
            raise ValueError("throttle must be true or false")
        for name in ("apply_delay", "time_scale", "throttle_rate", "error_rate", "latency_ms"):
            value = staged[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
            staged[name] = float(value)
        if staged["time_scale"] == 0:
            raise ValueError("time_scale must be greater than 0")
        for name in ("throttle_rate", "error_rate"):
            if staged[name] > 1:
                raise ValueError(f"{name} must be between 0 and 1")
        for name, value in staged.items():
            setattr(self, name, value)

    def as_dict(self) -> dict:
        return asdict(self)


class TokenBucket:
    """Classic token bucket; tokens refill continuously, computed lazily on each take."""

    def __init__(self, size: int, refill_per_second: float, now: float):
        self.size = size
        self.refill_per_second = refill_per_second
        self.tokens = float(size)
        self.updated = now

    def take(self, now: float, time_scale: float) -> bool:
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.size, self.tokens + elapsed * self.refill_per_second * time_scale)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Throttler:
    """All buckets of the simulator, keyed by (account, region, action)."""

    def __init__(self, knobs: Knobs, clock=time.monotonic):
        self._knobs = knobs
        self._clock = clock
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def allow(self, account_id: str, region: str, action: str) -> bool:
        if not self._knobs.throttle:
            return True
        key = (account_id, region, action)
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(*bucket_spec(action), now=now)
            return bucket.take(now, self._knobs.time_scale)

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()


class Stats:
    """Per-action counters plus successful modifies per instance ("none applied twice" checks)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._actions: dict[str, dict[str, int]] = defaultdict(
                lambda: {"calls": 0, "throttled": 0, "errors": 0}
            )
            self._modifies: dict[str, int] = defaultdict(int)

    def record(self, action: str, outcome: str) -> None:
        """``outcome`` is ``ok`` (dry runs included), ``throttled``, or ``error`` (any other error)."""
        with self._lock:
            counters = self._actions[action]
            counters["calls"] += 1
            if outcome == "throttled":
                counters["throttled"] += 1
            elif outcome == "error":
                counters["errors"] += 1

    def record_modify(self, instance_id: str) -> None:
        with self._lock:
            self._modifies[instance_id] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "actions": {action: dict(counters) for action, counters in self._actions.items()},
                "modify_calls_by_instance": dict(self._modifies),
            }
