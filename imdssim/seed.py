"""The deterministic demo fleet behind ``--seed-demo``.

Three accounts reachable through ``sts:AssumeRole``, three regions each, about 1,500 instances in a
realistic mix of IMDS postures, IMDSv1 usage in CloudWatch, account defaults in some regions and
one region managed by a declarative policy (with IMDSv2 enforced), and in every region the launch
sources new instances come from: launch templates, Auto Scaling groups, a launch configuration
and AMIs with and without ``ImdsSupport``. Instances are created with one RunInstances-sized call
per group straight on moto's backend and then adjusted in place: one API call per instance would
make start-up take minutes.

The same fleet on every start: our choices come from ``random.Random(SEED)``, and moto's ids (of
instances, reservations, VPCs...) from moto's own generator, seeded the way moto documents for
deterministic ids (``mock_random.seed``) while the fleet is built and reseeded from the OS after,
so that instances launched later get fresh ids as in EC2. Clock values (launch times, changes
still in flight) count from ``created_at``, the fleet's first creation, which ``imdssim.state``
keeps across restarts.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from moto.autoscaling.models import autoscaling_backends
from moto.cloudwatch.models import cloudwatch_backends
from moto.core.utils import utcnow
from moto.ec2.models import ec2_backends
from moto.moto_api._internal import mock_random

from .ec2_imds import ImdsModel, sim_options

log = logging.getLogger(__name__)

SEED = 20240917
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2")
DEMO_AMI = "ami-0a1b2c3d4e5f60718"
ROLE_NAME = "imdsweb-reader"
INSTANCE_TYPES = ("t3.medium", "m5.large", "c6i.xlarge", "r6g.large")
XSS_NAME = "web-<script>alert(1)</script>"


@dataclass(frozen=True)
class DemoAccount:
    account_id: str
    name: str
    instances_per_region: dict[str, int]
    external_id: str | None = None

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam::{self.account_id}:role/{ROLE_NAME}"

    def as_dict(self) -> dict:
        return {
            "account_id": self.account_id,
            "name": self.name,
            "role_arn": self.role_arn,
            "external_id": self.external_id,
            "regions": list(self.instances_per_region),
            "instances_per_region": dict(self.instances_per_region),
        }


DEMO_ACCOUNTS = (
    DemoAccount(
        "111111111111",
        "prod",
        {"us-east-1": 300, "eu-west-1": 220, "ap-southeast-2": 110},
        external_id="imdsweb-demo",
    ),
    DemoAccount("222222222222", "staging", {"us-east-1": 250, "eu-west-1": 180, "ap-southeast-2": 120}),
    DemoAccount("333333333333", "sandbox", {"us-east-1": 150, "eu-west-1": 100, "ap-southeast-2": 70}),
)

# Account defaults (as ModifyInstanceMetadataDefaults would store them) and policy-managed regions.
DEMO_DEFAULTS = {
    ("111111111111", "us-east-1"): {"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
    ("222222222222", "eu-west-1"): {"HttpTokens": "required"},
    ("333333333333", "ap-southeast-2"): {
        "HttpTokens": "required",
        "HttpPutResponseHopLimit": 2,
        "HttpTokensEnforced": "enabled",
    },
}
DEMO_POLICIES = {
    ("333333333333", "ap-southeast-2"): (
        "IMDS defaults for this region are enforced by the organization's declarative policy "
        "'imdsv2-only'. Ask the cloud platform team to change them."
    ),
}

# (weight, Name pattern, Team, runs containers): containers need hop limit >= 2.
WORKLOADS = (
    (30, "web-{env}-{n:03d}", "web", False),
    (15, "api-{env}-{n:02d}", "payments", False),
    (20, "eks-node-{hex}", "platform", True),
    (8, "batch-etl-{n:02d}", "data", True),
    (6, "jenkins-agent-{n:02d}", "platform", True),
    (6, "kafka-broker-{n}", "data", False),
    (5, "db-proxy-{n:02d}", "payments", False),
    (3, "bastion-{env}-{n}", "security", False),
)


def _name(rng: random.Random, pattern: str, env: str, counters: dict[str, int]) -> str:
    counters[pattern] = counters.get(pattern, 0) + 1
    return pattern.format(env=env, n=counters[pattern], hex=f"{rng.randrange(256):02x}")


def _posture(rng: random.Random, containers: bool, env: str) -> dict[str, object]:
    required_share = {"prod": 0.4, "staging": 0.25, "sandbox": 0.1}[env]
    hop = rng.choices((1, 2, 3), weights=(2, 6, 2))[0] if containers else rng.choices((1, 2), (9, 1))[0]
    return {
        "HttpTokens": "required" if rng.random() < required_share else "optional",
        "HttpPutResponseHopLimit": hop,
        "HttpEndpoint": "disabled" if rng.random() < 0.04 else "enabled",
        "InstanceMetadataTags": "enabled" if rng.random() < 0.06 else "disabled",
    }


def _seed_region(
    imds: ImdsModel, account: DemoAccount, region: str, count: int, rng: random.Random, clock: _Clock,
    sources: bool = True,
) -> None:
    backend = ec2_backends[account.account_id][region]
    # The Auto Scaling groups' instances count towards the region's total.
    if sources:
        count -= _seed_sources(account, region, clock)
    instances = []
    # Several small reservations, like auto scaling groups and hand launches make, so that
    # DescribeInstances pagination (moto pages by reservation) has many pages to walk.
    while len(instances) < count:
        group = min(count - len(instances), rng.randint(1, 12))
        # Keyword arguments as moto's RunInstances handler passes them (moto 5.x).
        reservation = backend.run_instances(
            DEMO_AMI,
            group,
            None,
            [],
            instance_type=rng.choice(INSTANCE_TYPES),
            is_instance_type_default=True,
            region_name=region,
            placement=None,
            nics=[],
            tags={},
        )
        instances.extend(reservation.instances)
    counters: dict[str, int] = {}
    metrics: list[dict] = []
    now = utcnow()
    for index, instance in enumerate(instances):
        _, pattern, team, containers = rng.choices(WORKLOADS, weights=[w[0] for w in WORKLOADS])[0]
        name = _name(rng, pattern, account.name, counters)
        if account.name == "prod" and region == "us-east-1" and index == 7:
            name = XSS_NAME  # hostile tag value: the UI must escape it
        backend.create_tags([instance.id], {"Name": name, "Team": team, "Env": account.name})
        instance.launch_time = clock.launch_time()
        imds.set_instance_options(instance, _posture(rng, containers, account.name), pending=False)

        roll = rng.random()
        if roll < 0.10:
            instance.stop()
            if rng.random() < 0.25:
                # Modified while stopped: stays pending until someone starts it.
                sim_options(instance).awaiting_start = True
        elif roll < 0.115:
            # A change in flight, applied a few minutes after start-up.
            sim_options(instance).apply_at = clock.monotonic_at(rng.uniform(60, 600))
        elif roll < 0.12:
            backend.terminate_instances([instance.id])
            continue
        if instance.state == "running":
            metrics.extend(_imdsv1_usage(rng, instance.id, sim_options(instance).http_tokens, now))
    if metrics:
        cloudwatch_backends[account.account_id][region].put_metric_data("AWS/EC2", metrics)


def _imdsv1_usage(rng: random.Random, instance_id: str, http_tokens: str, now) -> list[dict]:
    """Daily IMDSv1 call counts for the last 14 days, for the instances that still make such calls.

    Some instances stopped making v1 calls a few days ago, so "zero over the last N days" rules
    have something to tell apart. Instances without IMDSv1 traffic get no data points.
    """
    metric = "MetadataNoToken" if http_tokens == "optional" else "MetadataNoTokenRejected"
    if rng.random() > (0.25 if http_tokens == "optional" else 0.08):
        return []
    quiet_days = rng.choice((0, 0, 0, 3, 10))
    points = []
    for days_ago in range(14, 0, -1):
        value = 0.0 if days_ago <= quiet_days else float(rng.randint(1, 400))
        points.append(
            {
                "MetricName": metric,
                "Dimensions": [{"Name": "InstanceId", "Value": instance_id}],
                "Timestamp": now - timedelta(days=days_ago, hours=rng.randint(0, 6)),
                "Value": value,
                "Unit": "Count",
            }
        )
    return points


class _Clock:
    """Times relative to the fleet's first creation, so that a restart shows the same fleet."""

    def __init__(self, created_at: datetime):
        self.created_at = created_at
        self.elapsed = (utcnow() - created_at.replace(tzinfo=None)).total_seconds()
        # Its own generator: launch times were added later, and must not shift the fleet's mix.
        self._rng = random.Random(f"{SEED}-launch-times")
        # The Auto Scaling groups' instances came later still: theirs must not shift the others'.
        self._group_rng = random.Random(f"{SEED}-group-launch-times")

    def launch_time(self) -> datetime:
        return self.created_at.replace(tzinfo=None) - timedelta(seconds=self._rng.uniform(3600, 400 * 86400))

    def group_launch_time(self) -> datetime:
        """An Auto Scaling group's instance: launched (or replaced) in the last few weeks."""
        return self.created_at.replace(tzinfo=None) - timedelta(seconds=self._group_rng.uniform(600, 30 * 86400))

    def monotonic_at(self, seconds_after_creation: float) -> float:
        """The monotonic time of a moment this long after creation (in the past on a later start)."""
        return time.monotonic() + seconds_after_creation - self.elapsed


def _seed_sources(account: DemoAccount, region: str, clock: _Clock) -> int:
    """Launch templates, Auto Scaling groups, a launch configuration and AMIs in mixed posture.

    Created on moto's backends like the instances, after the account defaults, so the groups'
    instances get what AWS's order of precedence gives them (``imdssim.launches``). Returns the
    number of instances the groups launched (a group whose launch enforcement refuses has none).
    Their launch times come from the fleet's clock like the other instances' (moto stamps them
    with the current time, which would differ on every start).
    """
    ec2 = ec2_backends[account.account_id][region]
    autoscaling = autoscaling_backends[account.account_id][region]
    env = account.name
    v2_ami = ec2.register_image(f"al2023-{env}-imdsv2", "Amazon Linux 2023, ImdsSupport v2.0")
    v2_ami.imds_support = "v2.0"
    legacy_ami = ec2.register_image(f"ubuntu-18.04-{env}-legacy", "no ImdsSupport")
    gone_ami = ec2.register_image(f"centos-7-{env}-retired", "deregistered since")
    ec2.deregister_image(gone_ami.id)

    def template(name, versions, tags=None, default=1):
        lt = ec2.create_launch_template(
            name, "", {"ImageId": versions[0][0], "InstanceType": "m5.large", **versions[0][1]},
            {"launch-template": tags or {}},
        )
        for image_id, data in versions[1:]:
            # Each later version from the previous one, as CreateLaunchTemplateVersion's SourceVersion does.
            lt.create_version({**lt.latest_version().data, "ImageId": image_id, **data}, "")
        lt.default_version_number = default
        return lt

    def options(**values):
        return {"MetadataOptions": values}

    web = template(
        f"web-{env}",
        [(legacy_ami.id, options(HttpTokens="optional")), (legacy_ami.id, {"MetadataOptions": {}}),
         (v2_ami.id, options(HttpTokens="required", HttpPutResponseHopLimit=2))],
        default=2,
    )
    api = template(f"api-{env}", [(legacy_ami.id, options(HttpTokens="required", HttpPutResponseHopLimit=2))])
    batch = template(f"batch-{env}", [(v2_ami.id, {}), (gone_ami.id, options(HttpPutResponseHopLimit=3))])
    eks = template(
        f"eks-{env}-nodes", [(legacy_ami.id, options(HttpTokens="optional", HttpPutResponseHopLimit=2))],
        tags={"eks:cluster-name": f"{env}-cluster", "eks:nodegroup-name": "general"},
    )
    template(
        f"cfn-{env}-queue-workers", [(legacy_ami.id, {})],
        tags={"aws:cloudformation:stack-name": f"{env}-queue", "aws:cloudformation:logical-id": "WorkerTemplate"},
    )
    autoscaling.create_launch_configuration(
        f"bastion-{env}-lc", legacy_ami.id, None, "", "", [], None, "t3.micro", False, None, None, False, False,
        [], metadata_options={"HttpTokens": "optional", "HttpPutResponseHopLimit": 1},
    )

    def group(name, size, team, **spec):
        tags = [
            {"Key": key, "Value": value, "PropagateAtLaunch": True, "ResourceId": name,
             "ResourceType": "auto-scaling-group"}
            for key, value in {"Name": name, "Team": team, "Env": env, **spec.pop("tags", {})}.items()
        ]
        created = autoscaling.create_auto_scaling_group(
            name, [f"{region}a"], size, 10, 0, spec.pop("launch_config_name", None), spec.pop("launch_template", None),
            None, None, None, None, [], [], None, [], tags, mixed_instances_policy=spec.pop("mixed", None),
        )
        for state in created.instance_states:
            state.instance.launch_time = clock.group_launch_time()
        return len(created.instance_states)

    launched = group(f"web-{env}-asg", 3, "web", launch_template={"LaunchTemplateId": web.id, "Version": "$Default"})
    launched += group(f"api-{env}-asg", 2, "payments", launch_template={"LaunchTemplateId": api.id, "Version": "$Latest"})
    launched += group(
        f"batch-{env}-asg", 2, "data",
        mixed={"LaunchTemplate": {"LaunchTemplateSpecification": {"LaunchTemplateId": batch.id, "Version": "1"},
                                  "Overrides": [{"InstanceType": "c6i.xlarge"}, {"InstanceType": "c5.xlarge"}]}},
    )
    launched += group(
        f"eks-{env}-general", 2, "platform", launch_template={"LaunchTemplateId": eks.id, "Version": "1"},
        tags={"eks:cluster-name": f"{env}-cluster", "eks:nodegroup-name": "general"},
    )
    launched += group(f"bastion-{env}-asg", 1, "security", launch_config_name=f"bastion-{env}-lc")
    return launched


def seed_demo_fleet(imds: ImdsModel, created_at: datetime | None = None) -> list[dict]:
    """Create the demo fleet in moto's backends; returns the accounts as ``/_imdssim/demo`` shows them.

    ``created_at`` (UTC) is when this fleet was first created; default now. The account defaults
    come first, so the Auto Scaling groups' instances get what AWS's order of precedence gives them.
    """
    started = time.monotonic()
    rng = random.Random(SEED)
    clock = _Clock(created_at or utcnow())
    for (account_id, region), settings in DEMO_DEFAULTS.items():
        imds.set_defaults(account_id, region, settings)
    for (account_id, region), message in DEMO_POLICIES.items():
        imds.set_policy(account_id, region, True, message)
    mock_random.seed(SEED)
    try:
        for account in DEMO_ACCOUNTS:
            for region, count in account.instances_per_region.items():
                _seed_region(imds, account, region, count, rng, clock)
    finally:
        mock_random.seed()  # from the OS again: ids of later launches, access keys, request ids
    total = sum(sum(a.instances_per_region.values()) for a in DEMO_ACCOUNTS)
    log.info("seeded %d demo instances in %.1f s", total, time.monotonic() - started)
    return [account.as_dict() for account in DEMO_ACCOUNTS]
