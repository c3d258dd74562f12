"""factory-boy factories for the fleet models."""

import itertools

import factory
from django.contrib.auth.models import Group, User
from django.utils import timezone

from fleet.choices import HttpTokens, InstanceState, LaunchVerdict, MetadataState, SourceKind, Toggle
from fleet.models import (
    Account,
    ChangeBatch,
    ChangeItem,
    Instance,
    LaunchSource,
    LaunchTemplateVersion,
    MetadataDefaults,
)

_ids = itertools.count(1)


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Account

    account_id = factory.Sequence(lambda n: f"{100000000000 + n:012d}")
    name = factory.Sequence(lambda n: f"account-{n}")
    regions = factory.LazyFunction(lambda: ["us-east-1", "eu-west-1"])


class InstanceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Instance

    account = factory.SubFactory(AccountFactory)
    region = "us-east-1"
    instance_id = factory.LazyFunction(lambda: f"i-{next(_ids):017x}")
    name = factory.Sequence(lambda n: f"web-{n:03d}")
    tags = factory.LazyAttribute(lambda o: {"Name": o.name})
    instance_state = InstanceState.RUNNING
    instance_type = "t3.micro"
    image_id = "ami-12345678"
    http_tokens = HttpTokens.OPTIONAL
    hop_limit = 1
    http_endpoint = Toggle.ENABLED
    http_protocol_ipv6 = Toggle.DISABLED
    instance_metadata_tags = Toggle.DISABLED
    metadata_state = MetadataState.APPLIED
    # Measured just now with no IMDSv1 calls: the readiness gate lets it through. Tests of the
    # gate set these to None (never measured), an old time (stale) or calls > 0.
    v1_calls = 0
    usage_synced_at = factory.LazyFunction(timezone.now)
    first_seen = factory.LazyFunction(timezone.now)
    last_seen = factory.LazyFunction(timezone.now)


class MetadataDefaultsFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = MetadataDefaults

    account = factory.SubFactory(AccountFactory)
    region = "us-east-1"
    status = "known"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw-imdsweb-test")

    @factory.post_generation
    def role(self, create, extracted, **kwargs):
        """UserFactory(role="operator") puts the user in that group (created by migration)."""
        if create and extracted:
            if extracted == "admin":
                self.is_staff = True
            self.groups.add(Group.objects.get(name=extracted))
        if create:
            self.save()


class ChangeBatchFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ChangeBatch

    desired = factory.LazyFunction(lambda: {"http_tokens": "required"})


class ChangeItemFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ChangeItem

    batch = factory.SubFactory(ChangeBatchFactory)
    state = "queued"
    # An item that reached AWS left its instance at the batch's HttpTokens (as a sync would see).
    instance = factory.SubFactory(
        InstanceFactory,
        http_tokens=factory.LazyAttribute(
            lambda o: o.factory_parent.batch.desired.get("http_tokens", HttpTokens.OPTIONAL)
            if o.factory_parent.state in ("applied", "pending", "stuck") else HttpTokens.OPTIONAL
        ),
    )
    account = factory.LazyAttribute(lambda o: o.instance.account)
    region = factory.LazyAttribute(lambda o: o.instance.region)


class LaunchSourceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LaunchSource

    account = factory.SubFactory(AccountFactory)
    region = "us-east-1"
    kind = SourceKind.LAUNCH_TEMPLATE
    source_id = factory.LazyFunction(lambda: f"lt-{next(_ids):017x}")
    name = factory.Sequence(lambda n: f"template-{n}")
    default_version = 1
    latest_version = 1
    verdict = LaunchVerdict.IMDSV1
    next_version = 1
    next_http_tokens = "optional"
    next_hop_limit = 1
    chain = factory.LazyFunction(lambda: ["LT leaves HttpTokens unset → EC2 default: HttpTokens optional → optional"])
    first_seen = factory.LazyFunction(timezone.now)
    last_seen = factory.LazyFunction(timezone.now)


class LaunchTemplateVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = LaunchTemplateVersion

    template = factory.SubFactory(LaunchSourceFactory)
    version_number = 1
    image_id = "ami-12345678"
    synced_at = factory.LazyFunction(timezone.now)
