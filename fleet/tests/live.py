"""A whole imdsweb stack in real processes for end-to-end tests: a private Redis, the simulator,
Celery workers and beat, all on loopback, all stopped when the tests using it end.

The test process and the workers share the pytest test database (tests using this must be
``transactional_db`` so the rows are committed where the workers can see them).

Starting a stack takes seconds (the simulator imports moto, each Celery process imports Django),
so a module's tests share one: ``module_stack()`` makes the module-scoped fixture, and
``LiveStack.fresh()`` puts it back as each test expects to find it. Tests keep out of each
other's way by each working in accounts of their own (the simulator's state and the rate
buckets in Redis are per account); the database is emptied between tests as usual.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pytest
import redis
from django.db import connection
from django.test import override_settings

from imdssim.testing import SimulatorProcess

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


class RedisServer:
    """A throwaway redis-server on a free port: stoppable without touching anyone else's Redis."""

    def __init__(self):
        self.port = free_port()
        self.process = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None


def database_url():
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    return f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class LiveStack:
    def __init__(self, settings, time_scale=1.0, apply_delay=0.5, throttle=True, sim_args=(), seed_demo=False,
                 env=None):
        self.settings = settings
        self.extra_env = dict(env or {})  # settings of the workers and beat, over the defaults below
        self.redis = RedisServer()
        self.time_scale = time_scale
        self.sim = SimulatorProcess(
            apply_delay=apply_delay, throttle=throttle, time_scale=time_scale, extra_args=sim_args,
            seed_demo=seed_demo,
        )
        self.workers = []
        self.worker_count = 0
        self.beat = None
        self.tmp = Path(tempfile.mkdtemp(prefix="imdsweb-live-"))
        self._spawned = 0

    # ------------------------------------------------------------ lifecycle

    def start(self, workers=1, beat=True):
        self.worker_count = workers
        self.redis.start()
        self.sim.start()
        self._configure_this_process()
        for _ in range(workers):
            self.start_worker()
        if beat:
            self.start_beat()
        return self

    def env(self):
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "imdsweb.settings",
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": f"{self.redis.url}/0",
            "IMDSWEB_REDIS_URL": f"{self.redis.url}/1",
            "AWS_ENDPOINT_URL": self.sim.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "IMDSWEB_RATE_TIME_SCALE": str(self.time_scale),
            "IMDSWEB_TRACK_PENDING_SECONDS": "1",
            "IMDSWEB_SWEEP_SECONDS": "2",
            "IMDSWEB_SUBMIT_TIMEOUT_SECONDS": "5",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def _configure_this_process(self):
        from django.conf import settings as django_settings

        from fleet import ratelimit
        from fleet.aws import counters
        from fleet.aws.session import reset_caches
        from imdsweb.celery import app

        env = self.env()
        for name in ("CELERY_BROKER_URL", "IMDSWEB_REDIS_URL", "IMDSWEB_RATE_TIME_SCALE"):
            setattr(self.settings, name, env[name] if name != "IMDSWEB_RATE_TIME_SCALE" else self.time_scale)
        self.settings.CACHES = {
            "default": {"BACKEND": "imdsweb.cache.RedisCache", "LOCATION": env["IMDSWEB_REDIS_URL"],
                        "KEY_PREFIX": "imdsweb"}
        }
        app.conf.broker_url = django_settings.CELERY_BROKER_URL
        # Celery reads CELERY_BROKER_URL from the environment before its configuration: without
        # this, a process started with one (bench.run's) publishes the tasks this process sends
        # (a batch's dispatch) to a broker no worker of this stack consumes.
        os.environ["CELERY_BROKER_URL"] = env["CELERY_BROKER_URL"]
        app.close()  # drop pooled connections to the previous broker ...
        # ... and the producer pool, which keeps the previous broker's connections (and URL) past
        # close(): without this a second stack in one process dispatches to the first's broker.
        if app.amqp._producer_pool is not None:
            app.amqp._producer_pool.force_close_all()
            app.amqp._producer_pool = None
        ratelimit._redis = None
        counters._redis = None  # the AWS call counters (/metrics) live in this stack's Redis too
        for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
            os.environ[name] = env[name]
        os.environ.pop("AWS_SESSION_TOKEN", None)
        reset_caches()

    def _spawn(self, args, name):
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "imdsweb", *args],
            cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def start_worker(self, concurrency=2):
        name = f"worker{self._spawned}"  # a new log (and Celery node name) for every worker ever started
        self._spawned += 1
        process = self._spawn(
            # -O fair, as deployed: a resumed runner never waits in a busy pool process's pipe.
            ["worker", "-l", "info", "-c", str(concurrency), "-O", "fair", "-n", f"{name}@%h", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            name,
        )
        self.workers.append(process)
        return process

    def start_beat(self):
        self.beat = self._spawn(["beat", "-l", "info", "-s", str(self.tmp / "beat-schedule")], "beat")

    def kill_worker(self, process, sig=signal.SIGKILL):
        """Kill a worker and its pool children at once, like an OOM kill or a lost host."""
        os.killpg(process.pid, sig)
        process.wait(10)
        self.workers.remove(process)

    def stop_worker(self, process):
        """Stop a worker the way a deploy does (SIGTERM: it finishes its tasks first)."""
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.workers.remove(process)

    def restart_dead_workers(self):
        """A new worker for each one that has exited, as compose's ``restart: unless-stopped`` does."""
        for process in [p for p in self.workers if p.poll() is not None]:
            self.workers.remove(process)
            self.start_worker()

    def fresh(self):
        """Put a shared stack back as a test expects to find it: Redis answering, the workers it was
        started with (and no more), the simulator's fault knobs off and its counters zeroed (which
        refills its throttle buckets). What earlier tests left in the simulated accounts stays:
        each test uses accounts of its own."""
        if not self.redis.running:
            self.redis.start()
        for process in self.workers[self.worker_count:]:
            self.stop_worker(process)
        self.restart_dead_workers()
        while len(self.workers) < self.worker_count:
            self.start_worker()
        self.sim.configure(throttle_rate=0, error_rate=0, latency_ms=0)
        self.sim.reset_stats()
        return self

    def stop(self):
        for process in [*self.workers, self.beat]:
            if process and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.workers, self.beat]:
            if process:
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.workers, self.beat = [], None
        self.sim.stop()
        self.redis.stop()

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.tmp.glob("*.log")))

    # ------------------------------------------------------------ the simulated AWS side

    def ec2(self, account_id, region):
        sts = boto3.client("sts", region_name="us-east-1", endpoint_url=self.sim.endpoint_url)
        creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/imdsweb-reader",
                                RoleSessionName="live-test")["Credentials"]
        return boto3.client(
            "ec2", region_name=region, endpoint_url=self.sim.endpoint_url,
            aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )

    def aws_options(self, account_id, region):
        """{instance_id: MetadataOptions} as the simulated AWS holds them now."""
        pages = self.ec2(account_id, region).get_paginator("describe_instances").paginate()
        return {
            i["InstanceId"]: i["MetadataOptions"]
            for page in pages for r in page["Reservations"] for i in r["Instances"]
        }


class ModuleSettings:
    """What LiveStack expects of pytest-django's ``settings``, for a whole module: every assignment
    is an ``override_settings`` undone by ``restore()``."""

    def __init__(self):
        object.__setattr__(self, "_overrides", [])

    def __setattr__(self, name, value):
        override = override_settings(**{name: value})
        override.enable()
        self._overrides.append(override)

    def restore(self):
        while self._overrides:
            self._overrides.pop().disable()


class SavedEnviron:
    """Put back the environment variables LiveStack sets in this process."""

    NAMES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
             "AWS_SESSION_TOKEN", "CELERY_BROKER_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")

    def __init__(self):
        self.saved = {name: os.environ.get(name) for name in self.NAMES}

    def restore(self):
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def module_stack(stack_class=LiveStack, workers=1, beat=True, **options):
    """A module-scoped fixture: one ``stack_class(settings, **options)`` started for all the tests
    of the module that ask for it, stopped after the last one, with this process's settings and
    environment put back. Tests take it through a function fixture that calls ``fresh()``::

        live_stack = module_stack(time_scale=10)

        @pytest.fixture
        def stack(live_stack):
            return live_stack.fresh()
    """

    @pytest.fixture(scope="module")
    def live_stack(django_db_setup):  # the workers connect to the test database: it must exist first
        from fleet.aws.session import reset_caches

        settings, environ = ModuleSettings(), SavedEnviron()
        stack = stack_class(settings, **options)
        try:
            stack.start(workers=workers, beat=beat)
            yield stack
        finally:
            stack.stop()
            settings.restore()
            environ.restore()
            reset_caches()

    return live_stack


def wait_for(predicate, timeout=60, interval=0.25, message="condition", stack=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}" + (f"\n{stack.logs()}" if stack else ""))
