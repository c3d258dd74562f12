"""The order of precedence for instance metadata options at launch, every combination pinned.

Levels (docs/launch-precedence.md): the launch's own MetadataOptions, the launch template
version's (or launch configuration's), the account/region default, the AMI's ImdsSupport, EC2's
defaults. Each level can leave an option unset; the account default and the AMI can also be
unknown to imdsweb (never read / not synced), which must never read as "fine".
"""

import itertools

import pytest

from fleet.choices import LaunchVerdict
from fleet.resolver import AccountDefaults, Ami, Stated, next_launch

UNSET, UNKNOWN = None, "unknown"
TOKENS = (UNSET, "optional", "required")
ACCOUNT_TOKENS = (UNSET, "optional", "required", UNKNOWN)  # UNSET = no-preference / absent
AMI_SUPPORT = (UNSET, "v2.0", UNKNOWN)


def account(tokens=UNSET, hop=UNSET, enforced=False):
    if tokens == UNKNOWN:
        return AccountDefaults(region="eu-west-1", known=False)
    return AccountDefaults(region="eu-west-1", http_tokens=tokens, hop_limit=hop, enforced=enforced)


def ami(support):
    if support == UNKNOWN:
        return Ami(image_id="ami-9f", known=False)
    return Ami(image_id="ami-9f", imds_support=support)


def expected_tokens(launch, template, account_tokens, ami_support):
    """The table as AWS's user guide states it: the first level that sets a value wins."""
    for value in (launch, template):
        if value is not UNSET:
            return value
    if account_tokens == UNKNOWN:
        return None
    if account_tokens is not UNSET:
        return account_tokens
    if ami_support == UNKNOWN:
        return None
    return "required" if ami_support == "v2.0" else "optional"


@pytest.mark.parametrize(
    ("launch", "template", "account_tokens", "ami_support", "enforced"),
    list(itertools.product(TOKENS, TOKENS, ACCOUNT_TOKENS, AMI_SUPPORT, (False, True))),
)
def test_http_tokens_every_combination(launch, template, account_tokens, ami_support, enforced):
    levels = [Stated("RunInstances", http_tokens=launch), Stated("LT lt-0a1 v7", http_tokens=template)]
    result = next_launch(levels, account(account_tokens, enforced=enforced), ami(ami_support))
    tokens = expected_tokens(launch, template, account_tokens, ami_support)
    assert result.http_tokens == tokens
    known_enforced = enforced and account_tokens != UNKNOWN
    if tokens == "required":
        assert result.verdict == LaunchVerdict.IMDSV2
    elif tokens is None:
        assert result.verdict == LaunchVerdict.UNKNOWN  # fail closed
    else:
        assert result.verdict == (LaunchVerdict.REFUSED if known_enforced else LaunchVerdict.IMDSV1)


HOPS = (UNSET, 1, 3)


@pytest.mark.parametrize(
    ("launch", "template", "account_hop", "ami_support"),
    list(itertools.product(HOPS, HOPS, (UNSET, 4, UNKNOWN), AMI_SUPPORT)),
)
def test_hop_limit_every_combination(launch, template, account_hop, ami_support):
    levels = [Stated("RunInstances", hop_limit=launch), Stated("LT lt-0a1 v7", hop_limit=template)]
    defaults = account(UNKNOWN) if account_hop == UNKNOWN else account(hop=account_hop)
    result = next_launch(levels, defaults, ami(ami_support))
    first = next((v for v in (launch, template) if v is not UNSET), UNSET)
    if first is not UNSET:
        expected = first
    elif account_hop == UNKNOWN:
        expected = None
    elif account_hop is not UNSET:
        expected = account_hop
    elif ami_support == UNKNOWN:
        expected = None
    else:
        expected = 2 if ami_support == "v2.0" else 1
    assert result.hop_limit == expected


def test_the_seed_documents_examples():
    """AMI v2.0 + account default no-preference -> required; AMI v2.0 + account optional -> optional."""
    template = [Stated("LT lt-0a1 v7")]
    assert next_launch(template, account(), ami("v2.0")).http_tokens == "required"
    assert next_launch(template, account("optional"), ami("v2.0")).http_tokens == "optional"


def test_per_option_fall_through_mixes_levels():
    """A template that sets only the hop limit still gets HttpTokens from further down."""
    result = next_launch([Stated("LT web v3", hop_limit=3)], account("required"), ami(UNSET))
    assert (result.http_tokens, result.hop_limit) == ("required", 3)
    result = next_launch([Stated("LT web v3", http_tokens="optional")], account(), ami("v2.0"))
    assert (result.http_tokens, result.hop_limit) == ("optional", 2)  # hop limit from the AMI


def test_the_chain_explains_every_step():
    result = next_launch([Stated("LT lt-0a1 v7")], account(), ami(UNSET))
    assert result.chain[0] == (
        "LT lt-0a1 v7 leaves HttpTokens unset → account default in eu-west-1 is no-preference → "
        "AMI ami-9f has no ImdsSupport → EC2 default: HttpTokens optional → optional"
    )
    assert result.chain[-1].endswith("EC2 default: HttpPutResponseHopLimit 1 → hop limit 1")
    refused = next_launch([Stated("LT lt-0a1 v7", http_tokens="optional")], account(enforced=True), ami(UNSET))
    assert refused.chain[1].startswith("HttpTokensEnforced is enabled in eu-west-1")
    policy = AccountDefaults(region="eu-west-1", http_tokens="required", policy_managed=True)
    assert "declarative policy in eu-west-1 is HttpTokens required" in next_launch([], policy, None).chain[0]
    unknown = next_launch([Stated("LT lt-0a1 v7")], account(UNKNOWN), ami(UNSET))
    assert "not known (never read): cannot tell" in unknown.chain[0]
