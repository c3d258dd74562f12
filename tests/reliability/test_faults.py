"""Faults with real processes, beyond those ``fleet/tests/test_change_engine.py`` already covers
(Redis stopped around queueing, a worker SIGKILLed mid-batch, 50 % throttling, two workers):

- the simulator throttling half the calls *and* answering 5xx to a tenth at the same time;
- PostgreSQL restarted under a running gunicorn, worker and beat while a batch is applying.

Both end with the same checks: every item final, none failed, nothing applied twice, and the
rows agree with what the simulated AWS really holds.
"""

import itertools
import os
import re
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import requests

from fleet import changes, sync, usage
from fleet.choices import ItemState
from fleet.models import Account, Instance
from fleet.tests.conftest import free_port
from fleet.tests.live import ROOT, LiveStack, wait_for
from imdssim.testing import image_id

from .pgserver import PrivatePostgres

pytestmark = pytest.mark.slow

_accounts = (f"6666{n:08d}" for n in itertools.count(1))
ACTIVE = tuple(ItemState.active())


def final(batch):
    def check():
        counts = batch.counts()
        return counts["total"] and not any(counts[s] for s in ACTIVE)
    return check


# ---------------------------------------------------------------- throttling and 5xx at once


@pytest.mark.django_db(transaction=True)
def test_throttling_and_5xx_together_fail_nothing_and_apply_once(settings):
    stack = LiveStack(settings, time_scale=10, apply_delay=0.3)
    stack.start(workers=1, beat=True)
    try:
        account_id = next(_accounts)
        regions = ("us-east-1", "eu-west-1")
        for region in regions:
            ec2 = stack.ec2(account_id, region)
            image = image_id(ec2)
            ec2.run_instances(ImageId=image, MinCount=30, MaxCount=30, MetadataOptions={"HttpTokens": "optional"})
        account = Account.objects.create(account_id=account_id, name="storm", regions=list(regions),
                                         role_arn=f"arn:aws:iam::{account_id}:role/imdsweb-reader")
        for region in regions:
            sync.sync_region(account, region)
            usage.sync_usage(account, region)
        stack.sim.reset_stats()
        stack.sim.configure(throttle_rate=0.5, error_rate=0.1)

        batch = changes.request_change(None, Instance.objects.filter(account=account), changes.REQUIRE_IMDSV2)
        wait_for(final(batch), timeout=180, message="batch final under throttling and 5xx", stack=stack)
        stats = stack.sim.stats()
        stack.sim.configure(throttle_rate=0, error_rate=0)

        counts = batch.counts()
        assert counts[ItemState.APPLIED] == 60, counts
        assert counts[ItemState.FAILED] == 0 and counts[ItemState.STUCK] == 0
        modify = stats["actions"]["ModifyInstanceMetadataOptions"]
        assert modify["throttled"] > 0 and modify["errors"] > 0, modify  # both storms really happened
        calls = stats["modify_calls_by_instance"]
        assert len(calls) == 60 and set(calls.values()) == {1}, calls  # applied once each
        for region in regions:
            aws = stack.aws_options(account_id, region)
            assert {o["HttpTokens"] for o in aws.values()} == {"required"}
            rows = dict(Instance.objects.filter(account=account, region=region).values_list("instance_id",
                                                                                            "http_tokens"))
            assert rows == {instance_id: "required" for instance_id in aws}
    finally:
        stack.stop()


# ---------------------------------------------------------------- PostgreSQL restarted mid-batch


class PrivatePgStack(LiveStack):
    """LiveStack's Redis, simulator, worker and beat, on a private PostgreSQL instead of the test DB."""

    def __init__(self, settings, pg, **kwargs):
        super().__init__(settings, **kwargs)
        self.pg = pg
        self.web = None
        self.web_port = free_port()

    def env(self):
        return {**super().env(), "DATABASE_URL": self.pg.url, "DJANGO_CONN_MAX_AGE": "60"}

    def manage(self, *args):
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env(),
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def start_web(self):
        log = open(self.tmp / "gunicorn.log", "w")  # noqa: SIM115 - closed with the process
        self.web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "imdsweb.wsgi:application", "-b", f"127.0.0.1:{self.web_port}",
             "-w", "2", "--timeout", "30"],
            cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(lambda: self._web_up(), timeout=30, message="gunicorn up", stack=self)

    def _web_up(self):
        try:
            return requests.get(f"{self.base}/accounts/login/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    @property
    def base(self):
        return f"http://127.0.0.1:{self.web_port}"

    def stop(self):
        if self.web and self.web.poll() is None:
            os.killpg(self.web.pid, signal.SIGTERM)
            self.web.wait(15)
        super().stop()


def login(stack, username, password):
    session = requests.Session()
    session.get(f"{stack.base}/accounts/login/", timeout=10)
    response = session.post(f"{stack.base}/accounts/login/", timeout=10, allow_redirects=False, data={
        "username": username, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]})
    assert response.status_code == 302, response.text[:500]
    return session


def item_counts(pg, batch_pk):
    with pg.connect() as conn:
        rows = conn.execute("SELECT state, count(*) FROM fleet_changeitem WHERE batch_id = %s GROUP BY state",
                            (batch_pk,)).fetchall()
    return dict(rows)


@pytest.mark.skipif(PrivatePostgres.unavailable() is not None, reason=str(PrivatePostgres.unavailable()))
def test_postgres_restart_mid_batch_loses_nothing_and_applies_once(settings):
    pg = PrivatePostgres().init().start().create_database()
    stack = PrivatePgStack(settings, pg, time_scale=10, apply_delay=0.5)
    try:
        stack.redis.start()
        stack.sim.start()
        stack._configure_this_process()  # boto3 in this process talks to the simulator too
        stack.manage("migrate", "--noinput", "-v", "0")
        account_id, count = next(_accounts), 120
        ec2 = stack.ec2(account_id, "us-east-1")
        image = image_id(ec2)
        ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count, MetadataOptions={"HttpTokens": "optional"})
        stack.manage("fleet_account", "add", account_id, "--name", "pg-restart", "--regions", "us-east-1",
                     "--role-arn", f"arn:aws:iam::{account_id}:role/imdsweb-reader")
        assert f"seen={count}" in stack.manage("fleet_sync", "--account", account_id).replace(" ", "")
        stack.manage("fleet_user", "set", "op", "--role", "operator", "--password", "pw-reliability-1")
        stack.start_worker()
        stack.start_beat()
        stack.start_web()
        web = login(stack, "op", "pw-reliability-1")

        # Slow each AWS call down so the batch is still applying when PostgreSQL goes away.
        stack.sim.reset_stats()
        stack.sim.configure(latency_ms=60)
        page = web.get(f"{stack.base}/changes/new/", params={"filter": f"account={account_id}",
                                                              "http_tokens": "required"}, timeout=30)
        assert page.status_code == 200 and f"{count}" in page.text
        response = web.post(f"{stack.base}/changes/new/", timeout=30, allow_redirects=False, data={
            "filter": f"account={account_id}", "http_tokens": "required",
            "csrfmiddlewaretoken": web.cookies["csrftoken"]}, headers={"Referer": f"{stack.base}/changes/new/"})
        assert response.status_code == 302, response.text[:1000]
        batch_pk = int(re.search(r"/changes/(\d+)/", response.headers["Location"]).group(1))

        wait_for(lambda: item_counts(pg, batch_pk).get(ItemState.QUEUED, 0) < count - 25, timeout=60,
                 message="the batch applying", stack=stack)
        before = item_counts(pg, batch_pk)
        pg.stop("fast")
        down = web.get(f"{stack.base}/changes/{batch_pk}/", timeout=30)
        time.sleep(3)  # the worker and beat keep trying against a dead database meanwhile
        pg.start()

        # The web server and the worker recover on their own: no process is restarted.
        wait_for(lambda: web.get(f"{stack.base}/changes/{batch_pk}/", timeout=30).status_code == 200,
                 timeout=30, message="web answering again", stack=stack)
        wait_for(lambda: sum(item_counts(pg, batch_pk).get(s, 0) for s in ACTIVE) == 0, timeout=180,
                 message=f"every item final after the restart (before the stop: {before})", stack=stack)
        assert all(process.poll() is None for process in [*stack.workers, stack.beat, stack.web])

        counts = item_counts(pg, batch_pk)
        assert counts == {ItemState.APPLIED: count}, counts
        assert before.get(ItemState.QUEUED, 0) > 0, before  # the restart really happened mid-batch
        assert down.status_code >= 500  # while the database was down the page failed, nothing else
        calls = stack.sim.stats()["modify_calls_by_instance"]
        again = {instance for instance, n in calls.items() if n > 1}
        # The one call under way when the database vanished may be sent again (same values, one
        # runner per account/region); nothing else is.
        assert len(calls) == count and len(again) <= 1 and set(calls.values()) <= {1, 2}, calls

        aws = stack.aws_options(account_id, "us-east-1")
        with pg.connect() as conn:
            rows = dict(conn.execute(
                "SELECT i.instance_id, i.http_tokens FROM fleet_instance i JOIN fleet_account a "
                "ON a.id = i.account_id WHERE a.account_id = %s", (account_id,)).fetchall())
            items = conn.execute("SELECT count(DISTINCT instance_id), count(*) FROM fleet_changeitem "
                                 "WHERE batch_id = %s", (batch_pk,)).fetchone()
        assert {o["HttpTokens"] for o in aws.values()} == {"required"} and len(aws) == count
        assert rows == {instance_id: "required" for instance_id in aws}
        assert items == (count, count)  # one item per instance, none duplicated
    except (AssertionError, psycopg.Error, RuntimeError) as exc:
        raise AssertionError(f"{exc}\n--- postgres\n{pg.log()}\n{stack.logs()}") from exc
    finally:
        stack.stop()
        pg.destroy()
