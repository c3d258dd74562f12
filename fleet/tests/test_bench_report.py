"""bench/report.py writes P3's and ORG's analysis from the run's figures, never from an old run's."""

import copy

from bench import report

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
