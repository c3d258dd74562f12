"""The README's run command, from a clean clone: it installs, starts, prints a URL and a login
that work, shows the demo fleet, and stops everything on Ctrl-C."""

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readme_run_command():
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return block.splitlines()[0].split("#")[0].split()


def test_quick_start_from_a_clean_clone(tmp_path):
    command = readme_run_command()
    assert command == ["make", "demo"]
    clone = tmp_path / "imdsweb"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    web_port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "DJANGO_", "VIRTUAL_ENV"))}
    env |= {"IMDSWEB_PORT": str(web_port), "IMDSWEB_SIM_PORT": str(sim_port), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "demo.log", "w+")  # noqa: SIM115 - read back below
    process = subprocess.Popen(command, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        output = ""
        while "Press Ctrl-C to stop" not in output:
            assert process.poll() is None, f"make demo exited early:\n{output[-4000:]}"
            assert time.monotonic() < deadline, f"no URL printed in time:\n{output[-4000:]}"
            time.sleep(1)
            output = (tmp_path / "demo.log").read_text()
        url = re.search(r"imdsweb is running:\s+(\S+)", output).group(1)
        logins = re.findall(r"login:\s+(\S+) / (\S+)\s+\(role: (\w+)\)", output)
        assert [role for _, _, role in logins] == ["operator", "viewer", "admin"], output[-2000:]
        assert url == f"http://127.0.0.1:{web_port}/"

        for user, password, role in logins:  # every printed login works, with its role
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
            assert f'<span class="role">{role}</span>' in response.text
            assert "Fleet overview" in response.text
            assert "1,500" in response.text  # the demo fleet's instances
            for account in ("prod", "staging", "sandbox"):
                assert account in response.text
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("make demo did not stop within 60 s of Ctrl-C")
    output = (tmp_path / "demo.log").read_text()
    assert "[demo] stopped" in output, output[-2000:]
    for port in (web_port, sim_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after Ctrl-C"
