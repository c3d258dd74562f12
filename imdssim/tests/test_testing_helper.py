"""SimulatorProcess always cleans up after itself."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from imdssim.testing import SimulatorProcess


def test_stop_ends_the_process_and_is_idempotent():
    sim = SimulatorProcess(throttle=False, extra_args=("--latency-ms", "5"))
    with sim:
        process = sim._process
        assert sim.config()["throttle"] is False
        assert sim.config()["latency_ms"] == 5.0
        url = f"{sim.endpoint_url}/_imdssim/health"
    assert process.poll() is not None
    sim.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=1)


def test_bad_arguments_fail_start_with_the_output():
    with pytest.raises(RuntimeError, match="error rate|error-rate"):
        SimulatorProcess(extra_args=("--error-rate", "7")).start()
