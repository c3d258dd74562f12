"""Project-wide pytest setup: tests run on the database DATABASE_URL names (PostgreSQL in CI)."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cache_keys_of_this_test_process():
    """Every test process keys its cache apart. pytest-xdist runs one per core and the SQLite tier
    runs beside them, each on its own database but all on one Redis: their factories give
    accounts the same primary keys, so one process's runner lock or tracking guard (keyed by
    account pk, living up to a minute) would be another's, or a previous run's."""
    from django.conf import settings
    from django.test.utils import override_settings

    caches = {name: {**conf, "KEY_PREFIX": f"{conf.get('KEY_PREFIX', '')}-test{os.getpid()}"}
              for name, conf in settings.CACHES.items()}
    with override_settings(CACHES=caches):
        yield


@pytest.fixture(autouse=True)
def _fresh_aws_caches():
    """boto3 clients are cached per process; each test may point at another endpoint."""
    from fleet.aws.session import reset_caches

    reset_caches()
    yield
    reset_caches()
