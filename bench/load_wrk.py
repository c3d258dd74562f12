"""Load: ``wrk`` against gunicorn on the overview and the instance list, over a 100 k-instance
PostgreSQL database, logged in as a viewer. Passes only with zero errors (non-2xx answers,
socket errors and timeouts all count).

    python -m bench.load_wrk            # 32 connections, 60 s per page, 100,000 instances
    python -m bench.load_wrk --quick    # 5 s per page: a smoke test, not a measurement

The database is ``imdsweb_load`` on the local PostgreSQL (``--database-url`` to change it); its
instance rows are bulk-loaded with ``COPY`` and reused by later runs. Everything listens on
loopback, and gunicorn is stopped at the end. ``wrk`` is Debian's package (``scripts/tools.sh``).
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"overview": "/", "instance list": "/instances/"}
REGIONS = ("us-east-1", "eu-west-1", "ap-southeast-2", "us-west-2", "eu-central-1")
NAMES = ("web", "api", "worker", "eks-node", "batch", "db-proxy", "bastion", "ecs-host", "cache", "etl")

# Counts every non-200 answer over all threads (wrk's own summary folds 3xx into success, and a
# redirect to the login page would be a silent failure here).
LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) non200 = 0 end
function response(status, headers, body) if status ~= 200 then non200 = non200 + 1 end end
function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("non200") end
  io.write(string.format("NON200 %d\\n", total))
end
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s per page instead of 60 s")
    parser.add_argument("--duration", type=int, help="seconds per page (default 60, --quick 5)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=max(2, 2 * (os.cpu_count() or 1)), help="gunicorn workers")
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--database-url", default=os.environ.get(
        "LOAD_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/imdsweb_load"))
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    return parser.parse_args(argv)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_database(url):
    base, _, name = url.rpartition("/")
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def env_for(args):
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "imdsweb.settings",
        "DATABASE_URL": args.database_url,
        # Production settings, as deployed: no debug, manifest static files, persistent connections.
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "load-benchmark-" + "0123456789abcdef" * 4,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "false",  # wrk speaks plain HTTP to loopback
        "DJANGO_LOG_LEVEL": "WARNING",
    }


def manage(env, *args):
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, timeout=600)


def instance_rows(total, accounts, now):
    """Deterministic rows with a realistic posture mix (60 % tokens required, 70 % hop limit 1...)."""
    rng = random.Random(1)
    pairs = [(pk, region) for pk in accounts for region in REGIONS]
    for n in range(total):
        account_pk, region = pairs[n % len(pairs)]
        name = f"{rng.choice(NAMES)}-{n % 9973:04d}"
        tokens = "required" if rng.random() < 0.6 else "optional"
        endpoint = "disabled" if rng.random() < 0.03 else "enabled"
        hop = 1 if rng.random() < 0.7 else rng.choice((2, 2, 3))
        roll = rng.random()
        state = "running" if roll < 0.85 else "stopped" if roll < 0.97 else "terminated"
        v1 = None if rng.random() < 0.3 else (0 if rng.random() < 0.7 else rng.randrange(1, 5000))
        yield (
            account_pk, region, f"i-{n:017x}", name, json.dumps({"Name": name, "team": "platform"}), state,
            "m5.large", f"ami-{n % 977:08x}", now - timedelta(days=n % 400), tokens, hop, endpoint, "disabled",
            "disabled", "pending" if rng.random() < 0.02 else "applied", v1, 0 if v1 is not None else None,
            now, now,
        )


def load_fleet(args):
    """Accounts, defaults and sync runs through the ORM; the instances with COPY (reused if present)."""
    from django.db import connection, transaction
    from django.utils import timezone

    from bench.common import seed_sync_runs
    from fleet import posture
    from fleet.models import Account, ChangeBatch, ChangeItem, Instance, MetadataDefaults

    if Instance.objects.count() == args.instances and Account.objects.count() == 20:
        print(f"load: reusing {args.instances:,} instances in {connection.settings_dict['NAME']}", flush=True)
        posture.refresh_all()  # the summary a sync keeps, which the overview and the list's count read
        return
    started = time.perf_counter()
    now = timezone.now()
    with transaction.atomic():
        ChangeItem.objects.all().delete()
        ChangeBatch.objects.all().delete()
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE fleet_instance, fleet_syncrun, fleet_metadatadefaults, fleet_account CASCADE")
        accounts = Account.objects.bulk_create(
            Account(account_id=f"{810000000000 + i:012d}", name=f"account-{i:02d}", regions=list(REGIONS))
            for i in range(20)
        )
        MetadataDefaults.objects.bulk_create(
            MetadataDefaults(account=a, region=r, status="known", http_tokens="required" if i % 3 else None,
                             synced_at=now)
            for i, a in enumerate(accounts) for r in REGIONS
        )
        seed_sync_runs([(a, r) for a in accounts for r in REGIONS], now)
        columns = ("account_id, region, instance_id, name, tags, instance_state, instance_type, image_id, "
                   "launch_time, http_tokens, hop_limit, http_endpoint, http_protocol_ipv6, "
                   "instance_metadata_tags, metadata_state, v1_calls, v1_rejected, first_seen, last_seen")
        with connection.cursor() as cursor, cursor.copy(f"COPY fleet_instance ({columns}) FROM STDIN") as copy:
            for row in instance_rows(args.instances, [a.pk for a in accounts], now):
                copy.write_row(row)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    posture.refresh_all()
    print(f"load: {args.instances:,} instances COPY'd in {time.perf_counter() - started:.1f}s", flush=True)


def session_cookie():
    from django.contrib.auth.models import Group, User
    from django.test import Client

    user, _ = User.objects.get_or_create(username="load-viewer")
    user.groups.set([Group.objects.get(name="viewer")])
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def start_gunicorn(env, workers):
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="imdsweb-gunicorn-", suffix=".log", delete=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "imdsweb.wsgi:application", "-b", f"127.0.0.1:{port}",
         "-w", str(workers), "--timeout", "60", "--backlog", "256"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            urllib.request.urlopen(f"{base}/accounts/login/", timeout=10)
            return process, base, log.name
        except OSError:  # refused, reset or timed out while the workers boot
            time.sleep(0.2)
    stop_gunicorn(process)
    raise SystemExit(f"gunicorn did not start; see {log.name}")


def stop_gunicorn(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def check_page(base, path, cookie):
    """One request by hand first: a 302 to the login page would look like success to wrk."""
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(base + path, headers={"Cookie": f"sessionid={cookie}"})
    try:
        with opener.open(request, timeout=60) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{path}: HTTP {exc.code} before the load even started") from exc
    if status != 200:
        raise SystemExit(f"{path}: HTTP {status} before the load even started")
    return body


def parse_wrk(output):
    def number(pattern, cast=float, default=0):
        match = re.search(pattern, output)
        return cast(match.group(1)) if match else default

    def ms(text):
        value, unit = re.match(r"([\d.]+)(us|ms|s|m)", text).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]

    latency = {p: ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", output, re.M)}
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests": number(r"(\d+) requests in", int),
        "requests_per_second": number(r"Requests/sec:\s+([\d.]+)"),
        "latency_ms": {"avg": ms(re.search(r"Latency\s+(\S+)", output).group(1)),
                       **{f"p{p}": v for p, v in latency.items()}},
        "non_2xx_3xx": number(r"Non-2xx or 3xx responses: (\d+)", int),
        "non_200": number(r"NON200 (\d+)", int),
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, socket_errors.groups()), strict=True)) if socket_errors else {},
    }


def run_wrk(args, url, cookie, script):
    command = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s",
               "--timeout", "30s", "--latency", "-s", script, "-H", f"Cookie: sessionid={cookie}", url]
    print("$ " + " ".join(command).replace(cookie, "…"), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 120)
    print(result.stdout, flush=True)
    if result.returncode != 0:
        raise SystemExit(f"wrk failed: {result.stderr}")
    return parse_wrk(result.stdout)


def main(argv=None):
    args = parse_args(argv)
    args.duration = args.duration or (5 if args.quick else 60)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run scripts/tools.sh (Debian's wrk package)")
    env = env_for(args)
    ensure_database(args.database_url)
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "collectstatic", "--noinput", "-v", "0")
    os.environ.update({k: env[k] for k in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "DJANGO_DEBUG",
                                           "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS")})
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    load_fleet(args)
    cookie = session_cookie()

    process, base, log = start_gunicorn(env, args.workers)
    results = {"instances": args.instances, "connections": args.connections, "threads": args.threads,
               "duration_s": args.duration, "gunicorn_workers": args.workers, "cpus": os.cpu_count(),
               "date": datetime.now(UTC).isoformat(timespec="seconds"), "pages": {}}
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
            script.write(LUA)
            script.flush()
            for label, path in PAGES.items():
                body = check_page(base, path, cookie)
                assert f"{args.instances:,}" in body or label != "instance list", "the list does not show the fleet"
                serial = []
                for _ in range(5):  # one at a time: the page's own cost, without queueing
                    started = time.perf_counter()
                    check_page(base, path, cookie)
                    serial.append((time.perf_counter() - started) * 1000)
                results["pages"][label] = {"path": path, "serial_median_ms": round(sorted(serial)[2]),
                                           **run_wrk(args, base + path, cookie, script.name)}
    finally:
        stop_gunicorn(process)

    errors = 0
    print(f"\n{args.instances:,} instances, {args.connections} connections, {args.duration} s per page, "
          f"gunicorn {args.workers} workers on {os.cpu_count()} CPUs")
    print(f"{'page':<15}{'serial ms':>10}{'requests':>10}{'req/s':>9}{'avg ms':>9}{'p50':>8}{'p90':>8}{'p99':>8}"
          f"{'errors':>8}")
    for label, page in results["pages"].items():
        page_errors = page["non_200"] + page["non_2xx_3xx"] + sum(page["socket_errors"].values())
        page["errors"] = page_errors
        errors += page_errors
        lat = page["latency_ms"]
        print(f"{label:<15}{page['serial_median_ms']:>10}{page['requests']:>10,}{page['requests_per_second']:>9.1f}{lat['avg']:>9.0f}"
              f"{lat.get('p50', 0):>8.0f}{lat.get('p90', 0):>8.0f}{lat.get('p99', 0):>8.0f}{page_errors:>8}")
    results["errors"] = errors
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    if errors:
        raise SystemExit(f"{errors} error(s) under load; gunicorn log: {log}")
    print("0 errors")


if __name__ == "__main__":
    main()
