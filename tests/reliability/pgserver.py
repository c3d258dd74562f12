"""A private PostgreSQL cluster for fault tests: initdb in a temp dir, a free loopback port, and
stop/start at will without touching the machine's shared server.

PostgreSQL refuses to run as root; as root the cluster belongs to the ``postgres`` user and every
server command runs through ``runuser``. ``PrivatePostgres.unavailable()`` says why it cannot run
here (the tests skip with that reason).
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import psycopg

from fleet.tests.conftest import free_port


def _bin_dir():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return dirs[-1] if dirs else None


class PrivatePostgres:
    def __init__(self, database="imdsweb"):
        self.bin = _bin_dir()
        self.port = free_port()
        self.database = database
        self.dir = None
        self.run_as = None

    @staticmethod
    def unavailable():
        if _bin_dir() is None:
            return "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                return "running as root and runuser is missing (initdb refuses root)"
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no postgres user to own the cluster"
        return None

    @property
    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args, check=True):
        command = [os.path.join(self.bin, args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def init(self):
        self.dir = tempfile.mkdtemp(prefix="imdsweb-pg-")
        if os.geteuid() == 0:
            self.run_as = "postgres"
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", f"{self.dir}/data", "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        return self

    def start(self):
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-o", options, "-l", f"{self.dir}/server.log", "-w", "start")
        return self

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", f"{self.dir}/data", "-m", mode, "-w", "stop", check=False)

    def create_database(self):
        with psycopg.connect(f"postgres://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def connect(self, attempts=60):
        """A fresh connection, retried while the server is (re)starting."""
        for _ in range(attempts):
            try:
                return psycopg.connect(self.url, autocommit=True, connect_timeout=2)
            except psycopg.OperationalError:
                time.sleep(0.5)
        raise RuntimeError(f"private PostgreSQL on port {self.port} is not reachable")

    def log(self):
        try:
            with open(f"{self.dir}/server.log") as handle:
                return handle.read()[-3000:]
        except OSError:
            return ""

    def destroy(self):
        if self.dir:
            self.stop(mode="immediate")
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
