"""imdsweb.cache.RedisCache: Django's Redis cache with one client per pool, against real Redis."""

import os

from django.conf import settings

from imdsweb.cache import RedisCache


def _cache():
    url = settings.IMDSWEB_REDIS_URL or os.environ.get("IMDSWEB_REDIS_URL", "redis://127.0.0.1:6379/1")
    return RedisCache(url, {"KEY_PREFIX": f"imdsweb-cache-test-{os.getpid()}"})


def test_one_client_serves_every_operation(monkeypatch):
    built = []
    cache = _cache()
    monkeypatch.setattr(cache._cache, "_client",
                        lambda **kwargs: built.append(kwargs) or cache._cache._lib.Redis(**kwargs))
    assert cache.add("lock", "a", 5) is True
    assert cache.add("lock", "b", 5) is False  # the semantics are Django's
    assert cache.get("lock") == "a"
    assert cache.touch("lock", 5) is True
    cache.delete("lock")
    assert cache.get("lock") is None
    assert len(built) == 1  # Django's own client builds one per operation
