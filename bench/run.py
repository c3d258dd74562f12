"""Run every benchmark (``make bench`` / ``scripts/bench.sh``) and record the figures.

Creates a dedicated PostgreSQL database and migrates it, starts a private Redis (broker, shared
rate-limit buckets, runner locks: nothing reaches anyone else's Redis), runs each benchmark in its
own process, then writes the machine-readable results (``--out``) and, for a full run, the report
(``--docs``). ``--quick`` uses tiny sizes in a throwaway database and writes under ``var/`` unless
told otherwise, so a smoke test never overwrites the committed figures.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("p1_ingest", "p2_sync", "p3_views", "p4_bulk", "p4b_expand", "p5_apply", "p5b_curve", "p5c_adaptive",
              "p6_track", "p7_rss", "p8_sources", "p9_flood",
              "p10_compliant", "org_sync")
# Options passed through to one benchmark: (runner option, benchmark module, its option).
PASS_THROUGH = (("--p4b-size", "p4b_expand", "--size"), ("--p5b-points", "p5b_curve", "--points"))
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, well under a minute: a smoke test")
    parser.add_argument("--out", type=Path, help="results JSON (default: bench/results.json, quick: var/bench-quick/)")
    parser.add_argument("--docs", type=Path, help="Markdown report (default: docs/benchmarks.md; none when quick)")
    parser.add_argument("--only", help="comma-separated benchmark ids, e.g. P1,P4")
    parser.add_argument("--database", help="database name (default imdsweb_bench; quick: a throwaway one)")
    parser.add_argument("--p4b-size", type=int, help="instances in P4b's big request (default 1,000,000)")
    parser.add_argument("--p5b-points", help="P5b's account/region counts, e.g. 16 (default 4,8,16,32)")
    parser.add_argument("--merge", action="store_true",
                        help="re-run only --only's benchmarks and replace them in the existing --out file, "
                             "which then records the re-run (its commit, date and ids)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = ROOT / ("var/bench-quick/results.json" if args.quick else "bench/results.json")
    if args.docs is None and not args.quick:
        args.docs = ROOT / "docs/benchmarks.md"
    return args


def sh(*command):
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def recreate_database(name):
    import psycopg

    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
        return conn.execute("SHOW server_version").fetchone()[0]


def drop_database(name):
    import psycopg

    with psycopg.connect(dbname="postgres", autocommit=True, **PG) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def checkpoint(name):
    import psycopg

    with psycopg.connect(dbname=name, autocommit=True, **PG) as conn:
        conn.execute("CHECKPOINT")


def machine():
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "nproc": int(sh("nproc")),
        "cpu": cpu,
        "memory_gb": round(int(meminfo["MemTotal"].split()[0]) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def merged(earlier, rerun, modules):
    """``earlier``'s results with ``rerun``'s benchmarks in place of theirs; the re-run (its ids,
    commit, date, machine load, time) is recorded, and each re-run benchmark says which it was."""
    ids = sorted(rerun["benchmarks"])
    record = {key: rerun[key] for key in ("date", "commit", "total_seconds", "failed")}
    record |= {"ids": ids, "load_average_at_start": rerun["machine"]["load_average_at_start"]}
    for key, result in rerun["benchmarks"].items():
        earlier["benchmarks"][key] = result | {"rerun": {"date": rerun["date"], "commit": rerun["commit"]}}
    earlier["failed"] = sorted((set(earlier["failed"]) - set(modules)) | set(rerun["failed"]))
    earlier.setdefault("reruns", []).append(record)
    return earlier


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from fleet.tests.live import RedisServer

    database = args.database or (f"imdsweb_bench_quick_{os.getpid()}" if args.quick else "imdsweb_bench")
    wanted = [name for name in BENCHMARKS
              if not args.only or name.split("_")[0].upper() in args.only.upper().split(",")]
    started = time.monotonic()
    commit_at_start = sh("git", "rev-parse", "--short", "HEAD")
    pg_version = recreate_database(database)
    redis = RedisServer().start()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "imdsweb.settings",
        "DATABASE_URL": f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{database}",
        "CELERY_BROKER_URL": f"{redis.url}/0",
        "IMDSWEB_REDIS_URL": f"{redis.url}/1",
        "DJANGO_LOG_LEVEL": "WARNING",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_SESSION_TOKEN", None)
    results, failures = {}, []
    work = args.out.parent / f".parts-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
        for name in wanted:
            part = work / f"{name}.json"
            command = [sys.executable, "-m", f"bench.{name}", "--out", str(part), *(["--quick"] if args.quick else [])]
            for option, module, theirs in PASS_THROUGH:
                value = getattr(args, option.lstrip("-").replace("-", "_"))
                if module == name and value is not None:
                    command += [theirs, str(value)]
            print(f"== {name}", flush=True)
            checkpoint(database)  # the previous benchmark's writes are not flushed during this one
            began = time.monotonic()
            completed = subprocess.run(command, cwd=ROOT, env=env)
            if completed.returncode or not part.exists():
                failures.append(name)
                print(f"!! {name} failed (exit {completed.returncode})", flush=True)
                continue
            result = json.loads(part.read_text())
            result["seconds"] = round(time.monotonic() - began, 1)
            results[result["id"]] = result
    finally:
        redis.stop()
        for part in work.glob("*.json"):
            part.unlink()
        work.rmdir()
        if args.quick and not args.database:
            drop_database(database)

    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit_at_start,
        "quick": args.quick,
        "machine": {**machine(), "postgresql": pg_version},
        "total_seconds": round(time.monotonic() - started, 1),
        "failed": failures,
        "benchmarks": results,
    }
    commit_at_end = sh("git", "rev-parse", "--short", "HEAD")
    if commit_at_end != commit_at_start:  # each benchmark ran on the code checked out when it started
        report["commit_at_end"] = commit_at_end
        report["commit_note"] = "commits made during the run: " + ", ".join(
            sh("git", "log", "--reverse", "--format=%h", f"{commit_at_start}..{commit_at_end}").split())
    if args.merge:
        report = merged(json.loads(args.out.read_text()), report, wanted)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"results: {args.out}")
    if args.docs:
        from bench.report import write

        args.docs.parent.mkdir(parents=True, exist_ok=True)
        write(report, args.docs)
        print(f"report: {args.docs}")
    print(f"total {report['total_seconds']:.0f}s" + (f", FAILED: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
