"""Django's Redis cache backend, keeping one ``redis.Redis`` client per connection pool.

Django's ``RedisCacheClient`` builds a new ``redis.Redis`` object (response callbacks and all)
for every cache operation. The change engine makes several per run (the runner lock, the
backoff streak, the posture refresh guard, the worker heartbeat) and at AWS's rate a worker runs
tens of runs a second: building those objects was about 6 % of a worker's CPU in benchmark P5b's
profile. A client only wraps its pool and is thread-safe, so one per pool is what redis-py
intends; the pools are Django's own (one per server), and they reset themselves after a fork.
Written by hand because it is one method of Django's class, not a library's job.
"""

from django.core.cache.backends import redis as django_redis


class _CacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients = {}

    def get_client(self, key=None, *, write=False):
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class RedisCache(django_redis.RedisCache):
    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = _CacheClient
