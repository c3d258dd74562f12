"""Render docs/benchmarks.md from results.json: ``python -m bench.report bench/results.json docs/benchmarks.md``.

The figures come from the run; the analysis below (what changed, what a miss needs) is written by
hand after looking at them and says which run it was written for.
"""

import json
import sys
from pathlib import Path

# What was changed in fleet/ to meet a target, and what a remaining miss needs.
CHANGES = """\
## What the benchmarks changed in the product

- **`fleet/sync.py` — `upsert_instances` (P1).** Through `bulk_create(update_conflicts=True)` a
  100,000-instance ingest took 7.3 x a plain COPY of the same rows (17.1 s against 2.3 s, measured
  in the same P1 run, that path being kept for SQLite): the time went into building one Django model
  object per instance, not into PostgreSQL. On PostgreSQL a page is now
  COPY'd into a session-local temporary table (its column types taken from `fleet_instance`
  itself, so they cannot drift), counted against the cache (new / changed) with one SELECT, and
  merged with one `INSERT ... ON CONFLICT (account, region, instance_id) DO UPDATE`: three
  statements per page of 1,000 whatever its content. SQLite keeps the `bulk_create` path;
  `fleet/tests/test_sync.py` passes on both.
- **`fleet/changes/` — `request_change` (P4).** The request used to read every selected
  instance into Python, build a `ChangeItem` per instance and `bulk_create` them 5,000 at a time:
  21 s and 27 queries for 100,000 instances (9 queries at 10,000: the count grew with the
  selection). On PostgreSQL one `INSERT ... SELECT` now decides every item's state and reason in
  the database with the same rules, in the same order, and the same words as `_skip_reason`
  (which SQLite still uses): 6 queries at any size. `fleet/tests/test_change_engine.py`,
  `test_views_changes.py` and `test_usage.py` pass.
- **`fleet/models/posture.py`, `fleet/posture.py` — the posture summary (P3).** See P3 below: the
  overview reads one maintained row per account/region instead of aggregating every instance.
- **`fleet/pagination.py`, `fleet/views/instances.py`, migration 0003 — keyset pages, a bounded
  count, sort and search indexes (P3).** See P3 below: any page of any sort of the instance list is
  an index seek, the count stops at 1,000 rows (the summary answers beyond), and the rows are
  written out in the template instead of cell by cell through django-tables2.
- **`fleet/ratelimit.py` — headroom (P5).** The engine paces at 95 % of AWS's refill rate
  (`IMDSWEB_RATE_HEADROOM`), after exact pacing had 11 % of calls throttled at scale 1.
"""

# Written for the full run of 2026-11-23 (commit cef2918); re-read them after the next full run.
ANALYSIS = {
    "P2": (
        "The simulator's own speed moved a lot during this run (raw pagination took 42.9, 35.9 and 14.9 s in "
        "the three rounds as the machine's load fell), and raw pagination ran first in each round, so the "
        "ratio below 1 flatters the sync a little; within every round the sync was no slower than the raw "
        "pagination it wraps. The sync's own work (three statements per page) is small next to the "
        "endpoint's 2 ms per instance."
    ),
    "P3": (
        "**Overview and the default list now meet the target at 1 M; deep pages, filtered sorts and search "
        "still miss.** Re-measured after the design change below (commit in the header of this section's "
        "note); the first full run (commit cef2918) had the overview at 1.5 s and the first page at ~1 s.\n\n"
        "What changed in the product: a maintained posture summary (`RegionPosture`, one row per "
        "account/region with every counter the overview shows and the hop-limit histogram), refreshed by "
        "`sync_region`, the usage stage and the change engine for the account/region they wrote (one "
        "aggregate over that account/region; all 1 M rows refresh in 7.4 s, i.e. ~0.1 s per 16 k-instance "
        "region), plus a 5-minute beat task as a safety net. The overview reads those rows: 38 ms p50 at "
        "1 M (13 ms of database). The instance list is ordered by `(account_id, region, instance_id)`, the "
        "unique index's order, so its first page is an index scan (4 ms of database at 1 M), and an "
        "unfiltered or account/region-only list of 10,000+ rows takes its count from the summary instead "
        "of `COUNT(*)`. Recent batches count items only for those 5 batches.\n\n"
        "Still over target, and what each needs:\n\n"
        "- *Deep pages* (1.8 s p50 at page 9,899 of 1 M): `OFFSET 494,900`. Needs keyset pagination "
        "(\"after instance X\") for deep pages.\n"
        "- *Filtered sorts* (`http_tokens=optional&sort=-last_seen`: 0.6 s first page, 0.8 s deep at 1 M): "
        "no index serves filter + order, and the pager counts ~500 k rows. Needs a partial index "
        "`(http_tokens, last_seen) WHERE gone_at IS NULL` and a bounded count (\"10,000+\").\n"
        "- *Search* (`q=eks-node`, 0.5 s at 1 M): `UPPER(name) LIKE '%...%'` is a sequential scan; needs a "
        "`pg_trgm` GIN index on `UPPER(name)`.\n"
        "- *IMDSv1 in use + applied by hop limit* (0.34 s at 1 M): same shape as the filtered sort.\n"
        "- *Query count*: constant per page across sizes except the account + region list, which counts "
        "exactly below 10,000 rows (one more query: 11 at 100 k, 10 at 1 M) so that a small fleet never "
        "shows a summary count that a sync in progress has not refreshed yet.\n\n"
        "The page/size combinations over target are listed in the figures (`misses`)."
    ),
    "P4": (
        "Met in this run, but with little margin: 2.85 s at 100,000 instances, and 3.5-5 s in earlier runs "
        "while other test suites loaded the machine (load average 4-5). The query count no longer grows (6 "
        "at 10,000 and at 100,000; it was 9 and 27 before). Where the time goes at 100 k (the statement "
        "timed on its own, twice, on the loaded machine): 1.5-1.9 s for the INSERT ... SELECT itself (deciding "
        "the states is the small part: under 0.45 s even in a first, slower form of the SQL; the rest is "
        "writing 98,929 items with their 7 indexes), and 1.1-1.7 s at COMMIT for the 3 deferred foreign-key "
        "checks per item (the `instance` FK takes a FOR KEY SHARE lock on each of the 100,000 instance rows). To get a "
        "margin the design needs one of: dropping the two redundant ChangeItem indexes (`batch` alone is "
        "covered by `(batch, state)`, `account` alone by reordering `(state, account, region)` to "
        "`(account, region, state)`); not writing a row per instance skipped as \"already at target\" (60 % "
        "here) but counting them on the batch; or expanding large selections in a worker (the request "
        "writes the batch and its filter, a task runs this same INSERT ... SELECT, the sweeper re-dispatches "
        "batches not yet expanded)."
    ),
    "P5": (
        "**At AWS's real rate (scale 1): 93.0 %, 93.5 % and 92.1 % of the theoretical maximum in three runs "
        "(target 90 %), 0 failed, 0 throttled calls, with another engineer's tests and benchmarks using part of "
        "the 2 cores (load average 2.3, 3.7 and 2.6 at the start, machine CPU 93-99 %). The engine paces at 96 % of AWS's "
        "refill, so its ceiling is about 96 %. At time scale 20 the machine, not the engine, is the limit.**\n\n"
        "- *Where the time went before (89 %, 33.7 s for a 31.3 s floor), measured with a per-region timeline "
        "of the runner:* (1) the runners started only when the sweeper found the queued rows, 0.2-0.8 s after "
        "the batch in the runs traced (up to the sweeper's 2 s): the benchmark process published the batch's dispatch to bench.run's broker, not the "
        "stack's (Celery reads `CELERY_BROKER_URL` from the environment first; fixed in `LiveStack`). (2) The "
        "first call left ~2 s after the runner's first token: each cold pool process parsed EC2's service model "
        "for each account's own botocore session (AssumeRole). Our bucket refilled to its cap meanwhile (~1.6 s "
        "of refill lost per region), and AWS's bucket, which only sees calls, started 2 s behind ours: the cause "
        "of the occasional throttles after the burst. (3) A runner resuming after its budget waited up to 12 s "
        "behind two other runners' budgets in a busy pool process's pipe while the other worker had an idle "
        "process, and its bucket reached its cap meanwhile; with `-O fair` the worst wait seen was one budget. Steady-state resumptions are late by a few ms to a few hundred "
        "ms on this loaded machine, which costs nothing while the bucket is below its cap.\n"
        "- *What changed:* the processes of a worker share one botocore model loader, parsed when the worker "
        "starts; the runner builds its AWS client before taking a token; workers run with `-O fair`; the "
        "runner reads and claims an item in 2 statements and records the outcome in one transaction (4 "
        "statements and 2 commits per item instead of 5 and 3). What is left at scale 1: 96 % pacing "
        "(1.25 s), the request and dispatch (~0.2 s), the runners' first AssumeRole and client in their pool "
        "process (~0.4 s on the loaded machine) and the last resumption.\n"
        "- *Scale 20* (480 modifies/s possible over the 4 account/regions): 37-42/s in these runs with the "
        "machine 98-99 % busy, the other engineer's test suite taking about 0.7 of a core; the code before "
        "these changes measured 41/s in the same conditions (91/s earlier on a quieter machine). The "
        "simulator alone needs ~4 ms of CPU per ModifyInstanceMetadataOptions, so 480/s needs more than the "
        "2 cores before any worker runs; re-measure on a machine where the simulator does not share 2 cores "
        "with the workers."
    ),
}


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def _flatten(figures, prefix=""):
    for key, value in figures.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            for sub, inner in value.items():
                yield from _flatten(inner, f"{prefix}{key} / {sub} / ")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for index, inner in enumerate(value, 1):
                yield from _flatten(inner, f"{prefix}{key} #{index} / ")
        else:
            yield f"{prefix}{key}", value


def _table(rows, header):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render(report):
    m = report["machine"]
    out = [
        "# Benchmarks at fleet scale",
        "",
        "Generated by `make bench` (`scripts/bench.sh` → `python -m bench.run`) from "
        "`bench/results.json`; `make bench-quick` runs the same code at tiny sizes as a smoke test "
        "(`fleet/tests/test_bench_smoke.py`) and never writes here. Targets are from GitHub issue 7.",
        "",
        f"- **Date:** {report['date']}",
        f"- **Commit:** `{report['commit']}` (the figures were measured on this commit, except where a "
        "benchmark's note says it was re-measured later on its own)",
        f"- **Machine:** {m['nproc']} cores ({m['cpu']}), {m['memory_gb']} GB RAM, PostgreSQL "
        f"{m['postgresql']}, Python {m['python']}, {m['os']}; load average at start "
        f"{', '.join(str(x) for x in m['load_average_at_start'])}",
        f"- **Full run:** {report['total_seconds'] / 60:.1f} minutes"
        + (f"; **failed:** {', '.join(report['failed'])}" if report["failed"] else ""),
        "",
        "The machine is shared with other work and noisy: absolute times move by tens of percent "
        "between runs. Ratios are always measured within one run, against a baseline taken in the "
        "same process at the same moment.",
        "",
        "## Summary",
        "",
    ]
    rows = []
    for key in sorted(report["benchmarks"]):
        result = report["benchmarks"][key]
        rows.append((result["id"], result["title"], result["measured"], result["compare"], result["target"],
                     "**met**" if result["met"] else "**MISSED**"))
    out += [_table(rows, ("id", "what", "measured", "compared with (same run)", "target", "")), ""]
    out += [CHANGES]
    for key in sorted(report["benchmarks"]):
        result = report["benchmarks"][key]
        out += [f"## {result['id']}: {result['title']}", ""]
        out += [f"**{'Met' if result['met'] else 'Missed'}** — {result['measured']}. Target: {result['target']}.", ""]
        if result.get("note"):
            out += [f"*Note:* {result['note']}", ""]
        if result["id"] in ANALYSIS:
            out += [ANALYSIS[result["id"]], ""]
        out += [f"*What limits this figure:* {result['limits']}", ""]
        figures = list(_flatten(result["figures"]))
        out += ["<details><summary>All figures</summary>", "",
                _table([(k, v) for k, v in figures], ("figure", "value")), "", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"


BEGIN, END = "<!-- bench.run: generated from bench/results.json, begin -->", "<!-- bench.run: end -->"


def write(report, target):
    """Replace the generated block of ``target``, keeping what others wrote around it (the Load
    section of bench/load_wrk.py, for one). A file without the block gets it at the top."""
    block = f"{BEGIN}\n{render(report)}{END}\n"
    existing = target.read_text() if target.exists() else ""
    if BEGIN in existing and END in existing:
        before, rest = existing.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + block + ("\n" + after if after else "")
    else:
        text = block + ("\n" + existing.lstrip("\n") if existing.strip() else "")
    target.write_text(text)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    source, target = (Path(a) for a in argv) if argv else (Path("bench/results.json"), Path("docs/benchmarks.md"))
    write(json.loads(source.read_text()), target)
    print(f"report: {target}")


if __name__ == "__main__":
    main()
