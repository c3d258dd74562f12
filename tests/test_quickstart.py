"""The README's run command, from a clean clone: it installs what the demo needs (exactly as
requirements/demo.txt pins it, and no test tools), saying so as it goes, starts, prints a URL and
a login that work, shows the demo fleet, and stops everything on Ctrl-C."""

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import requests

from .test_install import pins

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readme_run_command():
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return block.splitlines()[0].split("#")[0].split()


def start_demo(command, clone, env, log_path):
    """Run ``make demo`` until it prints its URL; returns (process, output)."""
    log = open(log_path, "w+")  # noqa: SIM115 - read back below
    process = subprocess.Popen(command, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 600
    output = ""
    while "Press Ctrl-C to stop" not in output:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_demo(process)
            pytest.fail(f"make demo exited early or printed no URL in time:\n{output[-4000:]}")
        time.sleep(1)
        output = log_path.read_text()
    return process, output


def signal_group(process, signum):
    """Signal the demo's process group; False when nothing of it is left (it exited already)."""
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        return False
    return True


def stop_demo(process):
    # make demo may have exited already (start_demo's failure): nothing to stop, and its
    # failure message is what counts, not a ProcessLookupError.
    signal_group(process, signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        pytest.fail("make demo did not stop within 60 s of Ctrl-C")


def login(output, web_port, user=None, password=None):
    url = re.search(r"imdsweb is running:\s+(\S+)", output).group(1)
    if user is None:
        user, password = re.search(r"login:\s+(\S+) / (\S+)", output).groups()
    assert url == f"http://127.0.0.1:{web_port}/"
    session = requests.Session()
    login = session.get(f"{url}accounts/login/", timeout=10)
    assert login.status_code == 200
    response = session.post(
        f"{url}accounts/login/",
        data={"username": user, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{url}accounts/login/"},
        timeout=10,
    )
    assert response.status_code == 200 and response.url == url, response.url
    return session, url, response


def exported(session, url):
    """The instance list's CSV: instance id -> row."""
    response = session.get(f"{url}instances/export.csv", timeout=60)
    assert response.status_code == 200
    return {row["instance_id"]: row for row in csv.DictReader(io.StringIO(response.text))}


@pytest.mark.timeout(1200)
def test_quick_start_from_a_clean_clone(tmp_path):
    command = readme_run_command()
    assert command == ["make", "demo"]
    clone = tmp_path / "imdsweb"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    web_port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DJANGO_", "VIRTUAL_ENV"))}
    env |= {"IMDSWEB_PORT": str(web_port), "IMDSWEB_SIM_PORT": str(sim_port), "PYTHONUNBUFFERED": "1"}
    process, output = start_demo(command, clone, env, tmp_path / "demo.log")
    try:
        logins = re.findall(r"login:\s+(\S+) / (\S+)\s+\(role: (\w+)\)", output)
        assert [role for _, _, role in logins] == ["operator", "viewer", "admin"], output[-2000:]
        for user, password, role in logins:  # every printed login works, with its role
            _session, _url, response = login(output, web_port, user, password)
            assert f'<span class="role">{role}</span>' in response.text
        session, url, response = login(output, web_port)
        assert_installed_as_locked(clone, output)
        assert "Fleet overview" in response.text
        # The demo fleet's 1,500 instances: the counted ones, and the terminated ones apart.
        counted, not_counted = (int(re.search(rf'posture={which}" data-count="(\d+)"', response.text).group(1))
                                for which in ("counted", "not_counted"))
        assert counted + not_counted == 1500 and counted > 1400, (counted, not_counted)
        for account in ("prod", "staging", "sandbox"):
            assert account in response.text
        first = exported(session, url)
        # A change made in the simulated AWS while the demo runs (as a batch would make it).
        staging = boto3.Session(aws_access_key_id="demo", aws_secret_access_key="demo", region_name="us-east-1")
        creds = staging.client("sts", endpoint_url=f"http://127.0.0.1:{sim_port}").assume_role(
            RoleArn="arn:aws:iam::222222222222:role/imdsweb-reader", RoleSessionName="test")["Credentials"]
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{sim_port}",
                           aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                           aws_session_token=creds["SessionToken"])
        changed = next(i for i, row in sorted(first.items()) if row["account_id"] == "222222222222"
                       and row["region"] == "us-east-1" and row["instance_state"] == "running"
                       and row["http_tokens"] == "optional" and row["metadata_state"] == "applied")
        ec2.modify_instance_metadata_options(InstanceId=changed, HttpTokens="required")
    finally:
        stop_demo(process)
    output = (tmp_path / "demo.log").read_text()
    assert "[demo] stopped" in output, output[-2000:]
    for port in (web_port, sim_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after Ctrl-C"

    # Running it again reuses the database and the same simulated fleet: nothing becomes gone.
    process, output = start_demo(command, clone, env, tmp_path / "demo-again.log")
    try:
        session, url, _ = login(output, web_port)
        again = exported(session, url)
    finally:
        stop_demo(process)
    assert set(again) == set(first) and len(first) == 1500
    assert all(row["gone_at"] == "" for row in again.values())
    assert again[changed]["http_tokens"] == "required"
    assert "[demo] stopped" in (tmp_path / "demo-again.log").read_text()


def assert_installed_as_locked(clone, output):
    """The clone's virtualenv holds the demo lock's versions, the pinned installer and the project:
    nothing else (no test tools), and the install said what it was doing."""
    listing = subprocess.run(
        [clone / ".venv" / "bin" / "python", "-c",
         "import importlib.metadata as m, json; print(json.dumps({d.name: d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True,
    )
    installed = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in json.loads(listing.stdout).items()}
    locked = {name: version for name, (version, _) in pins("demo.txt").items()}
    tools = {name: version for name, (version, _) in pins("tools.txt").items()}
    extra = set(installed) - set(locked) - set(tools) - {"imdsweb", "pip"}
    assert not extra, f"installed but not in requirements/demo.txt: {sorted(extra)}"
    assert "pytest" not in installed and "playwright" not in installed
    assert {n: v for n, v in installed.items() if n in locked} == {n: locked[n] for n in installed if n in locked}
    assert installed["uv"] == tools["uv"] and installed["imdsweb"]
    assert "install: the project and the simulator, as requirements/demo.txt pins them" in output
    assert re.search(r"Installed \d+ packages", output), output[-4000:]  # uv's progress, not a silent wait
