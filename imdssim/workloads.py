"""IMDSv1 workloads: software on an instance that still calls IMDS without a token.

AWS counts those calls per instance in CloudWatch (``AWS/EC2``, dimension ``InstanceId``):
``MetadataNoToken`` while the instance allows IMDSv1, ``MetadataNoTokenRejected`` once it requires
tokens (the caller now gets HTTP 401 and, typically, breaks). A test or a demo operator gives an
instance such a workload over the admin endpoint (``POST /_imdssim/workload``); from then on the
instance makes ``calls_per_minute`` IMDSv1 calls per simulated minute (the knobs' ``time_scale``
speeds simulated time up) while it runs with its endpoint enabled.

No background thread, like ``ec2_imds``: the calls made since the last look are written into moto's
CloudWatch backend (``catch_up``) just before anything could observe them — every CloudWatch
request — and just before a ModifyInstanceMetadataOptions changes what they would be counted as,
so calls made while tokens were optional count as ``MetadataNoToken`` and later ones as rejected.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from moto.cloudwatch.models import cloudwatch_backends
from moto.core.utils import utcnow
from moto.ec2.models import ec2_backends

from .ec2_imds import sim_options
from .throttle import Knobs


@dataclass
class Workload:
    calls_per_minute: float
    since: float  # monotonic time up to which its calls are written
    owed: float = 0.0  # fractions of a call carried to the next catch-up


class WorkloadModel:
    def __init__(self, knobs: Knobs):
        self._knobs = knobs
        self._lock = threading.RLock()
        self._workloads: dict[tuple[str, str, str], Workload] = {}

    def set(self, account_id: str, region: str, instance_ids: list[str], calls_per_minute: float) -> None:
        """Give these instances an IMDSv1 workload (0 calls per minute removes it)."""
        backend = ec2_backends[account_id][region]
        missing = [i for i in instance_ids if backend.get_instance_by_id(i) is None]
        if missing:
            raise KeyError(f"no such instance in {account_id}/{region}: {', '.join(missing)}")
        with self._lock:
            self.catch_up()
            now = time.monotonic()
            for instance_id in instance_ids:
                key = (account_id, region, instance_id)
                if calls_per_minute > 0:
                    self._workloads[key] = Workload(calls_per_minute, now)
                else:
                    self._workloads.pop(key, None)

    def as_list(self) -> list[dict]:
        with self._lock:
            return [
                {"account_id": a, "region": r, "instance_id": i, "calls_per_minute": w.calls_per_minute}
                for (a, r, i), w in sorted(self._workloads.items())
            ]

    def catch_up(self) -> None:
        """Write the calls made since the last catch-up into CloudWatch, counted by what the
        instance's options make of them now (they have not changed since: every change catches up
        first)."""
        with self._lock:
            now = time.monotonic()
            stamp = utcnow()
            for (account_id, region, instance_id), workload in self._workloads.items():
                minutes = (now - workload.since) * self._knobs.time_scale / 60
                workload.since = now
                instance = ec2_backends[account_id][region].get_instance_by_id(instance_id)
                if instance is None or instance.state != "running":
                    continue
                options = sim_options(instance)
                if options.http_endpoint != "enabled":
                    continue  # no IMDS at all: the calls fail before either metric counts them
                workload.owed += minutes * workload.calls_per_minute
                calls = int(workload.owed)
                if not calls:
                    continue
                workload.owed -= calls
                metric = "MetadataNoTokenRejected" if options.http_tokens == "required" else "MetadataNoToken"
                cloudwatch_backends[account_id][region].put_metric_data(
                    "AWS/EC2",
                    [{"MetricName": metric, "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                      "Timestamp": stamp, "Value": float(calls), "Unit": "Count"}],
                )
