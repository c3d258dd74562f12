"""AWS sessions: the service models are parsed once per process, whatever the number of accounts."""

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


def test_warm_up_parses_the_models_a_worker_needs(aws_env):
    session.warm_up()
    loader = session._shared_loader()
    cached = {key[1:3] for key in loader._cache if key[0] == "load_service_model"}
    assert {(service, "service-2") for service in session.SERVICES} <= cached


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
