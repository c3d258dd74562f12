"""Run the whole imdsweb demo with one command (``make demo``): no AWS account needed.

Migrates the database, starts the simulated AWS endpoint with the demo fleet, registers its
accounts, runs a first sync, then starts the web server, a Celery worker and beat, and prints
the URL and a login. Ctrl-C stops everything. Running it again reuses what is there: the
database, and the simulated fleet with every change made to it (``var/imdssim-state.jsonl``).

``--setup-only`` does the database, accounts and first sync against the simulator that
AWS_ENDPOINT_URL names, then exits (the docker-compose ``setup`` service runs it); it creates the
demo logins only when DJANGO_DEBUG is on, never in a production configuration.

Embedded defaults: SQLite under var/; Redis on 127.0.0.1:6379 if it answers, else kombu's
filesystem transport. DATABASE_URL and CELERY_BROKER_URL override both. The simulator is just
another AWS endpoint, selected with the standard AWS_ENDPOINT_URL: there is no demo mode.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
SIM_STATE = VAR / "imdssim-state.jsonl"
# The demo's known logins, one per role. Created by the demo (and by compose's setup only in a debug
# configuration): a known password must never exist in a production deployment.
# Each passes AUTH_PASSWORD_VALIDATORS, which fleet_user set applies (not like the username either).
DEMO_LOGINS = (("demo", "imdsweb-demo", "operator"), ("demo-viewer", "imdsweb-read-only", "viewer"),
               ("demo-admin", "imdsweb-all-access", "admin"))


def log(message):
    print(f"[demo] {message}", flush=True)


def port_free(port):
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def pick_port(wanted):
    if wanted and port_free(wanted):
        return wanted
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if wanted:
        log(f"port {wanted} is taken; using {port}")
    return port


def redis_reachable(host="127.0.0.1", port=6379):
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def build_env(sim_url):
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "imdsweb.settings")
    env.setdefault("DJANGO_DEBUG", "true")
    # A demo user meets the product's 404 and 500 pages, not Django's technical ones.
    env.setdefault("IMDSWEB_DEBUG_ERROR_PAGES", "false")
    if "CELERY_BROKER_URL" not in os.environ:
        if redis_reachable():
            env["CELERY_BROKER_URL"] = "redis://127.0.0.1:6379/0"
            log("broker: Redis on 127.0.0.1:6379")
        else:
            env["CELERY_BROKER_URL"] = "filesystem://"
            env.setdefault("IMDSWEB_REDIS_URL", "")
            log("broker: Redis is not reachable on 127.0.0.1:6379, using kombu's filesystem transport in var/broker")
    else:
        log(f"broker: {env['CELERY_BROKER_URL']} (from CELERY_BROKER_URL)")
    log(f"database: {env.get('DATABASE_URL') or 'SQLite in var/imdsweb.sqlite3'}")
    # The demo's AWS is the simulator; dummy credentials make sure nothing reaches real AWS.
    env.update(
        AWS_ENDPOINT_URL=sim_url,
        AWS_ACCESS_KEY_ID="demo",
        AWS_SECRET_ACCESS_KEY="demo",
        AWS_DEFAULT_REGION="us-east-1",
        PYTHONUNBUFFERED="1",
    )
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    return env


class Stack:
    def __init__(self):
        self.processes = []

    def spawn(self, name, args, env, quiet=False):
        logfile = open(VAR / f"demo-{name}.log", "w")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            args, cwd=ROOT, env=env, start_new_session=True,
            stdout=logfile if quiet else None, stderr=subprocess.STDOUT if quiet else None,
        )
        self.processes.append((name, process))
        return process

    def stop(self):
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name, process in reversed(self.processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop in time; killing it")
                os.killpg(process.pid, signal.SIGKILL)
        self.processes.clear()

    def check_alive(self):
        for name, process in self.processes:
            if process.poll() is not None:
                raise SystemExit(f"[demo] {name} exited with status {process.returncode}; see var/demo-{name}.log")


def manage(env, *args):
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def wait_http(url, timeout=90, stack=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack:
            stack.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"[demo] {url} did not answer within {timeout}s")


def debug_configured(env):
    """DJANGO_DEBUG read as the settings read it (django-environ's true values; default true)."""
    return env.get("DJANGO_DEBUG", "true").strip().lower() in ("true", "on", "ok", "y", "yes", "1")


def setup(env, sim_url, stack=None, demo_logins=True):
    """Migrate, register the simulator's demo accounts, create the demo logins, sync once."""
    log("migrating the database")
    manage(env, "migrate", "--noinput", "-v", "0")
    accounts = json.loads(wait_http(f"{sim_url}/_imdssim/demo", stack=stack))
    for account in accounts:
        args = ["fleet_account", "add", account["account_id"], "--name", account["name"],
                "--regions", ",".join(account["regions"]), "--role-arn", account["role_arn"]]
        if account.get("external_id"):
            args += ["--external-id", account["external_id"]]
        manage(env, *args)
    if demo_logins:
        for username, password, role in DEMO_LOGINS:
            manage(env, "fleet_user", "set", username, "--role", role, "--password", password)
    else:
        log("DJANGO_DEBUG is off: no demo logins (known passwords) are created; make one with "
            "`manage.py fleet_user set NAME --role admin` or configure single sign-on")
    log("first sync of the fleet")
    manage(env, "fleet_sync", "--usage")
    return accounts


def setup_only():
    sim_url = os.environ.get("AWS_ENDPOINT_URL")
    if not sim_url:
        raise SystemExit("[demo] --setup-only needs AWS_ENDPOINT_URL to name the simulator")
    env = dict(os.environ)
    setup(env, sim_url, demo_logins=debug_configured(env))


def main():
    if "--setup-only" in sys.argv[1:]:
        return setup_only()
    VAR.mkdir(exist_ok=True)
    web_port = pick_port(int(os.environ.get("IMDSWEB_PORT", "8000")))
    sim_port = pick_port(int(os.environ.get("IMDSWEB_SIM_PORT", "4566")))
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = build_env(sim_url)
    stack = Stack()
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    # Explicitly: a shell that starts us in the background hands SIGINT down as ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        log(f"starting the simulated AWS endpoint with the demo fleet on {sim_url}")
        # The state file makes a re-run the same simulated AWS: the database's cache stays true.
        stack.spawn("simulator", [sys.executable, "-m", "imdssim", "--port", str(sim_port), "--seed-demo",
                                  "--state-file", str(SIM_STATE),
                                  "--apply-delay", os.environ.get("IMDSWEB_DEMO_APPLY_DELAY", "5")], env, quiet=True)
        accounts = setup(env, sim_url, stack)
        manage(env, "collectstatic", "--noinput", "-v", "0")

        log("starting the Celery worker and beat")
        stack.spawn("worker", [sys.executable, "-m", "celery", "-A", "imdsweb", "worker", "-l", "info",
                               "-c", "2", "-O", "fair", "--without-gossip", "--without-mingle"], env, quiet=True)
        stack.spawn("beat", [sys.executable, "-m", "celery", "-A", "imdsweb", "beat", "-l", "info",
                             "-s", str(VAR / "celerybeat-schedule")], env, quiet=True)
        log("starting the web server")
        stack.spawn("web", [sys.executable, "-m", "gunicorn", "imdsweb.wsgi", "--bind", f"127.0.0.1:{web_port}",
                            "--workers", "2", "--threads", "4", "--access-logfile", "-"], env, quiet=True)
        url = f"http://127.0.0.1:{web_port}/"
        wait_http(f"{url}accounts/login/", stack=stack)
        print(
            "\n"
            f"  imdsweb is running:  {url}\n"
            + "".join(f"  login:               {user} / {password}   (role: {role})\n"
                      for user, password, role in DEMO_LOGINS) +
            f"  simulated AWS:       {sim_url}  ({len(accounts)} accounts)\n"
            "  logs:                var/demo-*.log\n"
            "  Press Ctrl-C to stop.\n",
            flush=True,
        )
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        log("stopping")
    finally:
        stack.stop()
        log("stopped")


if __name__ == "__main__":
    main()
