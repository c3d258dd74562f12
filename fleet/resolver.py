"""What the next launch gets, and why: AWS's order of precedence for instance metadata options.

A pure function over plain values (no database, no AWS), so the whole precedence table is pinned
in tests (fleet/tests/test_resolver.py) and docs/launch-precedence.md cites where each rule comes
from. Per option, highest first (Amazon EC2 User Guide, "Order of precedence for instance metadata
options"):

1. the launch itself (RunInstances ``MetadataOptions``), then the launch template version's or
   launch configuration's ``MetadataOptions`` — an Auto Scaling group launches from its template
   version or configuration;
2. the account/region default (ModifyInstanceMetadataDefaults or a declarative policy);
3. the AMI: ``ImdsSupport = v2.0`` gives HttpTokens ``required`` and hop limit 2;
4. EC2's defaults: HttpTokens ``optional``, hop limit 1.

A value left unset falls through to the next level. Fail closed: a level that must be consulted
but is not known (account defaults never read, an AMI not synced) makes the option unknown, never
"fine". With ``HttpTokensEnforced = enabled`` a launch whose HttpTokens does not resolve to
``required`` is refused by EC2.
"""

from dataclasses import dataclass, field

from .choices import LaunchVerdict

EC2_DEFAULTS = {"http_tokens": "optional", "hop_limit": 1}
AMI_V2 = {"http_tokens": "required", "hop_limit": 2}
WIRE = {"http_tokens": "HttpTokens", "hop_limit": "HttpPutResponseHopLimit"}


@dataclass(frozen=True)
class Stated:
    """Options one level states itself (None = unset), and how the chain names that level."""

    label: str
    http_tokens: str | None = None
    hop_limit: int | None = None


@dataclass(frozen=True)
class AccountDefaults:
    """``known`` False: GetInstanceMetadataDefaults never answered for this account/region."""

    region: str
    known: bool = True
    http_tokens: str | None = None  # None = no-preference / absent
    hop_limit: int | None = None
    enforced: bool = False
    policy_managed: bool = False


@dataclass(frozen=True)
class Ami:
    """``known`` False: not synced, or DescribeImages did not return it (deregistered, unshared)."""

    image_id: str
    known: bool = True
    imds_support: str | None = None


@dataclass
class Resolution:
    http_tokens: str | None
    hop_limit: int | None
    verdict: str
    chain: list = field(default_factory=list)  # one sentence per step, for HttpTokens then the hop limit


def _resolve_option(name, stated_levels, account, ami):
    """(value or None when unknown, the steps that decided it)."""
    wire = WIRE[name]
    steps = []
    for level in stated_levels:
        value = getattr(level, name)
        if value is not None:
            steps.append(f"{level.label} sets {wire} {value}")
            return value, steps
        steps.append(f"{level.label} leaves {wire} unset")
    if account is None or not account.known:
        region = account.region if account else "this region"
        steps.append(f"account default in {region} is not known (never read): cannot tell")
        return None, steps
    value = getattr(account, name)
    source = "declarative policy" if account.policy_managed else "account default"
    if value is not None:
        steps.append(f"{source} in {account.region} is {wire} {value}")
        return value, steps
    steps.append(f"{source} in {account.region} is no-preference")
    if ami is None or not ami.known:
        label = ami.image_id if ami and ami.image_id else "the AMI"
        steps.append(f"AMI {label} is not known (not synced, deregistered or not shared): cannot tell")
        return None, steps
    if ami.imds_support == "v2.0":
        steps.append(f"AMI {ami.image_id} has ImdsSupport v2.0: {wire} {AMI_V2[name]}")
        return AMI_V2[name], steps
    steps.append(f"AMI {ami.image_id} has no ImdsSupport")
    steps.append(f"EC2 default: {wire} {EC2_DEFAULTS[name]}")
    return EC2_DEFAULTS[name], steps


def next_launch(stated_levels, account, ami):
    """Resolve HttpTokens and the hop limit for a launch.

    ``stated_levels``: the launch's own ``Stated`` (if any) then the template version's or launch
    configuration's, highest first. ``account``: AccountDefaults or None. ``ami``: Ami or None.
    """
    tokens, token_steps = _resolve_option("http_tokens", stated_levels, account, ami)
    hop_limit, hop_steps = _resolve_option("hop_limit", stated_levels, account, ami)
    enforced = bool(account and account.known and account.enforced)
    if tokens == "required":
        verdict = LaunchVerdict.IMDSV2
    elif tokens is None:
        verdict = LaunchVerdict.UNKNOWN
    elif enforced:
        verdict = LaunchVerdict.REFUSED
    else:
        verdict = LaunchVerdict.IMDSV1
    chain = [" → ".join(token_steps) + (f" → {tokens}" if tokens else "")]
    if enforced and tokens != "required":
        chain.append(
            f"HttpTokensEnforced is enabled in {account.region}: EC2 refuses launches that do not require IMDSv2"
        )
    chain.append(" → ".join(hop_steps) + (f" → hop limit {hop_limit}" if hop_limit is not None else ""))
    return Resolution(http_tokens=tokens, hop_limit=hop_limit, verdict=verdict, chain=chain)
