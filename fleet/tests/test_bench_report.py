"""docs/benchmarks.md says only what the figures say: the analyses of P10, P5b and P5c are written
from their figures, so a met run and a missed run must read differently and quote the run's own
numbers; P3's and ORG's, never from an old run's."""

import copy
import re

import pytest

from bench import report
from bench.report import ANALYSIS, render

FIGURES = {
    "account_regions": 2, "running_instances": 300, "stopped_instances": 10, "items_submitted": 290,
    "items_skipped_already_required": 20, "bucket_burst": 100, "bucket_refill_per_s": 5.0, "apply_delay_s": 3.0,
    "rate_headroom": 0.96, "rate_headroom_is_default": True, "request_s": 0.2, "bucket_limited_submit_s": 20.0,
    "target_bound_s": 26.0, "last_submit_s": 21.8, "compliant_s": 25.1, "batch_done_s": 25.9,
    "batch_done_after_compliant_s": 0.8, "batch_status_at_end": "done for now", "items_awaiting_start": 10,
    "modify_calls": 292, "modify_throttled": 0, "poll_interval_s": 0.25,
    "regions": [
        {"account_region": "740000000001/us-east-1", "items_submitted": 200, "bucket_s": 20.0,
         "first_submit_s": 0.9, "last_submit_s": 21.8},
        {"account_region": "740000000002/eu-west-1", "items_submitted": 90, "bucket_s": 0.0,
         "first_submit_s": 0.8, "last_submit_s": 7.0},
    ],
}


def result(**changes):
    figures = {**copy.deepcopy(FIGURES), **changes}
    return {"id": "P10", "title": "time to a compliant fleet", "figures": figures, "measured": "m", "compare": "c",
            "target": "t", "met": figures["compliant_s"] <= figures["target_bound_s"], "limits": "l"}


def test_met_run_says_met_with_its_margin_and_its_breakdown():
    text = ANALYSIS["P10"](result())
    assert text.startswith("**Met:")
    assert "25.1 s after the click, 0.9 s inside the bound of 26.0 s" in text
    assert "740000000001/us-east-1: 200 items" in text  # the largest account/region decides the bound
    # 0.9 s before the first call + 0.9 s beyond the bucket + 0.3 s after the apply delay = 2.1 s of 3 s.
    assert "The fleet was compliant 2.1 s after the bucket time plus the apply delay (23.0 s), where the bound " \
           "allows 3 s after it (0.9 s to spare): 0.9 s passed before the largest account/region's first call, the " \
           "calls from there to the last one for a running instance took 0.9 s more than the bucket time, and the " \
           "poll that saw the fleet compliant came 0.3 s after the end of that call's apply delay." in text
    assert "still sending the stopped" not in text
    assert "within the bound too" in text and "what-if" not in text


def test_missed_run_says_missed_and_by_how_much():
    text = ANALYSIS["P10"](result(compliant_s=27.5, batch_done_s=28.3))
    assert text.startswith("**Missed:")
    assert "1.5 s over the bound of 26.0 s" in text
    assert "compliant 4.5 s after the bucket time plus the apply delay (23.0 s), where the bound allows 3 s after " \
           "it (1.5 s over)" in text
    assert "beyond the bound too" in text


def test_the_stricter_bound_is_reported_from_its_own_figures():
    text = ANALYSIS["P10"](result(strict_bound_running_only_s=24.0, last_running_submit_s=19.8))
    assert "last running instance's call left at 19.8 s, the batch's last call (for 10 stopped instances) at 21.8 s" \
        in text
    assert "the bound would be 24.0 s, which this run misses by 1.1 s." in text
    # Running instances first: the breakdown follows the last running instance's call, not the batch's last.
    assert "the last one for a running instance took 1.1 s less than the bucket time" in text
    assert "came 2.3 s after the end of that call's apply delay" in text
    assert "compliant 5.3 s after the last call for a running instance" in text
    late = ANALYSIS["P10"](result(strict_bound_running_only_s=24.0, last_running_submit_s=19.8, last_submit_s=25.6))
    assert "the batch was still sending the stopped instances' calls until 25.6 s" in late
    assert "meets by 0.1 s." in ANALYSIS["P10"](result(strict_bound_running_only_s=25.2, last_running_submit_s=19.8))


def test_what_if_run_says_so_and_the_page_carries_the_analysis():
    text = ANALYSIS["P10"](result(rate_headroom=1.0, rate_headroom_is_default=False))
    assert "what-if run: the workers paced at 100% of AWS's refill" in text
    report = {"date": "d", "commit": "c", "machine": {"nproc": 2, "cpu": "x", "memory_gb": 1, "postgresql": "17",
                                                      "python": "3", "os": "linux", "load_average_at_start": [1]},
              "total_seconds": 60, "failed": [], "benchmarks": {"P10": result()}}
    page = render(report)
    assert "## P10: time to a compliant fleet" in page and ANALYSIS["P10"](result()) in page

ALONE = {"scenario": "alone", "time_scale": 1.0, "items": 400, "submit_span_s": 60.75, "engine_calls": 401,
         "engine_throttled": 0, "throttled_pct": 0.0, "failed": 0, "applied_or_pending": 400,
         "learned_rate_at_end": 5.0, "aws_rate": 5.0, "load_average_1m_at_start": 9.96, "theoretical_s": 60.0,
         "efficiency_pct": 98.8, "met": True}
SHARED = {"scenario": "shared with a second client at 30 %", "time_scale": 1.0, "items": 400,
          "submit_span_s": 87.14, "engine_calls": 406, "engine_throttled": 5, "throttled_pct": 1.23, "failed": 0,
          "applied_or_pending": 400, "learned_rate_at_end": 3.7, "aws_rate": 5.0, "load_average_1m_at_start": 12.35,
          "second_client_calls": 131, "second_client_throttled": 2, "second_client_errors": 0, "settled_rate": 3.5,
          "left_rate": 3.5, "settled_pct_of_left": 100.0, "met": True}


def point(pairs, efficiency, busy, engine_ms=3.0, simulator_ms=4.0):
    theoretical = 5.0 * pairs * 250 / 150  # 250 items per account/region: 100 at once, then 5/s
    return {"account_regions": pairs, "items": 250 * pairs, "theoretical_items_per_s": round(theoretical, 1),
            "items_per_s": round(theoretical * efficiency / 100, 1), "efficiency_pct": efficiency,
            "throttled_pct": 0.0, "failed": 0, "modify_calls": 250 * pairs + pairs,
            "engine_cpu_ms_per_item": engine_ms, "simulator_cpu_ms_per_item": simulator_ms,
            "machine_cpu_busy_pct": busy, "load_average_1m_at_start": 4.2}


def test_p5c_analysis_quotes_both_runs_and_each_verdict():
    text = report.ANALYSIS["P5c"]({"figures": {"runs": [ALONE, SHARED]}})
    assert "**98.8 %**" in text and "0 of 401 calls throttled" in text
    assert "**100.0 %** of the 3.50/s left" in text and "5 of 406 engine calls throttled (**1.23 %**" in text
    assert "2 of its 131 calls" in text and "9.96 and 12.35" in text
    assert text.count(": met.") == 2
    missed = copy.deepcopy(SHARED)
    missed.update(throttled_pct=7.4, met=False)
    text = report.ANALYSIS["P5c"]({"figures": {"runs": [ALONE, missed]}})
    assert "**7.40 %**" in text and text.count(": met.") == 1 and text.count(": missed.") == 1


def test_p5b_analysis_tabulates_every_point_and_names_the_limit_of_the_largest():
    curve = [point(4, 98.0, 40.0), point(8, 97.5, 55.0), point(16, 96.0, 75.0), point(32, 80.0, 97.0)]
    text = report.ANALYSIS["P5b"]({"figures": {"curve": curve}})
    assert all(f"| {n} | {250 * n:,} |" in text for n in (4, 8, 16, 32))
    rate = curve[-1]["theoretical_items_per_s"]
    assert f"asks for {rate:g} items/s" in text and f"{3.0 * rate / 1000:.2f} of a core" in text
    assert "The cores are the limit" in text and "80.0 % of theoretical" in text
    assert "*The pass point, 16 account/regions:* 96.0 %" in text and "failed: met." in text
    assert f"{7.0 * rate / 1000:.2f} |" in text  # cores needed: (3 + 4) CPU-ms per item at that rate
    assert f"the engine having {3.0 * curve[-1]['items_per_s'] / 1000:.2f} of a core" in text
    curve[-1] = point(32, 97.0, 60.0)
    assert "AWS's buckets, not the cores, set its pace" in report.ANALYSIS["P5b"]({"figures": {"curve": curve}})

PAGE = {"p50_ms": 40.0, "p95_ms": 60.0, "queries": 10, "db_ms_one_request": 3.0}


def _p3():
    def pages(overview_p50):
        return {"org overview: root (OUs as rows)": {**PAGE, "p50_ms": overview_p50, "p95_ms": 2 * overview_p50},
                "org list: OU filter": {**PAGE, "p50_ms": 55.5}}

    return {
        "id": "P3", "title": "t", "measured": "m", "compare": "—", "target": "t", "met": True, "limits": "l",
        "figures": {
            "by_size": {"100000": {"overview": {**PAGE, "p50_ms": 71.5}, "list": PAGE}},
            "load_s": {"100000": 9.5}, "posture_refresh_all_s": {"100000": 2.5},
            "organization_by_account_regions": {
                "3400": {"accounts": 200, "instances": 1_000_000, "load_s": 44.0, "posture_refresh_all_s": 61.0,
                         "pages": pages(87.25)},
            },
            "query_count_constant": True, "misses": [],
        },
    }


def _org(**changes):
    figures = {
        "member_accounts": 200, "account_regions": 3435, "workers": 2, "simulator_seed_s": 75.5, "worker_concurrency": 1, "discovery_s": 41.5,
        "discovery_changes": 200, "budget_s": 600.0, "completed": True, "synced": 3435, "sync_wall_s": 700.0,
        "sync_span_s": 690.5, "syncs_per_s": 4.97, "projected_all_s": None, "mean_sync_s": 0.39,
        "workers_busy_share": 0.97, "failed": 1, "failed_accounts": ["500000000002"],
        "failed_error_example": "AccessDenied: User: x is not authorized", "worker_peak_rss_mb": [410, 420],
    } | changes
    return {"id": "ORG", "title": "t", "measured": "m", "compare": "—", "target": "t", "met": True, "limits": "l",
            "figures": figures}


def test_p3_analysis_says_what_this_run_measured():
    text = report._p3_analysis(_p3())
    assert "overview (p50 71.5 ms" in text and "loaded in 9.5 s" in text
    assert "3,400 account/regions, 1,000,000 instances* (loaded in 44.0 s" in text
    assert "overview p50 87.25-87.25 ms, worst p95 174.5 ms" in text
    assert "constant across sizes; 0 page/size combinations over target." in text
    missed = _p3()
    missed["figures"]["query_count_constant"] = False
    missed["figures"]["misses"] = ["overview at 1,000,000: p50 120 ms, p95 300 ms"]
    text = report._p3_analysis(missed)
    assert "NOT constant" in text and "1 page/size combinations over target: overview at 1,000,000" in text


def test_org_analysis_from_figures_and_a_projection_is_called_one():
    text = report._org_analysis(_org())
    assert "3,435 account/regions of 200 member accounts (the simulator seeded the organization in 75.5 s) discovered in 41.5 s" in text
    assert "synced in 690.5 s" in text and "4.97 a second" in text and "500000000002" in text
    assert "each sync's own work was the limit" in text and "projected" not in text
    partial = report._org_analysis(_org(completed=False, synced=2900, projected_all_s=711, workers_busy_share=0.5))
    assert "2,900 of them synced in the 600 s budget" in partial and "about 711 s (projected, not measured)" in partial
    assert "busy only 0.5 of the span" in partial


def test_the_rendered_report_carries_the_generated_analysis():
    run = {"date": "d", "commit": "c", "quick": False, "total_seconds": 60.0, "failed": [],
           "machine": {"nproc": 2, "cpu": "x", "memory_gb": 1, "postgresql": "15", "python": "3", "os": "l",
                       "load_average_at_start": [1.0, 1.0, 1.0]},
           "benchmarks": {"P3": _p3(), "ORG": copy.deepcopy(_org())}}
    text = report.render(run)
    assert text.count("This run, page by page") == 1 and "discovered in 41.5 s" in text
    assert "749 s" not in text  # no figure from an earlier run's prose


# Every analysis, met and missed: the prose never claims the opposite verdict and quotes the run's figures.
MET_WORDS = re.compile(r"\bmet\b", re.IGNORECASE)
MISSED_WORDS = re.compile(r"\bmissed\b|\bMISSED\b", re.IGNORECASE)


def analysis(result):
    """The analysis prose render() writes for a result, every part of it."""
    parts = ANALYSIS.get(result["id"], ())
    texts = [part(result) if callable(part) else part for part in (parts if isinstance(parts, tuple) else (parts,))]
    if result["id"] == "P3":
        texts.append(ANALYSIS["P3-org"])
    return "\n\n".join(texts)


def bench(id, figures, met, **extra):
    return {"id": id, "title": "t", "measured": "m", "compare": "c", "target": "t", "met": met, "limits": "l",
            "figures": figures, **extra}


P1 = {"instances": 100000, "pages": 100, "upsert_instances_empty_table_s": 10.56,
      "upsert_instances_existing_rows_s": 14.57, "copy_s": 5.75, "bulk_create_path_empty_table_s": 28.04,
      "ratio_bulk_create_path_to_copy": 4.87, "dicts_to_rows_s": 1.22, "naive_orm_subset_instances": 5000,
      "naive_orm_subset_s": 24.78, "naive_orm_extrapolated_s": 495.6, "ratio_upsert_to_copy": 1.84,
      "ratio_upsert_with_conversion_to_copy_with_conversion": 1.51, "ratio_naive_to_upsert": 46.9}
P2 = {"instances": 5000, "rounds": 3, "first_sync_s": 21.83, "resync_s": [21.97, 21.67, 22.55],
      "raw_boto3_pagination_s": [20.91, 21.76, 21.48], "ratio_resync_to_raw_median": 1.023,
      "ratio_first_sync_to_raw_median": 1.016}
P4 = {"runs": [{"instances": 10000, "items": 9897, "queued": 3011, "skipped": 6135, "held": 751, "request_s": 0.337,
                "queries": 6},
               {"instances": 100000, "items": 98929, "queued": 30749, "skipped": 60638, "held": 7542,
                "request_s": 2.551, "queries": 6}], "query_count_constant": True,
      "shipped": {"instances": 100000, "request_s": 0.081, "queries": 6, "expanding": True, "inline_max": 10000}}
P5_RUN = {"time_scale": 1.0, "items": 1000, "account_regions": 4, "workers": 2, "worker_concurrency": 2,
          "submit_span_s": 30.4, "theoretical_s": 30.0, "items_per_s": 32.9, "theoretical_items_per_s": 33.3,
          "efficiency_pct": 98.7, "applied": 1000, "failed": 0, "stuck": 0, "modify_calls": 1004,
          "modify_throttled": 3, "throttled_pct": 0.3, "machine_cpu_busy_pct": 74.5, "engine_cpu_ms_per_item": 6.1,
          "simulator_cpu_ms_per_item": 4.2, "load_average_1m_at_start": 1.72}
P5_CAPACITY = {**P5_RUN, "time_scale": 20.0, "items": 2400, "submit_span_s": 41.8, "theoretical_s": 5.0,
               "items_per_s": 57.4, "theoretical_items_per_s": 480.0, "efficiency_pct": 12.0, "modify_calls": 2404,
               "modify_throttled": 0, "throttled_pct": 0.0, "machine_cpu_busy_pct": 89.5}
P8 = {"templates": 2000, "versions_per_template": 5, "groups": 1000, "rounds": 5, "first_sync_s": 37.1,
      "resync_s": [12.6, 9.3, 17.2, 12.1, 13.0], "raw_boto3_describe_s": [12.0, 10.5, 14.7, 11.8, 12.4],
      "ratio_resync_to_raw_median": 1.05}
P9 = {"instances": 10000, "gunicorn_workers": 3, "gunicorn_threads": 8, "flood_connections": 8, "lockout_delay_s": 1.0,
      "rounds": 4, "seconds_alone_and_flooded_per_round": 8.0, "failure_limit": 5,
      "baseline": {"requests": 549, "p50_ms": 50.1, "p90_ms": 109.2, "max_ms": 171.2},
      "during_flood": {"requests": 346, "p50_ms": 86.5, "p90_ms": 141.8, "max_ms": 352.1}, "ratio_p50": 1.73,
      "flood_answers": {"200": 4, "429": 249}, "flood_requests_per_second": 7.9,
      "without_lockout": {"baseline": {"requests": 52, "p50_ms": 135.6, "p90_ms": 169.8, "max_ms": 1128.3},
                          "during_flood": {"requests": 19, "p50_ms": 380.1, "p90_ms": 626.2, "max_ms": 752.0},
                          "ratio_p50": 2.8, "flood_answers": {"200": 10}}}


def _met_and_missed():
    """(met result, missed result) per benchmark id with an analysis, each missed one off target."""
    p3_missed = _p3()
    p3_missed.update(met=False)
    p3_missed["figures"].update(query_count_constant=False, misses=["list at 100,000: p50 140 ms"])
    p5_missed = copy.deepcopy(P5_RUN) | {"efficiency_pct": 84.0, "items_per_s": 28.0, "failed": 2}
    p5b_missed = [point(4, 98.0, 40.0), point(8, 97.5, 55.0), point(16, 91.0, 90.0), point(32, 70.0, 99.0)]
    p5c_missed = copy.deepcopy(ALONE) | {"efficiency_pct": 93.1, "throttled_pct": 3.5, "met": False}
    shared_missed = copy.deepcopy(SHARED) | {"failed": 4, "met": False}
    return {
        "P1": (bench("P1", P1, True),
               bench("P1", P1 | {"upsert_instances_empty_table_s": 20.01, "ratio_upsert_to_copy": 3.48}, False)),
        "P2": (bench("P2", P2, True),
               bench("P2", P2 | {"resync_s": [25.5, 26.1, 24.9], "ratio_resync_to_raw_median": 1.187}, False)),
        "P3": (_p3(), p3_missed),
        "P4": (bench("P4", P4, True),
               bench("P4", {"runs": [P4["runs"][0], P4["runs"][1] | {"request_s": 3.42, "queries": 9}],
                            "query_count_constant": False,
                            "shipped": P4["shipped"] | {"request_s": 3.1}}, False)),
        "P5": (bench("P5", {"runs": [P5_RUN, P5_CAPACITY]}, True, met_per_run=[True, False]),
               bench("P5", {"runs": [p5_missed, P5_CAPACITY]}, False, met_per_run=[False, False])),
        "P5b": (bench("P5b", {"curve": [point(4, 98.0, 40.0), point(8, 97.5, 55.0), point(16, 96.0, 75.0),
                                        point(32, 97.0, 60.0)]}, True),
                bench("P5b", {"curve": p5b_missed}, False)),
        "P5c": (bench("P5c", {"runs": [ALONE, SHARED]}, True), bench("P5c", {"runs": [p5c_missed, shared_missed]}, False)),
        "P8": (bench("P8", P8, True),
               bench("P8", P8 | {"resync_s": [16.0, 15.1, 17.2, 16.4, 15.9], "ratio_resync_to_raw_median": 1.32}, False)),
        "P9": (bench("P9", P9, True),
               bench("P9", P9 | {"during_flood": {"requests": 300, "p50_ms": 131.0, "p90_ms": 402.0, "max_ms": 961.0},
                                 "ratio_p50": 2.61}, False)),
        "P10": (result() | {"id": "P10"}, result(compliant_s=27.5, batch_done_s=28.3) | {"id": "P10"}),
        "ORG": (_org(failed=0), _org(completed=False, synced=2900, projected_all_s=711, workers_busy_share=0.5)
                | {"met": False}),
    }


@pytest.mark.parametrize("id", ["P1", "P2", "P3", "P4", "P5", "P5b", "P5c", "P8", "P9", "P10", "ORG"])
def test_no_analysis_claims_the_opposite_verdict(id):
    met, missed = _met_and_missed()[id]
    assert met["met"] and not missed["met"]
    assert not MISSED_WORDS.search(analysis(met)), analysis(met)
    assert not MET_WORDS.search(analysis(missed)), analysis(missed)


def test_no_hand_written_text_quotes_a_figure_of_an_old_run():
    hand = [part for parts in ANALYSIS.values() for part in (parts if isinstance(parts, tuple) else (parts,))
            if isinstance(part, str)]
    for stale in ("7.3", "17.1 s", "93.9", "1.73x", "2.55 s", "96 %", "Met at", "**Met", "1.05x", "2.58"):
        assert not any(stale in text for text in hand), stale


def test_p1_quotes_its_own_ratio_and_the_bulk_create_path():
    met, missed = _met_and_missed()["P1"]
    assert "**Met: `upsert_instances` wrote 100,000 instances (100 pages) into an empty table in 10.56 s, 1.84x " \
           "a plain COPY of the same rows (5.75 s" in analysis(met)
    assert "took 28.04 s (4.87x COPY)" in analysis(met) and "about 495.6 s for all of them" in analysis(met)
    assert "**Missed:" in analysis(missed) and "20.01 s, 3.48x" in analysis(missed)


def test_changes_quote_p1_from_the_run_and_no_older_figure():
    text = report._changes({"P1": bench("P1", P1 | {"bulk_create_path_empty_table_s": 30.5,
                                                     "ratio_bulk_create_path_to_copy": 5.3}, True)})
    assert "that path took 30.5 s for 100,000 instances, 5.3x a plain COPY of the same rows (5.75 s)" in text
    assert "7.3" not in text and "17.1" not in text and "96 %" not in text
    assert "P1 measures that path" in report._changes({})


def test_p2_p4_and_p8_follow_their_figures():
    met, missed = _met_and_missed()["P2"]
    assert "took 21.97 s against 21.48 s for raw boto3 pagination" in analysis(met)
    assert "(1.023x, medians of 3 alternating rounds" in analysis(met)
    assert "took 25.5 s against 21.48 s" in analysis(missed) and "1.187x" in analysis(missed)
    met, missed = _met_and_missed()["P4"]
    assert "**Met: 0.081 s at 100,000 instances as shipped (target ≤ 3 s; 6 queries, the items left to a worker " \
        "above 10,000)" in analysis(met) and "the same query count" in analysis(met)
    assert "Inline: 10,000 instances: 0.337 s" in analysis(met) and "100,000 instances: 2.551 s" in analysis(met)
    assert "about 26 s, over gunicorn's default 30 s timeout" not in analysis(met)
    assert "**Missed: 3.1 s at 100,000 instances as shipped" in analysis(missed)
    assert "grows with the selection" in analysis(missed)
    assert "about 34 s, over gunicorn's default 30 s timeout" in analysis(missed)
    met, missed = _met_and_missed()["P8"]
    assert "took 12.6 s against 12 s for the raw describes (1.05x, medians of 5 alternating rounds, 9.3-17.2 s" \
        in analysis(met)
    assert "**Missed:" in analysis(missed) and "took 16 s" in analysis(missed) and "1.32x" in analysis(missed)


def test_p5_says_each_runs_verdict_and_what_the_capacity_run_needs():
    met, missed = _met_and_missed()["P5"]
    text = analysis(met)
    assert "**98.7 % of the theoretical rate (32.9 of 33.3 items/s" in text and "3 of 1004 calls throttled" in text
    assert ": met** (target ≥ 90 %" in text and "fell short of the rate asked for" in text
    assert "At 6.1 CPU-ms per item the engine (workers + PostgreSQL) needs 0.20 of a core for AWS's 33.3 items/s: " \
           "AWS's buckets, not this machine's cores, set the pace" in text
    assert f"480 items/s would need {(6.1 + 4.2) * 480 / 1000:.1f} cores against the machine's 2" in text
    assert "**84.0 %" in analysis(missed) and "2 failed" in analysis(missed) and ": missed**" in analysis(missed)


def test_p9_quotes_the_flood_and_the_comparison_without_lockout():
    met, missed = _met_and_missed()["P9"]
    text = analysis(met)
    assert "from 50.1 ms alone to 86.5 ms during the flood (1.73x" in text and "worst request 352.1 ms" in text
    assert "answered 249 with 429 and 4 with 200" in text and "from 135.6 ms to 380.1 ms (2.8x)" in text
    assert "to 131 ms during the flood (2.61x" in analysis(missed)
    quick = bench("P9", {key: value for key, value in P9.items() if key != "without_lockout"} | {"rounds": 1}, True)
    assert "out of reach" not in analysis(quick) and "1 window of 8 s" in analysis(quick)


def test_the_intro_lists_every_issues_targets_from_the_run():
    run = {"P1": bench("P1", P1, True), "P3": _p3(), "P7": bench("P7", {}, True), "P10": result()}
    text = report._targets(run)
    assert text.startswith("Targets are from GitHub issue 7 (P1, P2: not in this run, P3, ")
    assert "GitHub issue 16 (ORG: not in this run, P3 at 3,400 account/regions)" in text
    assert "GitHub issue 15 (P8: not in this run)" in text and "GitHub issue 17 (P9: not in this run)" in text
    assert "P7b, measured in P7" in text and "P10)" in text and "P4b: not in this run" in text
    assert "no issue on record (P99)" in report._targets({"P99": bench("P99", {}, True)})


def test_a_merged_rerun_replaces_only_its_benchmarks_and_says_so():
    from bench.run import merged

    earlier = {"date": "d1", "commit": "full", "total_seconds": 60, "failed": ["p3_views", "p9_flood"],
               "machine": {"nproc": 2, "cpu": "x", "memory_gb": 1, "postgresql": "17", "python": "3", "os": "linux",
                           "load_average_at_start": [1]},
               "benchmarks": {"P10": result(), "P3": {"id": "P3", "old": True}}}
    rerun = {"date": "d2", "commit": "fix", "total_seconds": 120, "failed": [], "machine": {"load_average_at_start": [2]},
             "benchmarks": {"P3": {"id": "P3", "old": False}}}
    report = merged(copy.deepcopy(earlier), rerun, ["p3_views"])
    assert report["benchmarks"]["P3"] == {"id": "P3", "old": False, "rerun": {"date": "d2", "commit": "fix"}}
    assert report["benchmarks"]["P10"] == earlier["benchmarks"]["P10"] and report["commit"] == "full"
    assert report["failed"] == ["p9_flood"]
    assert report["reruns"] == [{"date": "d2", "commit": "fix", "total_seconds": 120, "failed": [], "ids": ["P3"],
                                 "load_average_at_start": [2]}]
