"""P9: a signed-in viewer's overview during a wrong-password flood (GitHub issue 17).

gunicorn with production settings (DJANGO_DEBUG off, 3 workers x 8 threads as compose's ``web``) over
the benchmark database (20 accounts x 3 regions, 10,000 instances; the overview reads the posture
summary, so its cost does not grow with the fleet). A viewer requests the overview one request at a
time, alone (the baseline) and while another process keeps 8 connections busy posting wrong
passwords for one operator to the login page, as fast as the answers come back, in alternating
windows. The first flood window starts with no lockout: the failures before it are in the figure.

The comparison run (full mode only) repeats the flood with the lockout out of reach
(``IMDSWEB_LOGIN_FAILURE_LIMIT`` at a million): every attempt then costs a password hash, as before
django-axes.
"""

import http.client
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from bench.common import (
    analyze,
    copy_rows,
    ensure_accounts,
    parse_args,
    percentile,
    setup_django,
    synthetic_rows,
    truncate_fleet,
    write_result,
)

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 8
WORKERS, THREADS = 3, 8  # docker-compose.yml's web service
OPERATOR, VIEWER = "flood-operator", "flood-viewer"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def production_env(**extra):
    return {
        **os.environ,
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "flood-benchmark-" + "0123456789abcdef" * 4,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "false",  # plain HTTP on loopback
        "DJANGO_LOG_LEVEL": "ERROR",  # every refused attempt logs a warning; the console is not the point
        **extra,
    }


def load(instances):
    from django.contrib.auth.models import Group, User
    from django.test import Client
    from django.utils import timezone

    from fleet import posture

    truncate_fleet()
    pairs = ensure_accounts(20, 3)
    copy_rows(synthetic_rows(pairs, 0, instances, timezone.now()))
    analyze()
    posture.refresh_all()
    operator, _ = User.objects.get_or_create(username=OPERATOR)
    operator.set_password("the-real-operator-password-4711")  # the production hasher (PBKDF2)
    operator.save()
    operator.groups.set([Group.objects.get(name="operator")])
    viewer, _ = User.objects.get_or_create(username=VIEWER)
    viewer.groups.set([Group.objects.get(name="viewer")])
    client = Client()
    client.force_login(viewer)
    return client.cookies["sessionid"].value


def reset_lockouts():
    from axes.models import AccessAttempt, AccessFailureLog

    AccessAttempt.objects.all().delete()
    AccessFailureLog.objects.all().delete()


def start_gunicorn(env):
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="imdsweb-flood-gunicorn-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "imdsweb.wsgi:application", "-b", f"127.0.0.1:{port}",
         "-w", str(WORKERS), "--threads", str(THREADS), "--timeout", "120", "--backlog", "256"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            status, _, _ = request(port, "GET", "/accounts/login/")
            if status == 200:
                return process, port
        except OSError:
            pass
        time.sleep(0.2)
    stop(process)
    raise SystemExit(f"gunicorn did not start; see {log.name}")


def stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def request(port, method, path, headers=None, body=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def csrf_pair(port):
    """A csrftoken cookie and a form token from the login page, as a browser would have them."""
    status, headers, body = request(port, "GET", "/accounts/login/")
    assert status == 200, status
    cookie = next(value.split(";")[0].split("=", 1)[1] for name, value in headers
                  if name.lower() == "set-cookie" and value.startswith("csrftoken="))
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1).decode()
    return cookie, token


def flood(port, seconds, results):
    """CONCURRENCY threads posting wrong passwords for OPERATOR until ``seconds`` have passed."""
    import threading
    from collections import Counter

    cookie, token = csrf_pair(port)
    statuses = Counter()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def one_connection(n):
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            body = urllib.parse.urlencode({"username": OPERATOR, "password": f"wrong-{n}-{attempt}",
                                           "csrfmiddlewaretoken": token})
            try:
                status, _, _ = request(port, "POST", "/accounts/login/", body=body, headers={
                    "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={cookie}"})
            except OSError:
                status = "error"
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=one_connection, args=(n,)) for n in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.update({str(key): value for key, value in statuses.items()})


def sample(port, cookie, seconds):
    """The viewer's overview, one request at a time, for ``seconds``: latencies in ms."""
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status, _, body = request(port, "GET", "/", headers={"Cookie": f"sessionid={cookie}"})
        latencies.append((time.perf_counter() - started) * 1000)
        assert status == 200 and b"Fleet overview" in body, status
    return latencies


def summary(latencies):
    return {"requests": len(latencies), "p50_ms": round(percentile(latencies, 50), 1),
            "p90_ms": round(percentile(latencies, 90), 1), "max_ms": round(max(latencies), 1)}


def measure(env, cookie, rounds, seconds):
    """``rounds`` times: the viewer alone for ``seconds``, then during the flood for ``seconds``.
    Alternating keeps the comparison fair on a machine whose other load comes and goes; the flood
    keeps its lockout from one round to the next, as a continuing attack would."""
    from collections import Counter

    reset_lockouts()
    process, port = start_gunicorn(env)
    alone, flooded, statuses = [], [], Counter()
    try:
        sample(port, cookie, 1.0)  # warm every worker's connection and templates
        for _ in range(rounds):
            alone += sample(port, cookie, seconds)
            manager = multiprocessing.Manager()
            answers = manager.dict()
            flooder = multiprocessing.Process(target=flood, args=(port, seconds + 0.5, answers))
            flooder.start()
            flooded += sample(port, cookie, seconds)
            flooder.join(180)
            statuses.update(dict(answers))
            manager.shutdown()
        return summary(alone), summary(flooded), dict(statuses)
    finally:
        stop(process)


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    # The session made here must be valid in gunicorn: the same (production) settings and secret key.
    os.environ.update({k: v for k, v in production_env().items() if k.startswith("DJANGO_")})
    setup_django()
    from django.conf import settings

    instances, rounds, seconds = (1_000, 1, 4.0) if args.quick else (10_000, 4, 8.0)
    cookie = load(instances)
    env = production_env(DATABASE_URL=os.environ["DATABASE_URL"])
    # Production serves collectstatic's manifest.
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, env=env,
                   check=True, timeout=300)
    baseline, flooded, statuses = measure(env, cookie, rounds, seconds)
    ratio = flooded["p50_ms"] / baseline["p50_ms"]
    figures = {
        "instances": instances, "gunicorn_workers": WORKERS, "gunicorn_threads": THREADS,
        "flood_connections": CONCURRENCY, "lockout_delay_s": settings.IMDSWEB_LOCKOUT_DELAY_SECONDS,
        "rounds": rounds, "seconds_alone_and_flooded_per_round": seconds,
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "baseline": baseline, "during_flood": flooded, "ratio_p50": round(ratio, 2),
        "flood_answers": statuses,
        "flood_requests_per_second": round(sum(statuses.values()) / (rounds * seconds), 1),
    }
    compare = f"alone p50 {baseline['p50_ms']:.0f} ms (alternating with the flood)"
    if not args.quick:
        alone, unthrottled, unthrottled_statuses = measure(
            {**env, "IMDSWEB_LOGIN_FAILURE_LIMIT": "1000000"}, cookie, 1, seconds)
        figures["without_lockout"] = {"baseline": alone, "during_flood": unthrottled,
                                      "ratio_p50": round(unthrottled["p50_ms"] / alone["p50_ms"], 1),
                                      "flood_answers": unthrottled_statuses}
        compare += (f"; the same flood with the lockout out of reach: p50 {unthrottled['p50_ms']:.0f} ms "
                    f"({figures['without_lockout']['ratio_p50']}x its alone p50)")
    refused = statuses.get("429", 0)
    write_result(args.out, {
        "id": "P9",
        "title": f"viewer's overview during an {CONCURRENCY}-connection wrong-password flood (gunicorn, production settings)",
        "figures": figures,
        "measured": f"p50 {flooded['p50_ms']:.0f} ms during the flood ({ratio:.2f}x); "
                    f"{refused:,} of {sum(statuses.values()):,} attempts answered 429",
        "compare": compare,
        "target": "p50 during the flood ≤ 2 × p50 without it",
        "met": ratio <= 2.0,
        "limits": "The flood, the viewer, gunicorn and PostgreSQL share the machine's 2 cores; the flood comes "
                  "from one address for one username (django-axes locks both out after "
                  f"{settings.AXES_FAILURE_LIMIT} failures). A flood spread over many addresses and usernames "
                  "pays a password hash for the first failures of each, and would need a rate limit in front "
                  "of the application (a proxy) to be bounded the same way.",
    })


if __name__ == "__main__":
    main()
