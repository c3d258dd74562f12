"""docs/benchmarks.md says only what the figures say: P10's analysis is written from its figures,
so a met run and a missed run must read differently and quote the run's own numbers."""

import copy

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
