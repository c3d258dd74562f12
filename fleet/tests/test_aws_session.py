"""AWS sessions: the service models are parsed once per process, whatever the number of accounts."""

import pytest

from fleet.aws import session
from fleet.tests.factories import AccountFactory


def test_sessions_of_all_accounts_share_one_model_loader(aws_env, monkeypatch, db):
    session.reset_caches()
    monkeypatch.setattr(session, "_assumed_session", lambda role_arn, external_id: session._boto3_session())
    first = session.session_for(AccountFactory(role_arn="arn:aws:iam::111111111111:role/r"))
    second = session.session_for(AccountFactory(role_arn="arn:aws:iam::222222222222:role/r"))
    ambient = session.session_for(AccountFactory(role_arn=""))
    assert first is not second
    loaders = {id(s._session.get_component("data_loader")) for s in (first, second, ambient)}
    assert loaders == {id(session._shared_loader())}
    paths = session._shared_loader().search_paths
    assert len(paths) == len(set(paths))  # boto3 adds its data path per session: kept once
    session.reset_caches()


def test_warm_up_parses_the_models_a_worker_needs(aws_env, monkeypatch):
    monkeypatch.setattr(session, "_client_classes", {})
    session.warm_up()
    loader = session._shared_loader()
    cached = {key[1:3] for key in loader._cache if key[0] == "load_service_model"}
    assert {(service, "service-2") for service in session.SERVICES} <= cached
    # and built their client classes, which the clients of every account then share
    assert {name for name, _version in session._client_classes} >= set(session.SERVICES)


def test_client_cache_keeps_only_the_most_recently_used(aws_env, settings, db):
    settings.IMDSWEB_AWS_CLIENT_CACHE_SIZE = 2
    session.reset_caches()
    account = AccountFactory(role_arn="")
    first = session.client(account, "us-east-1", "ec2")
    session.client(account, "eu-west-1", "ec2")
    assert session.client(account, "us-east-1", "ec2") is first  # used again: now the most recent
    session.client(account, "ap-southeast-2", "ec2")  # evicts eu-west-1, the least recently used
    assert len(session._clients) == 2
    assert session.client(account, "us-east-1", "ec2") is first
    assert {key[3] for key in session._clients} == {"us-east-1", "ap-southeast-2"}
    session.reset_caches()


def test_clients_of_every_account_and_region_share_one_class_per_service(aws_env, monkeypatch, db):
    import botocore.session
    from botocore.stub import Stubber

    session.reset_caches()
    monkeypatch.setattr(session, "_assumed_session", lambda role_arn, external_id: session._boto3_session())
    east = session.client(AccountFactory(role_arn="arn:aws:iam::111111111111:role/r"), "us-east-1", "ec2")
    west = session.client(AccountFactory(role_arn="arn:aws:iam::222222222222:role/r"), "eu-west-1", "ec2")
    sts = session.client(AccountFactory(role_arn=""), "us-east-1", "sts")
    assert type(east) is type(west)
    assert type(sts) is not type(east)
    # and one service model, whose resolved operations, shapes and error codes serve them all
    assert east.meta.service_model is west.meta.service_model
    assert sts.meta.service_model is not east.meta.service_model
    assert (east.meta.region_name, west.meta.region_name) == ("us-east-1", "eu-west-1")
    # The shared class's methods call through the client they are called on.
    for client, region in ((east, "us-east-1"), (west, "eu-west-1")):
        with Stubber(client) as stub:
            stub.add_response("describe_regions", {"Regions": [{"RegionName": region}]})
            assert client.describe_regions()["Regions"] == [{"RegionName": region}]
            stub.assert_no_pending_responses()
    # A session that is not ours (another loader) builds its clients as botocore does.
    foreign = botocore.session.get_session().create_client("ec2", region_name="us-east-1")
    assert type(foreign) is not type(east)
    assert foreign.meta.service_model is not east.meta.service_model
    session.reset_caches()


def test_timestamps_parse_as_botocore_parses_them():
    import datetime

    from botocore.utils import parse_timestamp

    for value in ("2026-12-02T01:50:24.000Z", "2026-12-02T01:50:24Z", "2026-12-02T01:50:24.123456+02:00",
                  "2026-12-02T01:50:24", "Wed, 02 Dec 2026 01:50:24 GMT", "1764640224", 1764640224,
                  "2026-12-02T01:50:24.5-07:30"):
        ours, botocores = session.parse_timestamp(value), parse_timestamp(value)
        assert ours == botocores, value
        assert (ours.utcoffset(), ours.tzinfo is None) == (botocores.utcoffset(), botocores.tzinfo is None), value
    utc = session.parse_timestamp("2026-12-02T01:50:24.000Z")
    assert utc == datetime.datetime(2026, 12, 2, 1, 50, 24, tzinfo=datetime.UTC)
    assert utc.tzinfo.tzname(utc) == "UTC"
    # Not a timestamp: the same error as botocore's.
    with pytest.raises(ValueError):
        session.parse_timestamp("2026-13-45T99:99:99Z")


def test_clients_parse_answers_timestamps_with_parse_timestamp(moto_endpoint, db):
    from fleet.aws import ec2 as aws_ec2
    from fleet.tests.conftest import AMBIENT_ACCOUNT, ec2_in

    plain = ec2_in(moto_endpoint, AMBIENT_ACCOUNT, "us-east-1")
    plain.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)
    expected = plain.describe_instances()["Reservations"][0]["Instances"][0]
    session.reset_caches()
    account = AccountFactory(account_id=AMBIENT_ACCOUNT, role_arn="")
    ours = session.client(account, "us-east-1", "ec2")
    assert ours._endpoint._response_parser_factory._defaults["timestamp_parser"] is session.parse_timestamp
    [instance] = next(aws_ec2.describe_instance_pages(account, "us-east-1"))
    assert instance["LaunchTime"] == expected["LaunchTime"]
    assert instance["LaunchTime"].utcoffset() == expected["LaunchTime"].utcoffset()
    assert instance == expected
    session.reset_caches()


def test_every_accounts_role_is_assumed_through_one_sts_client(moto_endpoint, db):
    """One STS client of the process's own credentials assumes every account's role (a botocore
    session and a client per account cost a worker's first run in each account tens of ms)."""
    from fleet.aws import ec2 as aws_ec2

    session.reset_caches()
    first = AccountFactory(account_id="111111111111", role_arn="arn:aws:iam::111111111111:role/imdsweb-reader")
    second = AccountFactory(account_id="222222222222", role_arn="arn:aws:iam::222222222222:role/imdsweb-reader")
    sts = session._sts_client()
    calls = []
    sts.meta.events.register("before-call.sts.AssumeRole", lambda params, **kwargs: calls.append(params["body"]))
    for account in (first, second):
        list(aws_ec2.describe_instance_pages(account, "us-east-1"))  # works inside the assumed role
    assert session._sts_client() is sts and len(calls) == 2
    assert [call["RoleArn"] for call in calls] == [first.role_arn, second.role_arn]
    assert session.session_for(first) is not session.session_for(second)
    session.reset_caches()
    assert session._sts_client() is not sts
