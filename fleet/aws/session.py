"""Sessions and clients per account: ambient credentials, or STS AssumeRole with an ExternalId.

Assumed-role credentials are botocore ``RefreshableCredentials``, so they are refreshed before
they expire without any code of ours. Clients are cached per process (they are thread-safe and
expensive to build). Every session of the process shares one botocore data loader, so the service
models (EC2's is megabytes of JSON) are parsed once per process, not once per account; a worker
parses them when it starts (``warm_up``), not when the first batch is waiting. The endpoint comes
from boto3's own ``AWS_ENDPOINT_URL`` handling.

Clients of those sessions also share their class, one per service and API version
(``_shared_client_class``). botocore builds a new class for every client it creates, one method
per API operation (about 750 for EC2, with a docstring object each): three quarters of the CPU of
building an EC2 client (52 ms of CPU on the benchmark machine, 14 ms with the class shared). A
worker process builds a client per account/region it works on, and a batch that starts in 16
account/regions at once builds them all in its first second, when every region's bucket is
waiting for its first call (P5b in docs/benchmarks.md). The class depends only on the service
model and on the handlers of botocore's ``creating-client-class`` event, which are the same for
every session built here; neither boto3 nor botocore offers such a cache (boto/boto3#3197), and
clients of any other session (another loader) are built as botocore builds them. They share their
``ServiceModel`` too (``_shared_service_model``): botocore wraps the loader's (shared) model in a
new one per client, which resolves each operation's shapes again and, on the client's first
error answer, builds a table of every error shape of the service (tens of ms for EC2) — and a
batch's first call in every account/region is a DryRun, which AWS answers with an error code.
The worker's main process builds both before it forks (``warm_up``), and every account's role is
assumed through one STS client of the process's own credentials.

Their answers' timestamps are parsed by ``parse_timestamp``: botocore hands every timestamp to
dateutil's general parser (116 µs each on the benchmark machine, a third of the CPU of parsing a
DescribeInstances page, whose instances carry four or more each); AWS's query APIs send ISO
8601, which ``datetime.fromisoformat`` reads in 2.5 µs. Anything else goes to botocore's parser.
"""

import datetime
import os
import threading
from collections import OrderedDict

import boto3
import botocore.client
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.utils import parse_timestamp as botocore_parse_timestamp
from dateutil.tz import tzutc
from django.conf import settings

from . import counters

_lock = threading.Lock()
_sessions = {}
# Least recently used first: bounded by IMDSWEB_AWS_CLIENT_CACHE_SIZE, since a client costs
# about 0.8 MB and a worker of a 3,400 account/region fleet otherwise keeps one per
# account/region/service for its whole life (docs/benchmarks.md, organization scale).
_clients = OrderedDict()
_loader = None
_sts = {}  # the one STS client (_sts_client)

# The services the workers call; their models are parsed by warm_up().
SERVICES = ("ec2", "sts", "cloudwatch", "autoscaling")

ROLE_SESSION_NAME = "imdsweb"
ASSUME_ROLE_SECONDS = 3600


def _config(max_attempts):
    # botocore's "max_attempts" counts retries (max_attempts=1 is two calls AWS's bucket sees);
    # "total_max_attempts" counts every call, the first included.
    return Config(
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=settings.IMDSWEB_AWS_CONNECT_TIMEOUT,
        read_timeout=settings.IMDSWEB_AWS_READ_TIMEOUT,
        max_pool_connections=20,
    )


def _sts_region():
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def _cached(store, key, build):
    """``store[key]``, built by ``build()`` outside the lock the first time (the first build to
    finish is the one every caller gets)."""
    with _lock:
        value = store.get(key)
    if value is None:
        value = build()
        with _lock:
            value = store.setdefault(key, value)
    return value


_client_classes = {}
_build_client_class = botocore.client.ClientCreator._create_client_class


def _shared_client_class(creator, service_name, service_model):
    """botocore's ``ClientCreator._create_client_class``, built once per service and API version
    for the clients of this module's sessions (they use the shared loader)."""
    if creator._loader is not _loader:
        return _build_client_class(creator, service_name, service_model)
    return _cached(_client_classes, (service_name, service_model.api_version),
                   lambda: _build_client_class(creator, service_name, service_model))


_service_models = {}
_build_service_model = botocore.client.ClientCreator._load_service_model


def _shared_service_model(creator, service_name, api_version=None):
    """botocore's ``ClientCreator._load_service_model``, one ``ServiceModel`` per service and API
    version for the clients of this module's sessions (the model it wraps is the shared loader's
    anyway): what it resolves once (operations, shapes, its error-code table) serves every client."""
    if creator._loader is not _loader:
        return _build_service_model(creator, service_name, api_version)
    return _cached(_service_models, (service_name, api_version),
                   lambda: _build_service_model(creator, service_name, api_version))


def _shared_loader():
    global _loader
    with _lock:
        if _loader is None:
            _loader = botocore.session.get_session().get_component("data_loader")
            botocore.client.ClientCreator._create_client_class = _shared_client_class
            botocore.client.ClientCreator._load_service_model = _shared_service_model
        return _loader


_UTC = datetime.timedelta(0)


def parse_timestamp(value):
    """botocore's ``parse_timestamp`` (the same datetimes, UTC as dateutil's ``tzutc``), with
    ISO 8601 (``2026-12-02T01:50:24.000Z``, what EC2 sends) read by ``datetime.fromisoformat``."""
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            return botocore_parse_timestamp(value)
        return parsed.replace(tzinfo=tzutc()) if parsed.utcoffset() == _UTC else parsed
    return botocore_parse_timestamp(value)


def _boto3_session(core=None):
    """A boto3 session whose botocore session uses the process's one data loader (and
    ``parse_timestamp``)."""
    core = core or botocore.session.get_session()
    loader = _shared_loader()
    core.register_component("data_loader", loader)
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
    session = boto3.Session(botocore_session=core)
    with _lock:  # boto3 appends its data path to the loader on every new session: keep it once
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
    return session


def warm_up():
    """Parse the models of the services the workers call and build their client classes (a
    worker's main process calls this before it forks its pool, whose processes inherit both).

    Building the first EC2 client otherwise parses them while a runner holds a fresh token and
    the whole batch waits (seconds with several cold worker processes); and every pool process
    would build each class on its first task, when a batch's first runs are waiting (P5b).
    """
    loader = _shared_loader()
    loader.load_data("endpoints")
    loader.load_data("partitions")
    for service in SERVICES:
        for type_name in ("service-2", "endpoint-rule-set-1"):
            loader.load_service_model(service, type_name)
    # A client of each service, thrown away: what stays is its class (_shared_client_class) and
    # service model (_shared_service_model), and the ambient session that assumes accounts' roles.
    # The placeholder keys make no call and keep the credential chain from being searched here.
    warm = _ambient_session()
    for service in SERVICES:
        client = warm.client(service, region_name=_sts_region(), aws_access_key_id="warm-up",
                             aws_secret_access_key="warm-up")
        # and its service model's error-code table, which botocore builds on a client's first error
        # answer (every region's first call is a DryRun, which AWS answers with an error code)
        client.meta.service_model.shape_for_error_code("DryRunOperation")


def _sts_client():
    """The STS client that assumes every account's role: the ambient credentials', one per
    process, rather than a botocore session and a client built per account."""
    return _cached(_sts, "sts", lambda: _ambient_session().client(
        "sts", region_name=_sts_region(), config=_config(settings.IMDSWEB_AWS_MAX_ATTEMPTS)))


def _assumed_session(role_arn, external_id):
    sts = _sts_client()

    def fetch():
        kwargs = {"RoleArn": role_arn, "RoleSessionName": ROLE_SESSION_NAME, "DurationSeconds": ASSUME_ROLE_SECONDS}
        if external_id:
            kwargs["ExternalId"] = external_id
        creds = sts.assume_role(**kwargs)["Credentials"]
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),
        }

    credentials = RefreshableCredentials.create_from_metadata(
        metadata=fetch(), refresh_using=fetch, method="sts-assume-role"
    )
    core = botocore.session.get_session()
    core._credentials = credentials  # the documented way to hand a session refreshable creds
    return _boto3_session(core)


def session_for(account):
    key = (account.role_arn, account.external_id)
    return _cached(_sessions, key, lambda: _assumed_session(*key) if account.role_arn else _boto3_session())


def _ambient_session():
    """The session of the process's own credentials (the standard chain)."""
    return _cached(_sessions, ("", ""), _boto3_session)


def client(account, region, service, max_attempts=None):
    """A cached client for ``service`` in ``region`` of ``account``."""
    attempts = max_attempts or settings.IMDSWEB_AWS_MAX_ATTEMPTS
    key = (account.account_id, account.role_arn, account.external_id, region, service, attempts)
    with _lock:
        cached = _clients.get(key)
        if cached is not None:
            _clients.move_to_end(key)
            return cached
    new = counters.instrument(session_for(account).client(service, region_name=region, config=_config(attempts)))
    with _lock:
        _clients[key] = new
        while len(_clients) > settings.IMDSWEB_AWS_CLIENT_CACHE_SIZE:
            _clients.popitem(last=False)
    return new


def reset_caches():
    """Forget sessions and clients (tests, and after an account's role changes)."""
    with _lock:
        _sessions.clear()
        _clients.clear()
        _sts.clear()


def ec2_regions():
    """Every EC2 region botocore knows, in its three partitions (aws, aws-cn, aws-us-gov), from the
    endpoint data it ships with: no call to AWS. A region newer than the installed botocore is
    missing here; the admin keeps an account's regions that are not in the list."""
    session = botocore.session.get_session()
    regions = set()
    for partition in ("aws", "aws-cn", "aws-us-gov"):
        regions.update(session.get_available_regions("ec2", partition_name=partition))
    return sorted(regions)
