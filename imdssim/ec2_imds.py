"""IMDS semantics on top of moto's EC2 backend.

Owns the behaviour moto lacks (see docs/simulator.md): ModifyInstanceMetadataOptions that keeps
unsent settings, validates, honours DryRun and reports ``pending`` until the change is applied;
Get/ModifyInstanceMetadataDefaults per account and region (``HttpTokensEnforced`` included),
including accounts whose defaults are managed by a declarative policy. What launches get from
these defaults is ``imdssim.launches``.

State lives on moto's own objects wherever moto serialises it: each instance's ``metadata_options``
is replaced by ``SimMetadataOptions``, whose ``state`` is computed when read, so DescribeInstances,
its filters and our own responses all agree without a background thread.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import Instance, MetadataOptions
from moto.ec2.utils import filter_dict_attribute_mapping

from .awsquery import Ec2Error, QueryRequest, dry_run_error, ec2_response, xml_elements
from .throttle import Knobs

log = logging.getLogger(__name__)

ENDPOINT_VALUES = ("enabled", "disabled")
OPTION_VALUES = {
    "HttpTokens": ("optional", "required"),
    "HttpEndpoint": ENDPOINT_VALUES,
    "HttpProtocolIpv6": ENDPOINT_VALUES,
    "InstanceMetadataTags": ENDPOINT_VALUES,
}
DEFAULT_VALUES = {
    "HttpTokens": ("optional", "required", "no-preference"),
    "HttpEndpoint": ("enabled", "disabled", "no-preference"),
    "InstanceMetadataTags": ("enabled", "disabled", "no-preference"),
    "HttpTokensEnforced": ("enabled", "disabled", "no-preference"),
}
HOP_LIMIT = "HttpPutResponseHopLimit"
# Wire name -> attribute name on moto's MetadataOptions.
OPTION_ATTRS = {
    "HttpTokens": "http_tokens",
    "HttpPutResponseHopLimit": "http_put_response_hop_limit",
    "HttpEndpoint": "http_endpoint",
    "HttpProtocolIpv6": "http_protocol_ipv6",
    "InstanceMetadataTags": "instance_metadata_tags",
}

# moto raises NotImplementedError for the metadata-options.* DescribeInstances filters; they map
# onto attributes of SimMetadataOptions (the hop limit as text, because filter values are text).
filter_dict_attribute_mapping.update(
    {
        "metadata-options.state": "metadata_options.state",
        "metadata-options.http-tokens": "metadata_options.http_tokens",
        "metadata-options.http-endpoint": "metadata_options.http_endpoint",
        "metadata-options.http-protocol-ipv6": "metadata_options.http_protocol_ipv6",
        "metadata-options.instance-metadata-tags": "metadata_options.instance_metadata_tags",
        "metadata-options.http-put-response-hop-limit": "metadata_options.hop_limit_text",
    }
)


def _platform_details(instance: Instance) -> str:
    """DescribeInstances' PlatformDetails, which moto leaves out: the AMI's platform, in AWS's
    words ("Windows" for a Windows AMI, else "Linux/UNIX"; AWS always returns it)."""
    return "Windows" if instance.platform == "windows" else "Linux/UNIX"


# moto serialises an instance's attributes by name: the property fills PlatformDetails in.
Instance.platform_details = property(_platform_details)


class SimMetadataOptions(MetadataOptions):
    """moto's MetadataOptions with a state that moves from ``pending`` to ``applied`` over time.

    A change is ``pending`` until ``apply_at`` (monotonic clock) has passed. A change made while the
    instance is stopped has no ``apply_at`` yet: it waits for the next start (see ``on_started``).
    """

    def __init__(self, instance: Instance, base: MetadataOptions):
        self._instance_state = lambda: instance.state
        self.apply_at: float | None = None
        self.awaiting_start = False
        for attr in OPTION_ATTRS.values():
            setattr(self, attr, getattr(base, attr))

    @property
    def state(self) -> str:
        if self.awaiting_start:
            return "pending"
        if self.apply_at is not None and time.monotonic() < self.apply_at:
            return "pending"
        return "applied"

    @property
    def hop_limit_text(self) -> str:
        return str(self.http_put_response_hop_limit)

    def mark_pending(self, apply_delay: float) -> None:
        if self._instance_state() in ("stopped", "stopping"):
            self.awaiting_start, self.apply_at = True, None
        else:
            self.awaiting_start, self.apply_at = False, time.monotonic() + apply_delay

    def as_response(self) -> dict[str, object]:
        return {
            "state": self.state,
            "httpTokens": self.http_tokens,
            "httpPutResponseHopLimit": self.http_put_response_hop_limit,
            "httpEndpoint": self.http_endpoint,
            "httpProtocolIpv6": self.http_protocol_ipv6,
            "instanceMetadataTags": self.instance_metadata_tags,
        }


def sim_options(instance: Instance) -> SimMetadataOptions:
    """The instance's SimMetadataOptions, installing one over moto's plain object on first use."""
    options = instance.metadata_options
    if not isinstance(options, SimMetadataOptions):
        options = instance.metadata_options = SimMetadataOptions(instance, options)
    return options


def _invalid(name: str, value: str, allowed: str) -> Ec2Error:
    return Ec2Error(
        "InvalidParameterValue",
        f"Value ({value}) for parameter {name} is invalid. Valid values: {allowed}.",
    )


def _validated(params: dict[str, str], allowed_values: dict[str, tuple[str, ...]], hop_clears: bool) -> dict:
    """Sent IMDS settings from ``params``, checked; unsent settings are simply absent.

    ``hop_clears``: the account defaults also accept hop limit -1, meaning "no preference".
    """
    hop_range = "1 through 64, or -1 for no preference" if hop_clears else "1 through 64"
    changes: dict[str, object] = {}
    for name, allowed in allowed_values.items():
        if name in params:
            if params[name] not in allowed:
                raise _invalid(name, params[name], ", ".join(allowed))
            changes[name] = params[name]
    if HOP_LIMIT in params:
        raw = params[HOP_LIMIT]
        try:
            hop_limit = int(raw)
        except ValueError:
            raise _invalid(HOP_LIMIT, raw, hop_range) from None
        if not (1 <= hop_limit <= 64 or (hop_clears and hop_limit == -1)):
            raise _invalid(HOP_LIMIT, raw, hop_range)
        changes[HOP_LIMIT] = hop_limit
    return changes


class Journal:
    """Where the simulator's changes are recorded; this one forgets them (``state.StateFile`` keeps them)."""

    def instance_options(self, account_id: str, region: str, instance: Instance) -> None:
        pass

    def instance_state(self, account_id: str, region: str, instance: Instance) -> None:
        pass

    def defaults(self, account_id: str, region: str, settings: dict) -> None:
        pass

    def policy(self, account_id: str, region: str, message: str | None) -> None:
        pass


@dataclass
class AccountRegionDefaults:
    """Account-level IMDS defaults of one account in one region."""

    settings: dict[str, object] = field(default_factory=dict)
    policy_message: str | None = None  # set when a declarative policy manages these defaults


class ImdsModel:
    """The simulator's IMDS state and the handlers for the actions it answers itself."""

    HANDLED = (
        "ModifyInstanceMetadataOptions",
        "GetInstanceMetadataDefaults",
        "ModifyInstanceMetadataDefaults",
    )

    def __init__(self, knobs: Knobs, on_modify=lambda instance_id: None):
        self._knobs = knobs
        self._on_modify = on_modify
        self.journal = Journal()
        self._defaults: dict[tuple[str, str], AccountRegionDefaults] = {}
        self._lock = threading.RLock()

    # --- account defaults -------------------------------------------------------------------
    def defaults(self, account_id: str, region: str) -> AccountRegionDefaults:
        with self._lock:
            return self._defaults.setdefault((account_id, region), AccountRegionDefaults())

    def set_defaults(self, account_id: str, region: str, changes: dict[str, object]) -> None:
        """Apply a validated change; ``no-preference`` and hop limit ``-1`` clear a setting."""
        with self._lock:
            settings = self.defaults(account_id, region).settings
            for name, value in changes.items():
                if value in ("no-preference", -1):
                    settings.pop(name, None)
                else:
                    settings[name] = value

    def enforced(self, account_id: str, region: str) -> bool:
        with self._lock:
            return self.defaults(account_id, region).settings.get("HttpTokensEnforced") == "enabled"

    def set_policy(self, account_id: str, region: str, managed: bool, message: str | None) -> None:
        with self._lock:
            entry = self.defaults(account_id, region)
            entry.policy_message = (
                (message or "The account-level IMDS defaults are managed by a declarative policy.")
                if managed
                else None
            )
            self.journal.policy(account_id, region, entry.policy_message)
        log.info("declarative policy for %s/%s: %s", account_id, region, "managed" if managed else "cleared")

    # --- instance options -------------------------------------------------------------------
    def set_instance_options(self, instance: Instance, changes: dict[str, object], pending: bool) -> None:
        """Change only the given settings; ``pending`` starts the pending -> applied clock."""
        with self._lock:
            options = sim_options(instance)
            for name, value in changes.items():
                attr = OPTION_ATTRS[name]
                setattr(options, attr, int(value) if name == HOP_LIMIT else value)
            if pending:
                options.mark_pending(self._knobs.apply_delay)

    def omit_options(self, account_id: str, region: str, instance_ids: list[str], members: list[str]) -> None:
        """Make DescribeInstances leave ``members`` out of these instances' MetadataOptions.

        Real responses do not always carry every member (instances launched before a setting
        existed, partitions without it); the product must store and count such an instance the same
        way everywhere. A later ModifyInstanceMetadataOptions that sends a member brings it back.
        Raises KeyError for an unknown member or instance id.
        """
        unknown = [member for member in members if member not in OPTION_ATTRS]
        if unknown:
            raise KeyError(f"unknown MetadataOptions member(s) {unknown}; known: {sorted(OPTION_ATTRS)}")
        backend = ec2_backends[account_id][region]
        with self._lock:
            instances = [backend.get_instance_by_id(instance_id) for instance_id in instance_ids]
            missing = [i for i, instance in zip(instance_ids, instances, strict=True) if instance is None]
            if missing:
                raise KeyError(f"no instance {missing} in {account_id}/{region}")
            for instance in instances:
                options = sim_options(instance)
                for member in members:
                    setattr(options, OPTION_ATTRS[member], None)

    def on_started(self, account_id: str, region: str, instance_ids: list[str]) -> None:
        """A change made while stopped starts applying when the instance starts again."""
        backend = ec2_backends[account_id][region]
        with self._lock:
            for instance_id in instance_ids:
                instance = backend.get_instance_by_id(instance_id)
                if instance is not None:
                    options = sim_options(instance)
                    if options.awaiting_start:
                        options.awaiting_start = False
                        options.apply_at = time.monotonic() + self._knobs.apply_delay

    def on_state_changed(self, account_id: str, region: str, instance_ids: list[str]) -> None:
        """StartInstances, StopInstances or TerminateInstances succeeded: record the new states."""
        backend = ec2_backends[account_id][region]
        with self._lock:
            for instance_id in instance_ids:
                instance = backend.get_instance_by_id(instance_id)
                if instance is not None:
                    self.journal.instance_state(account_id, region, instance)

    # --- API handlers -----------------------------------------------------------------------
    def handle(self, request: QueryRequest) -> bytes:
        handler = {
            "ModifyInstanceMetadataOptions": self._modify_instance_metadata_options,
            "GetInstanceMetadataDefaults": self._get_instance_metadata_defaults,
            "ModifyInstanceMetadataDefaults": self._modify_instance_metadata_defaults,
        }[request.action]
        return handler(request)

    def _modify_instance_metadata_options(self, request: QueryRequest) -> bytes:
        instance_id = request.params.get("InstanceId", "")
        if not instance_id:
            raise Ec2Error("MissingParameter", "The request must contain the parameter InstanceId")
        changes = _validated(request.params, OPTION_VALUES, hop_clears=False)
        backend = ec2_backends[request.account_id][request.region]
        instance = backend.get_instance_by_id(instance_id)
        if instance is None:
            raise Ec2Error("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")
        if instance.state in ("shutting-down", "terminated"):
            raise Ec2Error(
                "IncorrectInstanceState",
                f"The instance '{instance_id}' is not in a state from which it can be modified.",
            )
        if changes.get("HttpTokens") == "optional" and self.enforced(request.account_id, request.region):
            raise Ec2Error(
                "UnsupportedOperation",
                "You can't enable IMDSv1 on this instance because httpTokensEnforced is enabled for this account.",
            )
        if request.dry_run:
            raise dry_run_error()
        with self._lock:
            self.set_instance_options(instance, changes, pending=True)
            self.journal.instance_options(request.account_id, request.region, instance)
        self._on_modify(instance_id)
        options = sim_options(instance)
        log.debug("modified %s in %s/%s: %s", instance_id, request.account_id, request.region, changes)
        inner = xml_elements({"instanceId": instance_id})
        inner += f"<instanceMetadataOptions>{xml_elements(options.as_response())}</instanceMetadataOptions>"
        return ec2_response(request.action, inner)

    def _get_instance_metadata_defaults(self, request: QueryRequest) -> bytes:
        entry = self.defaults(request.account_id, request.region)
        with self._lock:
            account_level = {
                "httpTokens": entry.settings.get("HttpTokens"),
                "httpPutResponseHopLimit": entry.settings.get(HOP_LIMIT),
                "httpEndpoint": entry.settings.get("HttpEndpoint"),
                "instanceMetadataTags": entry.settings.get("InstanceMetadataTags"),
                "httpTokensEnforced": entry.settings.get("HttpTokensEnforced"),
                "managedBy": "declarative-policy" if entry.policy_message else "account",
                "managedExceptionMessage": entry.policy_message,
            }
        return ec2_response(request.action, f"<accountLevel>{xml_elements(account_level)}</accountLevel>")

    def _modify_instance_metadata_defaults(self, request: QueryRequest) -> bytes:
        changes = _validated(request.params, DEFAULT_VALUES, hop_clears=True)
        entry = self.defaults(request.account_id, request.region)
        if entry.policy_message:
            raise Ec2Error(
                "UnauthorizedOperation",
                "You are not authorized to modify the instance metadata defaults because they are "
                f"managed by a declarative policy: {entry.policy_message}",
                403,
            )
        if request.dry_run:
            raise dry_run_error()
        with self._lock:
            self.set_defaults(request.account_id, request.region, changes)
            self.journal.defaults(request.account_id, request.region, entry.settings)
        log.debug("metadata defaults of %s/%s changed: %s", request.account_id, request.region, changes)
        return ec2_response(request.action, xml_elements({"return": True}))
