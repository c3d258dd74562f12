"""Render docs/benchmarks.md from results.json: ``python -m bench.report bench/results.json docs/benchmarks.md``.

The figures come from the run, and so does every sentence that quotes one or states a verdict: a
benchmark's analysis (``ANALYSIS``) is a function of its result, or a tuple of such a function and a
hand-written text. The hand-written texts explain design only (what was changed in fleet/ to meet a
target, what limits a figure on this machine and what more workers would change) in words that stay
true whatever the next run measures, so a new run can never leave stale numbers on the page.
"""

import json
import sys
from pathlib import Path

# Which issue set each benchmark's target; the page's intro lists those of the ids in the run.
TARGET_ISSUES = {
    "P1": 7, "P2": 7, "P3": 7, "P4": 7, "P5": 7, "P6": 7, "P7": 7,
    "P8": 15, "ORG": 16, "P9": 17,
    "P4b": 21, "P5b": 21, "P5c": 21, "P7b": 21, "P10": 21,
}
# Targets an issue added to an existing benchmark rather than as an id of their own.
TARGET_EXTENSIONS = {"P3": (16, "P3 at 3,400 account/regions")}
# Targets measured by other benchmarks when they have no id of their own in a run.
MEASURED_WITHIN = {"P7b": ("P4b", "P7")}


def _changes(benchmarks):
    """What was changed in fleet/ to meet a target; P1's comparison is quoted from this run's figures."""
    p1 = benchmarks.get("P1", {}).get("figures", {})
    if "bulk_create_path_empty_table_s" in p1:
        before = (f"In this run that path took {p1['bulk_create_path_empty_table_s']:g} s for "
                  f"{p1['instances']:,} instances, {p1['ratio_bulk_create_path_to_copy']:g}x a plain COPY of the "
                  f"same rows ({p1['copy_s']:g} s)")
    else:
        before = "P1 measures that path against a plain COPY of the same rows in every run"
    return f"""\
## What the benchmarks changed in the product

- **`fleet/sync.py` — `upsert_instances` (P1).** The ingest used to go through
  `bulk_create(update_conflicts=True)`, whose time went into building one Django model object per
  instance, not into PostgreSQL. {before}. On PostgreSQL a page is now
  COPY'd into a session-local temporary table (its column types taken from `fleet_instance`
  itself, so they cannot drift), counted against the cache (new / changed) with one SELECT, and
  merged with one `INSERT ... ON CONFLICT (account, region, instance_id) DO UPDATE`: three
  statements per page of 1,000 whatever its content. SQLite keeps the `bulk_create` path;
  `fleet/tests/test_sync.py` passes on both.
- **`fleet/changes/` — `request_change` (P4).** The request used to read every selected
  instance into Python, build a `ChangeItem` per instance and `bulk_create` them in slices, so its
  time and its query count grew with the selection. On PostgreSQL one `INSERT ... SELECT` now
  decides every item's state and reason in the database, over the one decision rule of
  `fleet/changes/decision.py` (whose rows SQLite bulk-creates): a fixed handful of queries at any
  size. Above `INLINE_MAX` instances a worker expands the selection in chunks (P4b).
- **`fleet/models/posture.py`, `fleet/posture.py` — the posture summary (P3).** See P3 below: the
  overview reads one maintained row per account/region instead of aggregating every instance.
- **`fleet/pagination.py`, `fleet/views/instances.py`, migration 0003 — keyset pages, a bounded
  count, sort and search indexes (P3).** See P3 below: any page of any sort of the instance list is
  an index seek, the count stops at 1,000 rows (the summary answers beyond), and the rows are
  written in Python (`fleet.tables.instance_rows`) instead of cell by cell through django-tables2.
- **`fleet/models/changes.py`, migration 0005 — item inserts (P4).** `ChangeItem.batch` and
  `.account` carry no database constraint and no index of their own: at COMMIT PostgreSQL
  re-checked the same batch row and account rows once per item (see P4).
- **`fleet/ratelimit.py` — pacing learned from AWS's throttles (P5, P5b, P5c).** Exact pacing
  drew throttles at AWS's real rate, a fixed headroom below AWS's refill then capped the engine
  at that headroom, and an AIMD controller beside a second client was throttled often. The rate is
  now estimated from the calls AWS accepted between two throttles (see P5c), at up to all of
  AWS's refill (`IMDSWEB_RATE_HEADROOM` 1.0 by default).
- **`fleet/signin.py`, django-axes, threaded gunicorn workers (P9, GitHub issue 17).** Failed
  logins lock out the username and the address; a locked-out attempt is refused before any password
  is checked, with reads only, and answered after a pause; concurrent attempts for one username
  or address are checked one at a time (see P9).
- **`fleet/sources.py` — the sources sync (P8).** A re-sync used to upsert every source and version
  again, resolve every source through model instances and write verdicts with `bulk_update` (a
  CASE per column). It now compares what AWS answered with the stored rows as plain dicts and
  upserts only new or changed ones (`last_seen` is one UPDATE; versions already stored are not
  re-sent or re-read; unchanged AMIs are left alone), resolves over plain rows read once, and
  writes changed verdicts with one upsert per 1,000 rows. A re-sync of an unchanged region writes
  no source row.
- **`fleet/changes/expansion.py`, `fleet/changes/items.py`, migration 0023 — chunks of a large
  selection (P4b).** Each chunk reads only its own id range of the stored selection, learns its
  queued account/regions from its INSERT, and commits without an item-by-item instance foreign-key
  check or a WAL flush wait (see P4b).
- **`fleet/sources.py` — the sync's memory (P7b).** A region whose instances run as many distinct
  AMIs took the syncing worker past the target: the sources sync built every Image row at once and
  read every image of the region to resolve verdicts. Images are now written 1,000 at a time, and
  the verdicts read only the images a source or version launches.
- **`fleet/aws/session.py`, `fleet/engine/`, workers with `-O fair` (P5).** One botocore model
  loader per process, parsed when the worker starts; the runner builds its AWS client before its
  first token (see P5).
- **`fleet/engine/runner.py`, `fleet/engine/tracking.py` — the change engine's CPU per item (P5b).**
  A profile of the workers (py-spy) at 16 account/regions showed the ORM, not AWS, in most of
  the time: a read, a claim and a two-statement commit per item, a run of the Celery task for
  nearly every item once the burst was spent, two AWS clients per account/region in every pool
  process, and a posture recount after nearly every tracking round. The runner now works in
  chunks of up to 50 items that call one action: one token round trip (`ratelimit.take_some`),
  one read and one claim per chunk, each answer recorded in plain SQL as it comes (one commit
  each, so a worker that dies still leaves only the call under way to be re-sent; the ORM's
  UPDATE cost more CPU than the AWS call it recorded); once the burst is spent it waits for two seconds' refill, or what its queue
  still needs, before it runs again (the region's last item still goes when its own token is
  there); a run yields after 0.2 s, so one region's burst never keeps another's full bucket
  waiting. Tracking describes on the runner's one-attempt client and checks a change a round
  after its submit; the posture summary is recounted at most every 15 s while changes run (at
  once when the region's queue and tracking are done).
  A second profile (cProfile on process CPU time in the pool processes, and every process's CPU
  over the window) found what the first missed: Celery's Django fix-up closed the database
  connection before and after every task, so each run paid for a new PostgreSQL backend, unseen by
  the half-second sampler (`CELERY_DB_REUSE_MAX`; connections now close as around a web request,
  when unusable or older than `CONN_MAX_AGE`); Django's Redis cache built a `redis.Redis` object for
  every operation (about 6 % of a worker's CPU; `imdsweb.cache.RedisCache` keeps one per pool); the
  benchmark's workers ran under `DJANGO_DEBUG`, timing and keeping every statement (they now run
  with production settings); an answer was four round trips to PostgreSQL (now one statement on
  PostgreSQL, a data-modifying `WITH`); and a run whose take emptied the bucket read the queue
  again for no tokens (it now asks the bucket when the next gather will be there). A batch's first
  run in each region yields after its DryRun preflight (see below), so that every region's first
  call, which starts AWS's refill there, goes out before any region's burst.
  A third profile (py-spy over the pool processes and the simulator, 16 account/regions, on a
  machine about half as fast as the one of the full run of commit e7e3c8e, 2026-12-02) found three costs in the libraries
  under the engine rather than in it. botocore built a new class for every client, one method per
  API operation (about 750 for EC2: 38 of the 52 ms of CPU of building an EC2 client there), and
  a batch's first seconds build a client per account/region in every pool process, when every
  region's bucket waits for its first call: the clients of imdsweb's sessions now share one class
  per service (`fleet/aws/session.py`). botocore parsed every timestamp of an answer with
  dateutil's general parser (116 µs each, a third of parsing a DescribeInstances page for the
  tracker): AWS's ISO 8601 is now read by `datetime.fromisoformat` (2.5 µs). The `/metrics` AWS
  call counters cost a Redis round trip per call (5 % of a worker's CPU): a worker's task now
  sends its counts once, when it ends. Measured on 2026-12-02 on that slower machine, the 16 point
  run twice on each side, alternating (commit 38fd141 against 60387cf): the workers' CPU per
  item went from 16.5 and 16.8 ms to 15.2 and 15.9 ms; the points were CPU-bound there (46-50 %
  of theoretical on both sides, the machine 93 % busy), so the rate moved within the noise.
  A timeline of that run (each call as the simulator saw it, each run of the runner) showed why
  the rate there was so far below what the cores could do: a run's slice is 0.2 s of wall time,
  and on busy cores it sent 2 to 6 items while the wait for the region's next turn grew to seconds,
  so its bucket refilled to full (and stopped refilling) between two turns, and each run's fixed
  cost (about 20 ms of CPU: the lock, the read, the claim, the task) was spread over a few items.
  A run now sends what AWS refilled while it waited in the queue beyond its time (at most a chunk)
  before its slice may end (`fleet/engine/runner.py`). Measured on 2026-12-02 on that machine, the
  16 point twice on each side, alternating (bc08a8f's rule, before its first read was sized for it,
  against d2be466): 53.0 and 46.8 % of theoretical before, 66.2 and 65.0 % after, the workers' CPU
  per item from 14.0 and 15.1 ms to 10.1 and 10.4 ms. Where the cores are not short the rule
  changes nothing: the 4 point on the same machine (52-58 % busy), twice on each side, reached
  95.3 and 95.6 % before, 95.7 and 95.4 % after.
  On the machine of the full run of commit e7e3c8e the 16 point was no longer short of cores (65-75 %
  busy) and reached 93.4 % of theoretical (twice, commit 60a83e0). A timeline of each run of the
  runner showed that a point's span is its last region's first call plus AWS's 30 s: a region
  whose DryRun went out and which then waited for its next turn behind the other regions' first
  runs had a full bucket again 0.2 s later (the DryRun takes one token). The preflight's run was
  made to send two seconds' refill, the cover (`IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS`; off by
  default since, see below), before it yields, and it leaves the region's posture recount to a
  later run; a worker's main process builds the AWS client classes and service models before it
  forks its pool, the clients share their service model (botocore builds a table of every error
  shape of the service on each client's first error answer, and every region's first answer is
  the DryRun's error code), and one STS client assumes every account's role. The same timeline showed the sweeper (every 2 s in the
  benchmark's stacks) starting a second runner for every region whose runner waited in its
  countdown (862 runs for the 16 point's batch, 340 without them); a mark that kept the sweeper
  away made the 16 point 95.0-95.8 %, but under 50 % throttling and 10 % 5xx those duplicates had
  been what cut the runner's long backoffs short, and the reliability suite's storm timed out
  without them. Measured on 2026-12-02 with the cover and the sweeper's mark together: 94.8-95.2 %
  (four runs). The backoff's streak was the cause: it was cleared only by a run that ended without
  an error, which under a storm almost none does, so it grew to its 60 s cap. It now counts the
  errors since AWS last took a call of the region, capped at 20 s as botocore's standard retries
  are (`fleet/engine/locks.py`), and the mark is back (`fleet/engine/sweep.py`): the storm test
  took 81.5 s against 91.6 s without the mark, and the 16 point on a machine slower than the one
  of that full run (2026-12-02, one run each side), 92.2 and 91.1 % with the mark, 92.5 % without, the workers' CPU per
  item 7.6 and 7.2 ms against 8.2 ms (the machine 85-92 % busy: short of cores).
  A fourth profile (py-spy over the pool processes, 16 account/regions, on a machine slower than the
  one of that full run, where the 16 point with the cover alone reached 52.8-55.6 % in
  three runs and commit 60a83e0 60.7 % in one, the machine 88 % busy: short of cores) found a new
  TCP connection for every AWS call: werkzeug's server answers every request with `Connection:
  close`, so each call also cost the simulator a new thread. AWS keeps connections open and botocore
  pools them, so that cost was the test bench's, not the engine's: the simulator now keeps a
  connection open between calls (`imdssim/server.py`). Measured there on 2026-12-02 (one run): the
  16 point 61.9 %, the workers' CPU per item from 10.9-11.7 ms to 10.1 ms, the simulator's from
  7.2-8.0 ms to 6.5 ms. Then the cover against none (`IMDSWEB_RUNNER_PREFLIGHT_COVER_SECONDS` 2 and
  0), the 16 point four times on each side, alternating, the same machine growing quieter from run
  to run: 67.5, 77.1, 71.2 and 83.4 % with the cover, 80.1, 90.1, 81.4 and 87.2 % without (each
  ahead of the run it was paired with, whichever went first), the workers' CPU per item 8.0-9.7 ms
  with it and 7.6-8.4 ms without: on busy cores the covers, ten items each sent before a run may
  yield, hold the pool processes while later regions wait for their first call. The cover was then
  turned off by default (see below for today's default). What is left per item is the engine's
  own: the ModifyInstanceMetadataOptions call through botocore (about half of a pool process's
  CPU), one commit per answer, and parsing the tracker's DescribeInstances pages.
  A fifth profile (py-spy over the pool processes and the simulator, 16 account/regions, 2026-12-03,
  on a machine as slow as the fourth's: the 16 point 60-73 % of theoretical in three runs of the
  same code, the machine 89-97 % busy) found the tracker behind a third of the workers' busy time
  and moto's writing of DescribeInstances answers behind 70 % of the simulator's: 4.3 ms of the
  simulator's CPU per instance described, more than the engine spends on a change. moto 5 looks up
  every field of every instance through a chain of alias providers and writes the XML through
  xmltodict's SAX generator; the simulator now remembers the lookups and writes the XML directly,
  byte for byte the same (`imdssim/serialize.py`): 1.75 ms per instance. And a region's tracking
  rounds came every second while its runner sent at AWS's 5 a second, so each described about five
  instances and paid a round's whole fixed cost (its task, its reads, a call, its writes) for them:
  while the region's runner still has changes queued, the next round now waits as long as AWS's
  refill takes to let it send them, at most `IMDSWEB_TRACK_SENDING_SECONDS` (off by default: it breaks the
  2 s promise of test_engine_live; 5 s in this measurement), and once the
  last few are queued the rounds come every second again. Measured there, the 16 point once on
  each side (commit 7604f02 with the wait and without it): 88.2 % of theoretical against 74.5 %,
  126 DescribeInstances against 368, the workers' CPU per item 8.9 ms against 10.7 ms and the
  simulator's 3.9 ms against 4.4 ms.
  On the machine of this report's run (2026-12-03, about nine times as fast on one core as the
  fifth profile's, the 16 point 45-52 % busy: not short of cores) the same timeline showed the
  span as the last region's first change plus AWS's 30 s again, the last region's first change
  1.5 s after the click: with no cover, each region's bucket sat full from its DryRun until its
  burst, which came after the other regions' preflights and bursts. The 16 point, one run each,
  commit e2c4870: 95.0 and 95.0 % of theoretical without the cover, 96.0, 96.5 and 96.6 % with
  0.5, 1 and 2 s of it (the last region's first change 0.68-0.84 s after the click), and 95.1 % with
  the tracking wait of 5 s (217 DescribeInstances against 301: the rounds' cost no longer mattered
  with cores to spare). The cover is now one second by default (five items at AWS's rate, half
  the cost that hurt on cores short of CPU); the tracking wait stays off.
"""


# The hand-written parts: design only, true whatever a run measures. The figures and verdicts are
# written by the functions below from the run's own result.
ANALYSIS = {
    "P8": (
        "A re-sync asks AWS for the same inventory as the raw describes (templates, their $Default and "
        "$Latest versions, groups, launch configurations, AMIs) except the versions it already stores: "
        "launch template versions are immutable, so the one DescribeLaunchTemplateVersions per template "
        "that pinned groups name, paced by AWS's bucket for that call, is paid by the first sync only. "
        "What is left of a re-sync's own work is the comparison with the stored rows as plain dicts, the "
        "writes of what changed and the resolution of every source over rows read once. The sync of one "
        "account/region is one process on one core; more account/regions sync in parallel on more workers, "
        "each against its own buckets."
    ),
    "P9": (
        "Before GitHub issue 17 every wrong password cost a PBKDF2 hash, so a flood of a few connections "
        "kept both cores hashing and the viewer's requests waited for a CPU. What changed, each found "
        "necessary by a P9 run on the way:\n\n"
        "- *django-axes locks out the username and the address* after the failure limit, and a locked-out "
        "attempt is refused before any password is checked.\n"
        "- *A refused attempt is reads only* (`AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT` off; "
        "`fleet.signin` logs it): as configured by default axes rewrote the attempt row, appending the "
        "request, at every refused attempt.\n"
        "- *A pause before the 429* (`IMDSWEB_LOCKOUT_DELAY_SECONDS`, a tarpit) in threaded workers, so a "
        "flood's connections spend their time waiting, not asking; a sync worker would be held by it.\n"
        "- *Password checks one at a time per username and per address* (`OneCheckAtATimeBackend`): the "
        "first attempts of a flood arrive together, and without it they all hashed before the first failure "
        "was counted.\n"
        "- *Enough threads per worker* (compose's web too) that a viewer's request does not wait behind a "
        "worker whose threads are all pausing.\n\n"
        "The windows alternate (viewer alone, then flooded) because the machine's other load moves the "
        "viewer's p50 alone from one run to the next. What limits the ratio on 2 cores is the few hashes "
        "before the lockout and the refused attempts' reads, which share the cores with the viewer; more "
        "cores leave the viewer a core of its own."
    ),
    "P2": (
        "Both sides make the same DescribeInstances calls to the same simulator, whose CPU per described "
        "instance is in both figures; the ratio is the sync's own work on top: three statements per page, "
        "the gone-instance update, one GetInstanceMetadataDefaults call and the SyncRun row. On 2 cores the "
        "simulator, PostgreSQL and the sync share the machine; against AWS the describes run on AWS's side "
        "and the sync's own work is what is left here."
    ),
    "P1": (
        "The instance table carries the indexes P3 needs (the keyset sort indexes, a trigram GIN index on "
        "the name and a pattern index on the id), and the COPY baseline writes into the same table with the "
        "same indexes, so the ratio compares like with like. A re-sync of existing rows writes every index "
        "again: each sync updates `last_seen`, which is indexed, so no instance update is HOT. The ingest of "
        "one account/region is one database session; account/regions are ingested in parallel by as many "
        "workers as there are, so more cores add throughput across account/regions, not to this figure."
    ),
    "P3": (
        "What was built to keep the instance list flat at any size:\n\n"
        "- *Keyset pagination* (`fleet/pagination.py`): a page starts after (or ends before) a row, and the "
        "database seeks to it with one row-value comparison `(keys) > (values)`, which a B-tree on exactly "
        "the sort's keys answers as an index seek at any depth. Every sortable column has such an index "
        "(`instance_sort_*`, the last key unique, nullable columns through `COALESCE`); a test asks "
        "PostgreSQL's planner for each sort and fails on a Sort node. The pager offers first / previous / "
        "next / last; a sort link starts again at the first page; a stale link shows the first page and says "
        "so. Columns of a few values (HttpTokens, endpoint, state, options, tags, region) are filters, not "
        "sorts: a sort would need an index each.\n"
        "- *A bounded count*: `COUNT(*)` over at most 1,001 rows; beyond that the posture summary gives the "
        "count when the filter is account / region plus at most one posture filter (a `tokens_required` "
        "counter was added so HttpTokens is one), else the page says \"1,000+\" and the bulk confirmation "
        "counts exactly. A larger bound would make a common search term recheck that many rows.\n"
        "- *Search indexes* (PostgreSQL; migration 0003 creates `pg_trgm`): a trigram GIN index on "
        "`UPPER(name)` and a pattern B-tree on `UPPER(instance_id)`, so a rare term is an index lookup "
        "whatever the fleet's size.\n"
        "- *The rows and the filter form written in Python*: django-tables2's generic cell rendering (a "
        "signature inspection and several template lookups per cell) was most of a page's time, and the "
        "template the rows were then written in, with its filters, still about a quarter (profiled on "
        "2026-12-02); `fleet.tables.instance_rows` writes the same cells with f-strings over `html.escape` "
        "(~0.05 ms a row; `format_html` checks each argument for lazy text and cost as much as the template), "
        "and a test keeps the template they replaced and checks both write the same HTML. The 33 filter "
        "fields went through Django's widget templates, one more per `<option>`: `fleet/widgets.py` writes "
        "the same inputs and selects (a test compares them with Django's for bound, unbound and invalid "
        "forms). Headers, sort links and the column set stay django-tables2's.\n\n"
        "A page after a cursor makes one query more than a first page (the cursor row's keys), at every size. "
        "A page is one request on one core; more cores serve more viewers at once, not a faster page."
    ),
    "P3-org": (
        "What was built to keep the overview flat at organization scale: the heat map shows one OU level at a time (a "
        "row per child OU summed by the database, a row per account directly in the OU, 50 a page, regions "
        "with instances as columns), so a page has at most 50 × 17 cells whatever the organization's size, "
        "each row's cells formatted once in Python (`fleet/heatmap.py`); fleet totals are one SUM, and so is "
        "the instance list's exact count of a filter the summary knows (`fleet.posture.present_count`: a SUM "
        "of the summary rows' columns, or of one cell of their `value_counts` on PostgreSQL, where it once "
        "read every account/region's row and its JSON into Python, a cost that grew with the account/regions); the "
        "hop-limit distribution is one SUM ... GROUP BY over `HopLimitCount` rows (not jsonb_each over every "
        "summary row); the sync table's staleness is one SQL verdict over the configured "
        "account/regions joined to `RegionSync` (the latest run, its status and the last success per "
        "account/region, kept by `SyncRun.save`), counted and ordered by the database, 20 rows shown: before, "
        "a GROUP BY and a correlated subquery over every sync run kept, which grew with history too. Sync and "
        "discovery runs are pruned after `IMDSWEB_RUN_RETENTION_DAYS`."
    ),
    "P4": (
        "What changed: one `INSERT ... SELECT` decides every item in the database (see above), and "
        "`ChangeItem.batch` and `ChangeItem.account` have no database constraint and no index of their own "
        "(migration 0005): at COMMIT PostgreSQL re-checked the same batch row and the same few account rows "
        "once per item. The statement takes the batch it just created and the accounts of the instance rows "
        "it reads; Django's PROTECT refuses deleting a batch or an account that has items (pinned by "
        "`test_models`); `(batch, state)` and `(state, account, region)` serve every lookup. The instance "
        "keeps its constraint. What is left grows with the selection: the INSERT itself, its index entries "
        "and the instance foreign key checked at COMMIT per item, in one transaction on one core, which is "
        "why a request for more than `INLINE_MAX` instances (`fleet/changes/expansion.py`) leaves the items to "
        "a worker (P4b): the pass/fail is that request as shipped at 100,000, and the inline figures are the "
        "inline path's, forced past the threshold, at both sizes."
    ),
    # Design notes, not figures: re-read them against the figures after each full run.
    "P4b": (
        "The request writes the batch only: its selection's SQL and parameters (`expansion.selection_query`), "
        "how many instances it held (one `COUNT`), `expanding`, and the one-time token; the query count is "
        "the same at any size. A worker expands it in keyset chunks of 20,000 instance ids: each chunk locks "
        "the batch row, finds its upper bound (one index range), runs the decision rule's INSERT ... SELECT "
        "restricted to that id range, which also answers the chunk's queued account/regions, moves the cursor "
        "and commits, then starts those runners.\n\n"
        "- *Where a chunk's time went (timed statement by statement on 2026-12-01, 1,000,000 instances, load "
        "average ~6):* about 1 s a chunk. The range was applied to the outer query only: PostgreSQL carries "
        "an equality across `pk IN (selection)` but not a range, so every chunk hash-joined its 20,000 ids "
        "against a sequential scan of the whole selection (330 ms of the statement's 570 ms). At COMMIT the "
        "items' instance foreign key was checked item by item, each check locking the instance row (~0.1 s "
        "a chunk). A second query over the batch's queued items found the chunk's account/regions, and the "
        "chunk's sort spilled to disk (4 MB `work_mem`).\n"
        "- *What changed:* the range is written inside the stored selection's subquery too "
        "(`expansion.selected`), so a chunk reads only its own range; the INSERT returns the account/regions "
        "(`RETURNING`, aggregated in the same statement); `ChangeItem.instance` has no database constraint "
        "and the source index is partial (migration 0023; Django's PROTECT still refuses deleting an "
        "instance with items); the chunk sorts in 64 MB and commits with `synchronous_commit = off` (the "
        "cursor commits in the same transaction, so a crash loses a chunk and its cursor together and the "
        "sweeper writes it again). Measured apart the same way: ~0.3 s a chunk (statement ~0.22 s, COMMIT "
        "~0.01 s), of which about half is deciding (the rule's CASE re-evaluates the busy and owner subqueries "
        "per branch) and half writing the item with five index entries.\n"
        "- *What is left:* the expansion is one worker slot. Chunks of disjoint id ranges could be expanded "
        "by several workers at once; on this 2-core machine, shared with the poller, PostgreSQL and other "
        "work, that buys little, on more cores nearly linearly. The progress partial polled meanwhile reads "
        "the batch's counts and the first page of its items: with the item table's statistics from before "
        "the batch (analysed empty here) the planner expects one item and joins every item written so far "
        "before sorting for the first 50, seconds per poll on the loaded machine; the poll competes with the "
        "expander for the same 2 cores."
    ),
    "P5": (
        "- *What was in the way, found with a per-region timeline of the runner:* (1) the runners started "
        "only when the sweeper found the queued rows: the benchmark process published the batch's dispatch "
        "to bench.run's broker, not the stack's (Celery reads `CELERY_BROKER_URL` from the environment "
        "first; fixed in `LiveStack`). (2) The first call left late after the runner's first token: each "
        "cold pool process parsed EC2's service model for each account's own botocore session (AssumeRole); "
        "our bucket refilled to its cap meanwhile, and AWS's bucket, which only sees calls, started behind "
        "ours: the cause of throttles after the burst. (3) A runner resuming after its budget waited behind "
        "other runners' budgets in a busy pool process's pipe while the other worker had an idle process.\n"
        "- *What changed:* the processes of a worker share one botocore model loader, parsed when the worker "
        "starts; the runner builds its AWS client before taking a token; workers run with `-O fair`; the "
        "runner reads, claims and records a chunk of items at a time (see P5b); pacing is P5c's controller, at "
        "up to all of AWS's refill. What is left at scale 1 is the request and dispatch, the runners' first AssumeRole and "
        "client in their pool process and the last resumption: fixed costs that a longer run spreads thinner.\n"
        "- *Above scale 1* the machine, not AWS, sets the pace: the simulator answering every call, the "
        "workers and PostgreSQL share 2 cores. The cores it would need are the CPU per item times the rate "
        "asked for; re-measure on a machine where the simulator does not share the cores with the workers."
    ),
}


def _relative(seconds, what):
    """``-3.6, "its bucket time"`` -> "3.6 s before its bucket time"."""
    return f"{abs(seconds):.1f} s {'before' if seconds < 0 else 'after'} {what}"


def _p10_analysis(result):
    """P10's analysis, written from its figures so that the prose follows the run."""
    f = result["figures"]
    largest = max(f["regions"], key=lambda region: region["items_submitted"])
    over = f["compliant_s"] - f["target_bound_s"]
    paced = f["bucket_limited_submit_s"] / f["rate_headroom"] if f["rate_headroom"] else None
    before = largest["first_submit_s"]
    last_running = f.get("last_running_submit_s", f["last_submit_s"])
    excess = last_running - before - f["bucket_limited_submit_s"]
    after = f["compliant_s"] - last_running - f["apply_delay_s"]
    floor = f["bucket_limited_submit_s"] + f["apply_delay_s"]
    running_first = "last_running_submit_s" in f
    lines = [
        f"**{'Met' if result['met'] else 'Missed'}: DescribeInstances reported all {f['running_instances']:,} running "
        f"instances applied with tokens required {f['compliant_s']:.1f} s after the click, "
        f"{abs(over):.1f} s {'inside' if over <= 0 else 'over'} the bound of {f['target_bound_s']:.1f} s.** The "
        f"bound is AWS's bucket for the largest account/region ({largest['account_region']}: "
        f"{largest['items_submitted']} items, {f['bucket_burst']} at once then {f['bucket_refill_per_s']:g}/s, "
        f"{f['bucket_limited_submit_s']:.1f} s) plus the endpoint's apply delay ({f['apply_delay_s']:g} s) plus 3 s. "
        + ("" if f.get("rate_headroom_is_default", True) else
           f"*This is a what-if run: the workers paced at {f['rate_headroom']:.0%} of AWS's refill instead of "
           "the product's default.* ")
        + "Where the time went, from the click:",
        "",
        f"- *the request* (the confirmation form's POST, {f['items_submitted'] + f['items_skipped_already_required']:,} "
        f"items written, {f['items_skipped_already_required']} of them skipped as already required): "
        f"{f['request_s']:.2f} s;",
        f"- *submitting*: the largest account/region's first call at {before:.2f} s"
        + (f", its last call for a running instance at {largest['last_running_submit_s']:.1f} s"
           if largest.get("last_running_submit_s") is not None else "")
        + f", its last call at {largest['last_submit_s']:.1f} s, "
        + _relative(largest["last_submit_s"] - largest["bucket_s"], "its bucket time")
        + (f" (the engine paces at {f['rate_headroom']:.0%} of AWS's refill, which alone makes the bucket's "
           f"{f['bucket_limited_submit_s']:.1f} s {paced:.1f} s)" if paced and f["rate_headroom"] < 1 else "")
        + f"; {f['modify_throttled']} of {f['modify_calls']} ModifyInstanceMetadataOptions calls throttled "
        "(the calls include one DryRun preflight per account/region and the stopped instances' items);",
        f"- *AWS applying*: DescribeInstances showed the last running instance compliant "
        f"{f['compliant_s'] - last_running:.1f} s after the last call for a running instance (apply delay "
        f"{f['apply_delay_s']:g} s, then up to one poll of {f['poll_interval_s']:g} s);",
        f"- *imdsweb saying so*: the batch said \"{f['batch_status_at_end']}\" "
        f"{f['batch_done_s']:.1f} s after the click, {_relative(f['batch_done_s'] - f['compliant_s'], 'DescribeInstances')}"
        f" ({'within' if f['batch_done_s'] <= f['target_bound_s'] else 'beyond'} the bound too): "
        "its tracking rounds check every pending item of an account/region with batched "
        "DescribeInstances about once a second while changes are pending"
        + (f", and the batch was still sending the stopped instances' calls until {f['last_submit_s']:.1f} s"
           if f["last_submit_s"] > f["compliant_s"] else "")
        + f"; once sent, the {f['items_awaiting_start']} items on stopped instances wait for their next start and "
        "do not keep the batch running.",
        "",
        f"The fleet was compliant {_relative(before + excess + after, f'the bucket time plus the apply delay ({floor:.1f} s)')}"
        ", where the bound allows 3 s after it "
        + (f"({over:.1f} s over)" if over > 0 else f"({-over:.1f} s to spare)")
        + f": {before:.1f} s passed before the largest account/region's first call, the calls from there to the "
        f"last one for a running instance took {abs(excess):.1f} s {'less' if excess < 0 else 'more'} than the "
        "bucket time, and the poll that saw the fleet compliant came "
        f"{_relative(after, 'the end of that call' + chr(39) + 's apply delay')}.",
    ]
    if running_first:
        strict = f["strict_bound_running_only_s"]
        lines += [
            "",
            f"The runner sends the items of running instances first (a stopped instance's change waits for its "
            f"next start anyway): the last running instance's call left at {f['last_running_submit_s']:.1f} s, the "
            f"batch's last call (for {f['stopped_instances']} stopped instances) at {f['last_submit_s']:.1f} s. "
            "Counting only the running instances' calls, as if the stopped ones cost no tokens, the bound would be "
            f"{strict:.1f} s, which this run {'meets' if f['compliant_s'] <= strict else 'misses'} by "
            f"{abs(f['compliant_s'] - strict):.1f} s.",
        ]
    return "\n".join(lines)


ANALYSIS["P10"] = _p10_analysis
def _pct(part, whole):
    return 100.0 * part / whole if whole else 0.0


def _p5c_analysis(result):
    """P5c's analysis, from its figures: the controller's design, then what each run measured."""
    alone, shared = result["figures"]["runs"]
    lines = [
        "The controller (`fleet/ratelimit.py`) learns the rate left for imdsweb from AWS's token-bucket "
        "semantics. A `RequestLimitExceeded` is an *empty moment* of AWS's bucket; between two empty moments "
        "AWS refilled at its fixed rate and every token was spent, so the calls AWS accepted from us over "
        "that span are, to within one token, the rate the other callers leave. The first throttle only "
        "empties our bucket (back in step with AWS's; a lone engine keeps AWS's full rate); a later one, "
        "over a span of at least 60 token-times, sets the rate 3 % below that estimate, over a shorter span "
        "to at most its upper bound (accepted + 1) / span and at least 15 % lower. The rate is then held 50 "
        "token-times and probed up additively (0.2 % of AWS's rate per second, growing). The state is one "
        "Redis hash per bucket, updated by the Lua call that takes the token, so every worker of an "
        "account/region paces by it; a throttled item is requeued and retried, never failed. "
        "`fleet/tests/test_ratelimit.py` pins the estimator on a fake clock and runs it against the "
        "simulator's own TokenBucket with a second client.",
        "",
    ]
    verdict = "met" if alone["met"] else "missed"
    lines.append(
        f"- *Alone ({alone['items']:,} items, refill {alone['aws_rate']:g}/s):* the last item was submitted "
        f"{alone['submit_span_s']:.1f} s after the click against a theoretical {alone['theoretical_s']:.1f} s "
        f"= **{alone['efficiency_pct']:.1f} %** (target ≥ 98 %); {alone['engine_throttled']} of "
        f"{alone['engine_calls']} calls throttled (**{alone['throttled_pct']:.2f} %**, target ≤ 1 %), "
        f"{alone['failed']} failed; learned rate at the end {alone['learned_rate_at_end']:.2f}/s of "
        f"{alone['aws_rate']:g}/s: {verdict}."
    )
    verdict = "met" if shared["met"] else "missed"
    lines.append(
        f"- *Beside a client spending 30 % ({shared['items']:,} items):* over the second half of its items the "
        f"engine ran at {shared['settled_rate']:.2f}/s = **{shared['settled_pct_of_left']:.1f} %** of the "
        f"{shared['left_rate']:.2f}/s left (pass band 90-105 %); {shared['engine_throttled']} of "
        f"{shared['engine_calls']} engine calls throttled (**{shared['throttled_pct']:.2f} %**, target ≤ 2 %, "
        f"the burst and the learning included), {shared['failed']} failed; learned rate at the end "
        f"{shared['learned_rate_at_end']:.2f}/s. The second client had {shared['second_client_throttled']} of its "
        f"{shared['second_client_calls']} calls throttled "
        f"({_pct(shared['second_client_throttled'], shared['second_client_calls']):.1f} %: it meets the same "
        f"empty moments; reported, not targeted): {verdict}."
    )
    loads = [run.get("load_average_1m_at_start") for run in (alone, shared)]
    if all(load is not None for load in loads):
        lines.append(f"- Load average (1 min) at the start of each run: {loads[0]:.2f} and {loads[1]:.2f} on "
                     "this 2-core machine shared with other work.")
    return "\n".join(lines)


def _p5b_analysis(result):
    """P5b's analysis, from its curve: a table, then what limits the largest point."""
    curve = result["figures"]["curve"]
    def cores(p):
        """Cores the engine and the simulator need at the point's theoretical rate, at its measured cost."""
        per_item = p["engine_cpu_ms_per_item"] + (p.get("simulator_cpu_ms_per_item") or 0)
        return f"{per_item * (p['theoretical_items_per_s'] or 0) / 1000:.2f}"

    def used(p):
        """Cores the engine had on average while the point ran: its CPU over the submit span."""
        return f"{p['engine_cpu_ms_per_item'] * p['items_per_s'] / 1000:.2f}"

    header = ("account/regions", "items", "theoretical /s", "measured /s", "% of theoretical", "throttled %",
              "failed", "engine CPU-ms / item", "simulator CPU-ms / item", "cores needed at theoretical",
              "engine cores used", "machine busy %", "load avg")
    rows = [(p["account_regions"], f"{p['items']:,}", p["theoretical_items_per_s"], p["items_per_s"],
             p["efficiency_pct"], p["throttled_pct"], p["failed"], p["engine_cpu_ms_per_item"],
             p.get("simulator_cpu_ms_per_item", "-"), cores(p), used(p), p["machine_cpu_busy_pct"],
             p["load_average_1m_at_start"])
            for p in curve]
    lines = [
        "Each point is P5's run (`bench.p5_apply.run_config`) with more account/regions, each in one run of "
        "its own: the theoretical rate is 100 at once, then 5/s per account/region, so the work per second "
        "grows with the point while the machine stays at 2 cores.",
        "",
        _table(rows, header),
        "",
    ]
    timed = [p for p in curve if p.get("first_submit_s") and p.get("worker_cpu_ms_per_item") is not None]
    if timed:
        lines += ["Where the time and the CPU went, per point: the engine's CPU split between the workers and "
                  "PostgreSQL, and when the account/regions' first and last changes went out after the click "
                  "(a late first change is a region whose full bucket waited for a core; its last change can "
                  "then be no earlier than that plus the theoretical time).", ""]
        lines += [_table([(p["account_regions"], p["worker_cpu_ms_per_item"],
                           round(p["engine_cpu_ms_per_item"] - p["worker_cpu_ms_per_item"], 2), p.get("request_s", "-"),
                           f"{p['first_submit_s']['earliest']:g}-{p['first_submit_s']['latest']:g}",
                           f"{p['last_submit_s']['earliest']:g}-{p['last_submit_s']['latest']:g}",
                           p["theoretical_s"])
                          for p in timed],
                         ("account/regions", "worker CPU-ms / item", "PostgreSQL CPU-ms / item", "request s",
                          "first change out, s", "last change out, s", "theoretical s")), ""]
    sixteen = next((p for p in curve if p["account_regions"] == 16), None)
    single = result["figures"].get("one_item_at_a_time")
    if sixteen and single:
        lines += [f"*Chunks against one item at a time, in this run:* the 16 point again with the runner one item "
                  f"at a time, as before its chunks (`IMDSWEB_RUNNER_CHUNK` 1, no gathering: a read, a claim, "
                  f"a commit and a token round trip per item, a Celery run per token once the burst is spent) "
                  f"reached {single['efficiency_pct']:.1f} % of theoretical ({single['items_per_s']:g} items/s) "
                  f"at {single['engine_cpu_ms_per_item']:g} engine CPU-ms per item "
                  f"({single['worker_cpu_ms_per_item']:g} in the workers); in chunks "
                  f"{sixteen['efficiency_pct']:.1f} % at {sixteen['engine_cpu_ms_per_item']:g} "
                  f"({sixteen['engine_cpu_ms_per_item'] / single['engine_cpu_ms_per_item']:.2f}x the CPU per item).", ""]
    if sixteen:
        verdict = ("met" if sixteen["efficiency_pct"] >= 95 and sixteen["failed"] == 0
                   and sixteen["throttled_pct"] <= 1 else "missed")
        lines += [f"*The pass point, 16 account/regions:* {sixteen['efficiency_pct']:.1f} % of theoretical "
                  f"({sixteen['items_per_s']:g} of {sixteen['theoretical_items_per_s']:g} items/s), "
                  f"{sixteen['throttled_pct']:.2f} % throttled, {sixteen['failed']} failed: {verdict}.", ""]
    fastest = max(curve, key=lambda p: p["items_per_s"])
    lines += [f"The most the engine delivered on this run was {fastest['items_per_s']:g} items/s (at "
              f"{fastest['account_regions']} account/regions); a point that asks for more falls short by the "
              "difference, and the cores column says what it would need.", ""]
    largest = max(curve, key=lambda p: p["account_regions"])
    rate = largest["theoretical_items_per_s"] or 0
    engine = largest["engine_cpu_ms_per_item"] * rate / 1000
    simulator = largest.get("simulator_cpu_ms_per_item")
    need = engine + (simulator * rate / 1000 if simulator is not None else 0)
    text = (f"*What limits the {largest['account_regions']}-account/region point:* it asks for {rate:g} items/s. "
            f"At its measured cost the engine (workers + PostgreSQL) needs {engine:.2f} of a core for that")
    if simulator is not None:
        text += (f", the simulator {simulator * rate / 1000:.2f} ({simulator:.1f} CPU-ms per item): "
                 f"{need:.2f} of the machine's 2 cores before Redis, beat and the other helpers' work")
    text += (f". It reached {largest['efficiency_pct']:.1f} % of theoretical with the machine "
             f"{largest['machine_cpu_busy_pct']:.0f} % busy (load average {largest['load_average_1m_at_start']:.2f} at "
             f"its start), the engine having {used(largest)} of a core on average: the rest went to the simulator, "
             "Redis, beat and whatever else the machine ran. ")
    if largest["efficiency_pct"] >= 95:
        text += "AWS's buckets, not the cores, set its pace on this run."
    elif largest["machine_cpu_busy_pct"] >= 85 or need >= 1.5:
        text += ("The cores are the limit: a runner's next call waits for a CPU, not for a token, so AWS's "
                 "buckets refill unused. More cores (or workers and the simulator on separate machines) move "
                 "the point up; AWS's buckets are per account/region, so the engine's own ceiling grows with "
                 "the account/regions.")
    else:
        text += ("The machine was not saturated, so the shortfall is latency in the engine's own path "
                 "(runner resumptions, dispatch), not CPU.")
    lines.append(text)
    return "\n".join(lines)


# Analyses generated from a benchmark's own figures, so their prose follows the data.
ANALYSIS["P5c"] = _p5c_analysis
ANALYSIS["P5b"] = _p5b_analysis
def _slowest(pages):
    name, figures = max(pages.items(), key=lambda item: item[1]["p50_ms"])
    return (f"{name} (p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms; {figures['queries']} queries, "
            f"{figures['db_ms_one_request']} ms of them in the database)")


def _p3_analysis(result):
    """What this run's P3 figures say: the slowest page at each size, and the organization case."""
    figures = result["figures"]
    lines = []
    for size, pages in figures["by_size"].items():
        load = figures.get("load_s", {}).get(size)
        lines.append(f"- *{int(size):,} instances*"
                     + (f" (loaded in {load} s, posture summary refreshed in "
                        f"{figures['posture_refresh_all_s'][size]} s)" if load is not None else "")
                     + f": slowest page {_slowest(pages)}.")
    for size, case in figures.get("organization_by_account_regions", {}).items():
        overview = {name: f for name, f in case["pages"].items() if name.startswith("org overview")}
        worst = max(overview.values(), key=lambda f: f["p95_ms"])
        lines.append(
            f"- *{int(size):,} account/regions, {case['instances']:,} instances* (loaded in {case['load_s']} s, "
            f"summary {case['posture_refresh_all_s']} s): overview p50 "
            f"{min(f['p50_ms'] for f in overview.values())}-{max(f['p50_ms'] for f in overview.values())} ms, "
            f"worst p95 {worst['p95_ms']} ms over its {len(overview)} variants; slowest page {_slowest(case['pages'])}."
        )
    constant = "constant" if figures["query_count_constant"] else "NOT constant"
    misses = figures.get("misses") or []
    return "\n".join([
        "This run, page by page (the tables below have every figure):", "", *lines, "",
        f"Query counts are {constant} across sizes; {len(misses)} page/size combinations over target"
        + (": " + "; ".join(misses) + "." if misses else "."),
    ])


def _org_analysis(result):
    """ORG from its figures: discovery, the sync of every account/region, and what limited it."""
    f = result["figures"]
    if f.get("completed", True):
        synced = f"synced in {f['sync_span_s']} s (first start to last finish)"
    else:
        synced = (f"{f['synced']:,} of them synced in the {f['budget_s']:.0f} s budget; at that rate all would take "
                  f"about {f['projected_all_s']} s (projected, not measured)")
    failed = (f"{f['failed']} failed ({', '.join(f['failed_accounts'])}: `{f['failed_error_example'][:120]}`)"
              if f["failed"] else "none failed")
    busy = f.get("workers_busy_share")
    limit = (
        "the workers were busy nearly the whole span, so each sync's own work was the limit, not waiting "
        "for a rate-limit token: per sync a botocore client for the account/region, the simulator's moto "
        "dispatch (one Python process answers every call), the rows and the posture refresh, all on the "
        "same shared cores"
        if busy is not None and busy >= 0.9 else
        f"the workers were busy only {busy} of the span: the rest of it they waited between syncs (for the "
        "broker, a token or the simulator)"
    )
    seeded = f" (the simulator seeded the organization in {f['simulator_seed_s']} s)" if "simulator_seed_s" in f else ""
    return (
        f"{f['account_regions']:,} account/regions of {f['member_accounts']} member accounts{seeded} discovered in "
        f"{f['discovery_s']} s ({f['discovery_changes']} changes recorded) and {synced}: {f['syncs_per_s']} a "
        f"second with {f['workers']} workers of {f['worker_concurrency']} process each, {f['mean_sync_s']} s a "
        f"sync; {failed}; workers' peak RSS {', '.join(str(mb) for mb in f['worker_peak_rss_mb'])} MB. The "
        "fan-out is one task per account/region (`sync_all`), so the workers take them in parallel; each "
        "account/region has its own API buckets (`fleet/ratelimit.py`) and a sync takes a few of its tokens. "
        f"What limited it: {limit} (workers busy share {busy})."
    )


ANALYSIS["P3"] = (_p3_analysis, ANALYSIS["P3"])  # this run's figures, then what changed
ANALYSIS["ORG"] = _org_analysis


def _verdict(met):
    return "Met" if met else "Missed"


def _median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _rounds(count, what="round"):
    return f"{count} {what}" if count == 1 else f"medians of {count} alternating {what}s"


def _spread(values):
    return f"{min(values):g}-{max(values):g} s" if len(values) > 1 else f"{values[0]:g} s"


def _p1_analysis(result):
    """P1 from its figures: the upsert against COPY, then the paths it replaced."""
    f = result["figures"]
    return (
        f"**{_verdict(result['met'])}: `upsert_instances` wrote {f['instances']:,} instances ({f['pages']} pages) into an "
        f"empty table in {f['upsert_instances_empty_table_s']:g} s, {f['ratio_upsert_to_copy']:g}x a plain COPY of the "
        f"same rows ({f['copy_s']:g} s, same run; target ≤ 3x).** Writing them again over the existing rows, as a "
        f"re-sync does, took {f['upsert_instances_existing_rows_s']:g} s. Converting the boto3 dicts to rows took "
        f"{f['dicts_to_rows_s']:g} s; with it counted on both sides the ratio is "
        f"{f['ratio_upsert_with_conversion_to_copy_with_conversion']:g}x. In the same run the `bulk_create` path "
        f"kept for SQLite took {f['bulk_create_path_empty_table_s']:g} s ({f['ratio_bulk_create_path_to_copy']:g}x "
        f"COPY), and the naive ORM (`update_or_create` per instance) {f['naive_orm_subset_s']:g} s for "
        f"{f['naive_orm_subset_instances']:,} instances, about {f['naive_orm_extrapolated_s']:g} s for all of them "
        f"(extrapolated, {f['ratio_naive_to_upsert']:g}x the upsert)."
    )


def _p2_analysis(result):
    """P2 from its figures: re-syncs against raw pagination, round by round."""
    f = result["figures"]
    resync, raw = f["resync_s"], f["raw_boto3_pagination_s"]
    low, high = min(resync + raw), max(resync + raw)
    return (
        f"**{_verdict(result['met'])}: a re-sync of {f['instances']:,} instances took {_median(resync):g} s against "
        f"{_median(raw):g} s for raw boto3 pagination of the same pages ({f['ratio_resync_to_raw_median']:g}x, "
        f"{_rounds(f['rounds'])}; target ≤ 1.15x); the first sync, every row new, took "
        f"{f['first_sync_s']:g} s ({f['ratio_first_sync_to_raw_median']:g}x).** The rounds ranged over "
        f"{_spread(resync)} for the sync and {_spread(raw)} raw, "
        f"{100 * (high - low) / low if low else 0:.0f} % from the fastest to the slowest of all of them."
    )


def _p4_analysis(result):
    """P4 from its figures: the request at each size, and what the largest costs per instance."""
    f = result["figures"]
    runs = f["runs"]
    big = max(runs, key=lambda run: run["instances"])
    sizes = "; ".join(
        f"{run['instances']:,} instances: {run['request_s']:g} s, {run['queries']} queries ({run['items']:,} items: "
        f"{run['queued']:,} queued, {run['skipped']:,} skipped, {run['held']:,} held)" for run in runs)
    constant = ("the same query count at every size" if f["query_count_constant"]
                else "a query count that grows with the selection")
    per_million = big["request_s"] / big["instances"] * 1_000_000 if big["instances"] else 0
    shipped = f.get("shipped")
    if not shipped:  # a run from before the request as shipped was measured: the inline path only
        return (f"**{_verdict(result['met'])}: {big['request_s']:g} s at {big['instances']:,} instances inline "
                f"(target ≤ 3 s), with {constant}.** {sizes}.")
    return (
        f"**{_verdict(result['met'])}: {shipped['request_s']:g} s at {shipped['instances']:,} "
        f"instances as shipped (target ≤ 3 s; {shipped['queries']} queries, the items left to a worker above "
        f"{shipped['inline_max']:,}), and the inline path with {constant}.** Inline: {sizes}. At the "
        "largest size's cost per instance, a million instances inline would take "
        f"about {per_million:.0f} s{', over gunicorn' + chr(39) + 's default 30 s timeout' if per_million > 30 else ''}: "
        "that is what P4b's "
        "worker expansion is for."
    )


def _p5_analysis(result):
    """P5 from its runs: the pass/fail at AWS's real rate, then the machine's capacity above it."""
    lines = []
    met_per_run = result.get("met_per_run") or []
    for index, f in enumerate(result["figures"]["runs"]):
        met = (met_per_run[index] if index < len(met_per_run)
               else f["efficiency_pct"] >= 90 and f["failed"] == 0 and f["throttled_pct"] <= 2)
        head = (f"{f['efficiency_pct']:.1f} % of the theoretical rate ({f['items_per_s']:g} of "
                f"{f['theoretical_items_per_s']:g} items/s, {f['items']:,} items over {f['account_regions']} "
                f"account/regions, {f['submit_span_s']:g} s against {f['theoretical_s']:g} s), {f['failed']} failed, "
                f"{f['modify_throttled']} of {f['modify_calls']} calls throttled ({f['throttled_pct']:.2f} %), the "
                f"machine {f['machine_cpu_busy_pct']:.0f} % busy (load average {f['load_average_1m_at_start']:.2f} at "
                "the start)")
        if f["time_scale"] == 1:
            text = (f"- *At AWS's real rate (scale 1), the pass/fail:* **{head}: "
                    f"{'met' if met else 'missed'}** (target ≥ 90 %, 0 failed, ≤ 2 % throttled).")
            engine = f.get("engine_cpu_ms_per_item")
            if engine is not None and f["theoretical_items_per_s"]:
                cores = engine * f["theoretical_items_per_s"] / 1000
                text += (f" At {engine:g} CPU-ms per item the engine (workers + PostgreSQL) needs {cores:.2f} of a "
                         f"core for AWS's {f['theoretical_items_per_s']:g} items/s: "
                         + ("AWS's buckets, not this machine's cores, set the pace, and more workers would not "
                            "raise it (the buckets are AWS's, per account/region)." if cores < 1 else
                            "the engine's own CPU is near what 2 cores give it, so more cores would help here."))
            lines.append(text)
            continue
        text = (f"- *At time scale {f['time_scale']:g}, the capacity of this machine:* {head}: the engine "
                f"{'kept up with' if f['efficiency_pct'] >= 90 else 'fell short of'} the rate asked for.")
        engine, simulator = f.get("engine_cpu_ms_per_item"), f.get("simulator_cpu_ms_per_item")
        if engine is not None and simulator is not None and f["theoretical_items_per_s"]:
            need = (engine + simulator) * f["theoretical_items_per_s"] / 1000
            text += (f" At {engine:g} CPU-ms per item for the engine (workers + PostgreSQL) and {simulator:g} for "
                     f"the simulator, {f['theoretical_items_per_s']:g} items/s would need {need:.1f} cores "
                     f"{'of' if need <= 2 else 'against'} the machine's 2.")
        lines.append(text)
    return "\n".join(lines)


def _p8_analysis(result):
    """P8 from its figures: re-syncs against the raw describes, and the first sync."""
    f = result["figures"]
    resync, raw = f["resync_s"], f["raw_boto3_describe_s"]
    return (
        f"**{_verdict(result['met'])}: a re-sync of {f['templates']:,} templates × {f['versions_per_template']} "
        f"versions and {f['groups']:,} groups took {_median(resync):g} s against {_median(raw):g} s for the raw "
        f"describes ({f['ratio_resync_to_raw_median']:g}x, {_rounds(f['rounds'])}, "
        f"{_spread(resync)} and {_spread(raw)}; target ≤ 1.2x).** The first sync, every row new and every pinned "
        f"version read and paced, took {f['first_sync_s']:g} s."
    )


def _p9_analysis(result):
    """P9 from its figures: the viewer alone and flooded, what the flood was answered, and without the lockout."""
    f = result["figures"]
    alone, flooded, answers = f["baseline"], f["during_flood"], f["flood_answers"]
    total = sum(answers.values())
    answered = " and ".join(f"{count:,} with {status}" for status, count in
                            sorted(answers.items(), key=lambda item: -item[1]))
    text = (
        f"**{_verdict(result['met'])}: the viewer's overview p50 went from {alone['p50_ms']:g} ms alone to "
        f"{flooded['p50_ms']:g} ms during the flood ({f['ratio_p50']:g}x; target ≤ 2x), its worst request "
        f"{flooded['max_ms']:g} ms (p90 {flooded['p90_ms']:g} ms).** {f['flood_connections']} connections sent "
        f"{total:,} wrong passwords, {f['flood_requests_per_second']:g} a second, answered {answered}; "
        f"{f['gunicorn_workers']} gunicorn workers × {f['gunicorn_threads']} threads, lockout after "
        f"{f['failure_limit']} failures, {f['lockout_delay_s']:g} s pause before a 429, {f['rounds']} "
        f"window{'s' if f['rounds'] != 1 else ''} of {f['seconds_alone_and_flooded_per_round']:g} s alone then flooded."
    )
    without = f.get("without_lockout")
    if without:
        text += (f" With the lockout out of reach the same flood took the viewer's p50 from "
                 f"{without['baseline']['p50_ms']:g} ms to {without['during_flood']['p50_ms']:g} ms "
                 f"({without['ratio_p50']:g}x), every attempt hashing a password.")
    return text


# The figures and verdicts first, then the design they come from.
for _key, _figures in (("P1", _p1_analysis), ("P2", _p2_analysis), ("P4", _p4_analysis), ("P5", _p5_analysis),
                       ("P8", _p8_analysis), ("P9", _p9_analysis)):
    ANALYSIS[_key] = (_figures, ANALYSIS[_key])


def _organization_table(by_size):
    """P3's organization case as a table: a column pair per size, a row per page."""
    sizes = list(by_size)
    names = list(by_size[sizes[0]]["pages"])
    header = ["page", *(f"{int(size):,} a/r, {by_size[size]['instances']:,} inst.: p50 / p95 ms, queries"
                        for size in sizes)]
    rows = [(name, *(f"{f['p50_ms']} / {f['p95_ms']}, {f['queries']}" for f in
                     (by_size[size]["pages"][name] for size in sizes))) for name in names]
    intro = ("**Organization case** (issue 16): 200 accounts × 17 regions in six nested OUs "
             "(`Workloads/Prod` has 60 accounts) with a health row per account; the query counts are "
             "compared with the same pages at 20 accounts × 17 regions.")
    return [intro, "", _table(rows, header), ""]


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


def _order(key):
    """P1 < P4 < P4b < P5 < P10: by number, then suffix."""
    digits = "".join(ch for ch in key[1:] if ch.isdigit())
    return (int(digits or 0), key)


def _targets(benchmarks):
    """Which issue set the target of each benchmark, this run's ids and the known ones it lacks."""
    by_issue = {}
    for key in sorted(set(benchmarks) | set(TARGET_ISSUES), key=_order):
        hosts = [host for host in MEASURED_WITHIN.get(key, ()) if host in benchmarks]
        if key in benchmarks:
            entry = key
        elif hosts:
            entry = f"{key}, measured in {' and '.join(hosts)}"
        else:
            entry = f"{key}: not in this run"
        by_issue.setdefault(TARGET_ISSUES.get(key), []).append(entry)
        if key in TARGET_EXTENSIONS:
            issue, what = TARGET_EXTENSIONS[key]
            ran = "organization_by_account_regions" in benchmarks.get(key, {}).get("figures", {})
            by_issue.setdefault(issue, []).append(what if ran else f"{what}: not in this run")
    parts = [f"GitHub issue {issue} ({', '.join(by_issue[issue])})" for issue in sorted(i for i in by_issue if i)]
    if None in by_issue:
        parts.append(f"no issue on record ({', '.join(by_issue[None])})")
    return "Targets are from " + "; ".join(parts) + "."
def p7b(benchmarks):
    """P7b from the two runs that measure it: the expander's peak RSS in P4b (its largest size)
    and the syncing worker's in P7. A figure missing from the run counts as a miss, not a pass."""
    expansion, sync = benchmarks.get("P4b"), benchmarks.get("P7")
    runs = expansion["figures"]["runs"] if expansion else []
    big = runs[-1] if runs else None
    expand_mb = big["expander_peak_rss_mb"] if big else None
    sync_mb = sync["figures"]["peak_rss_mb"] if sync else None
    items = f"{big['items']:,}" if big else "?"
    synced = f"{sync['figures']['instances']:,}" if sync else "?"

    def said(value, what):
        return f"{value:.0f} MB {what}" if value is not None else f"{what}: not measured in this run"

    return {
        "id": "P7b",
        "title": f"worker peak RSS while expanding a {items}-item request and while syncing {synced} instances",
        "figures": {"expansion_peak_rss_mb": expand_mb, "expansion_items": big["items"] if big else None,
                    "sync_peak_rss_mb": sync_mb, "sync_instances": sync["figures"]["instances"] if sync else None},
        "measured": f"{said(expand_mb, 'expanding (P4b)')}; {said(sync_mb, 'syncing (P7)')}",
        "compare": "—",
        "target": "≤ 250 MB each, at 1,000,000 items and 100,000 instances",
        "met": (expand_mb is not None and sync_mb is not None and expand_mb <= 250 and sync_mb <= 250
                and big["instances"] >= 1_000_000 and sync["figures"]["instances"] >= 100_000),
        "limits": (
            "Both are the child process's ru_maxrss as the kernel reports it to its parent: a Django process "
            "with the product's modules (and, in P7, botocore's EC2 model) loaded, which is most of either "
            "figure. The expander builds no object per instance on PostgreSQL (each chunk is one INSERT ... "
            "SELECT whose rows stay in the database; only the chunk's account/regions come back), so its "
            "memory does not grow with the selection; the sync holds one page of 1,000 at a time."
        ),
    }


def render(report):
    m = report["machine"]
    report = {**report, "benchmarks": dict(report["benchmarks"])}
    if "P4b" in report["benchmarks"] or "P7" in report["benchmarks"]:
        report["benchmarks"]["P7b"] = p7b(report["benchmarks"])
    out = [
        "# Benchmarks at fleet scale",
        "",
        "Generated by `make bench` (`scripts/bench.sh` → `python -m bench.run`) from "
        "`bench/results.json`; `make bench-quick` runs the same code at tiny sizes as a smoke test "
        "(`fleet/tests/test_bench_smoke.py`) and never writes here. " + _targets(report["benchmarks"]),
        "",
        f"- **Date:** {report['date']}",
        f"- **Commit:** `{report['commit']}` (the figures were measured on this commit, except where a "
        "benchmark's note says it was re-measured later on its own"
        + (f"; HEAD moved to `{report['commit_at_end']}` during the run, and each benchmark ran on the code "
           f"checked out when it started: {report['commit_note']}" if report.get("commit_at_end") else "")
        + ")",
        f"- **Machine:** {m['nproc']} cores ({m['cpu']}), {m['memory_gb']} GB RAM, PostgreSQL "
        f"{m['postgresql']}, Python {m['python']}, {m['os']}; load average at start "
        f"{', '.join(str(x) for x in m['load_average_at_start'])}",
        f"- **Full run:** {report['total_seconds'] / 60:.1f} minutes"
        + (f"; **failed:** {', '.join(report['failed'])}" if report["failed"] else ""),
        *(f"- **Re-run:** {', '.join(rerun['ids'])} on commit `{rerun['commit']}`, {rerun['date']} "
          f"({rerun['total_seconds'] / 60:.1f} minutes, load average at start "
          f"{', '.join(str(x) for x in rerun['load_average_at_start'])}): "
          f"{'their' if len(rerun['ids']) > 1 else 'its'} figures below come from that run, the others' from "
          "the full run" for rerun in report.get("reruns", ())),
        "",
        "The machine is shared with other work and noisy: absolute times move by tens of percent "
        "between runs. Ratios are always measured within one run, against a baseline taken in the "
        "same process at the same moment.",
        "",
        "## Summary",
        "",
    ]
    rows = []
    for key in sorted(report["benchmarks"], key=_order):
        result = report["benchmarks"][key]
        rows.append((result["id"], result["title"], result["measured"], result["compare"], result["target"],
                     "**met**" if result["met"] else "**MISSED**"))
    out += [_table(rows, ("id", "what", "measured", "compared with (same run)", "target", "")), ""]
    out += [_changes(report["benchmarks"])]
    for key in sorted(report["benchmarks"], key=_order):
        result = report["benchmarks"][key]
        out += [f"## {result['id']}: {result['title']}", ""]
        out += [f"**{'Met' if result['met'] else 'Missed'}** — {result['measured']}. Target: {result['target']}.", ""]
        if result.get("note"):
            out += [f"*Note:* {result['note']}", ""]
        if result.get("rerun"):
            out += [f"*Re-run* on commit `{result['rerun']['commit']}`, {result['rerun']['date']} (see the header).", ""]
        analysis = ANALYSIS.get(result["id"], ())
        for part in analysis if isinstance(analysis, tuple) else (analysis,):
            out += [part(result) if callable(part) else part, ""]
        if result["id"] == "P3" and "P3-org" in ANALYSIS:
            out += [ANALYSIS["P3-org"], ""]
        organization = result["figures"].get("organization_by_account_regions")
        if organization:
            out += _organization_table(organization)
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
