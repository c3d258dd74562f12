"""Project-wide pytest setup: tests run on the database DATABASE_URL names (PostgreSQL in CI)."""

import pytest


@pytest.fixture(autouse=True)
def _fresh_aws_caches():
    """boto3 clients are cached per process; each test may point at another endpoint."""
    from fleet.aws.session import reset_caches

    reset_caches()
    yield
    reset_caches()
