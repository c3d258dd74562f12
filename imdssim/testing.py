"""Run the simulator as a subprocess from tests, benchmarks and scripts.

``SimulatorProcess`` starts ``python -m imdssim`` on a free loopback port, waits until
``/_imdssim/health`` answers, and wraps the admin endpoint. It is a context manager and always
stops its process (terminate, then kill), so a failing test never leaves a server behind::

    with SimulatorProcess(seed_demo=True, apply_delay=0.5) as sim:
        os.environ["AWS_ENDPOINT_URL"] = sim.endpoint_url
        ...
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class SimulatorProcess:
    """A ``python -m imdssim`` subprocess on ``127.0.0.1`` and a client for its admin endpoint."""

    def __init__(
        self,
        seed_demo: bool = False,
        apply_delay: float = 3.0,
        throttle: bool = True,
        time_scale: float = 1.0,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 60.0,
        host: str = "127.0.0.1",
    ):
        self.host = host
        self.port: int | None = None
        self.seed_demo = seed_demo
        self.startup_timeout = startup_timeout
        self._args = ["--apply-delay", str(apply_delay), "--time-scale", str(time_scale), *extra_args]
        if seed_demo:
            self._args.append("--seed-demo")
        if not throttle:
            self._args.append("--no-throttle")
        self._process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile(mode="w+", prefix="imdssim-", suffix=".log")

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the simulator is not running; call start() first")
        return f"http://{self.host}:{self.port}"

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> SimulatorProcess:
        if self._process is not None:
            raise RuntimeError("the simulator is already running")
        # A port picked here could be taken before the child binds it; retry on a new one.
        for _attempt in range(3):
            self.port = _free_port(self.host)
            command = [
                sys.executable,
                "-m",
                "imdssim",
                "--host",
                self.host,
                "--port",
                str(self.port),
                *self._args,
            ]
            self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
            try:
                self._wait_until_healthy()
                return self
            except _ExitedEarly:
                self._process = None
                if "Address already in use" not in self.output():
                    break
        raise RuntimeError(f"the simulator did not start:\n{self.output()}")

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise _ExitedEarly
            try:
                self._request("GET", "/health", timeout=1)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the simulator was not healthy within {self.startup_timeout} s:\n{self.output()}")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the process, kill it if it does not exit in time. Safe to call twice."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def output(self) -> str:
        """Everything the simulator printed so far (useful in assertion messages)."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __del__(self) -> None:
        # Last resort only: tests should use the context manager or call stop().
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.kill()

    # --- admin endpoint ---------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None, timeout: float = 10) -> object:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.endpoint_url}/_imdssim{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def configure(self, **knobs) -> dict:
        """Change knobs at runtime: apply_delay, throttle, time_scale, throttle_rate, error_rate, latency_ms."""
        return self._request("POST", "/config", knobs)

    def config(self) -> dict:
        return self._request("GET", "/config")

    def stats(self) -> dict:
        """``{"actions": {action: {calls, throttled, errors}}, "modify_calls_by_instance": {id: n}}``."""
        return self._request("GET", "/stats")

    def reset_stats(self) -> dict:
        """Zero the counters and refill every throttle bucket."""
        return self._request("POST", "/stats/reset", {})

    def set_policy(
        self, account_id: str, region: str, managed: bool = True, message: str | None = None
    ) -> dict:
        """Mark (or unmark) an account/region's IMDS defaults as managed by a declarative policy."""
        return self._request(
            "POST",
            "/policy",
            {"account_id": account_id, "region": region, "managed": managed, "message": message},
        )

    def omit_options(self, account_id: str, region: str, instance_ids: Sequence[str], members: Sequence[str]) -> dict:
        """Make DescribeInstances leave these MetadataOptions members (e.g. ``HttpProtocolIpv6``) out
        for these instances, as real responses sometimes do."""
        return self._request(
            "POST",
            "/omit",
            {"account_id": account_id, "region": region, "instance_ids": list(instance_ids), "members": list(members)},
        )

    def organization(self) -> dict:
        """The seeded organization: management_account_id, management_role_arn, ou_ids, accounts."""
        return self._request("GET", "/organization")

    def set_region(self, account_id: str, region: str, opted_in: bool = True) -> dict:
        """Opt an account in to (or out of) an opt-in region."""
        return self._request("POST", "/regions", {"account_id": account_id, "region": region, "opted_in": opted_in})

    def set_role(self, account_id: str, access: str) -> dict:
        """Make the account's role ``full``, ``read-only`` or ``missing``."""
        return self._request("POST", "/role", {"account_id": account_id, "access": access})

    def set_workload(self, account_id: str, region: str, instance_ids: Sequence[str], calls_per_minute: float = 60) -> dict:
        """Give instances software that still calls IMDSv1 (``calls_per_minute`` per simulated minute;
        0 removes it): CloudWatch counts the calls as MetadataNoToken, or MetadataNoTokenRejected
        once the instance requires tokens."""
        return self._request("POST", "/workload", {"account_id": account_id, "region": region,
                                                   "instance_ids": list(instance_ids),
                                                   "calls_per_minute": calls_per_minute})

    def demo_accounts(self) -> list[dict]:
        """The seeded accounts: account_id, name, role_arn, external_id, regions, instances_per_region."""
        return self._request("GET", "/demo")


class _ExitedEarly(Exception):
    """The child exited before it became healthy (typically: the port was taken meanwhile)."""


# The first of moto's images (the one ``describe_images()["Images"][0]`` gives in every region).
IMAGE_NAME = "Windows_Server-2016-English-Nano-Base-2017.10.13"


def image_id(ec2) -> str:
    """An image to launch instances from. Asked for by name: a bare DescribeImages makes moto
    render its 1,300 images, which takes seconds per call (more on a busy machine)."""
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": [IMAGE_NAME]}])["Images"]
    return (images or ec2.describe_images()["Images"])[0]["ImageId"]


def launch(ec2, count: int, **metadata_options) -> list[str]:
    """RunInstances ``count`` instances through an EC2 client, in chunks of 500 (moto creates about
    250 a second), optionally with MetadataOptions. Returns their ids."""
    image = image_id(ec2)
    ids: list[str] = []
    while count > 0:
        n = min(count, 500)
        kwargs = {"ImageId": image, "MinCount": n, "MaxCount": n, "InstanceType": "t3.micro"}
        if metadata_options:
            kwargs["MetadataOptions"] = metadata_options
        ids += [i["InstanceId"] for i in ec2.run_instances(**kwargs)["Instances"]]
        count -= n
    return ids
