"""The benchmarks' quick mode as a smoke test: every benchmark runs end to end at tiny sizes and
the results file is well formed. Nothing is asserted about time; the committed figures
(docs/benchmarks.md, bench/results.json) are never touched."""

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def postgres_reachable():
    try:
        psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=2).close()
        return True
    except psycopg.Error:
        return False


@pytest.mark.timeout(900)
@pytest.mark.skipif(not postgres_reachable(), reason="the benchmarks need PostgreSQL on 127.0.0.1:5432")
def test_quick_mode_runs_every_benchmark_and_writes_json(tmp_path):
    out, docs = tmp_path / "results.json", tmp_path / "benchmarks.md"
    committed = {path: path.read_bytes() for path in (ROOT / "bench/results.json", ROOT / "docs/benchmarks.md")
                 if path.exists()}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--docs", str(docs)],
        cwd=ROOT, capture_output=True, text=True, timeout=840,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]

    report = json.loads(out.read_text())
    assert report["quick"] is True and report["failed"] == []
    assert set(report["benchmarks"]) == {"P1", "P2", "P3", "P4", "P4b", "P5", "P5b", "P5c", "P6", "P7", "P8", "P9", "P10", "ORG"}
    for key, result in report["benchmarks"].items():
        assert result["id"] == key
        assert {"title", "figures", "measured", "compare", "target", "met", "limits"} <= set(result)
        assert isinstance(result["met"], bool)
    assert {"nproc", "memory_gb", "postgresql"} <= set(report["machine"]) and report["commit"]
    assert "# Benchmarks at fleet scale" in docs.read_text()
    for path, content in committed.items():
        assert path.read_bytes() == content, f"quick mode must not rewrite {path}"
