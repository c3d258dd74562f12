"""bench/report.py's generated analyses (P5b, P5c) say what their figures say."""

import copy

from bench import report

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
    text = report.GENERATED["P5c"]({"figures": {"runs": [ALONE, SHARED]}})
    assert "**98.8 %**" in text and "0 of 401 calls throttled" in text
    assert "**100.0 %** of the 3.50/s left" in text and "5 of 406 engine calls throttled (**1.23 %**" in text
    assert "2 of its 131 calls" in text and "9.96 and 12.35" in text
    assert text.count(": met.") == 2
    missed = copy.deepcopy(SHARED)
    missed.update(throttled_pct=7.4, met=False)
    text = report.GENERATED["P5c"]({"figures": {"runs": [ALONE, missed]}})
    assert "**7.40 %**" in text and text.count(": met.") == 1 and text.count(": missed.") == 1


def test_p5b_analysis_tabulates_every_point_and_names_the_limit_of_the_largest():
    curve = [point(4, 98.0, 40.0), point(8, 97.5, 55.0), point(16, 96.0, 75.0), point(32, 80.0, 97.0)]
    text = report.GENERATED["P5b"]({"figures": {"curve": curve}})
    assert all(f"| {n} | {250 * n:,} |" in text for n in (4, 8, 16, 32))
    rate = curve[-1]["theoretical_items_per_s"]
    assert f"asks for {rate:g} items/s" in text and f"{3.0 * rate / 1000:.2f} of a core" in text
    assert "The cores are the limit" in text and "80.0 % of theoretical" in text
    assert "*The pass point, 16 account/regions:* 96.0 %" in text and "failed: met." in text
    assert f"{7.0 * rate / 1000:.2f} |" in text  # cores needed: (3 + 4) CPU-ms per item at that rate
    assert f"the engine having {3.0 * curve[-1]['items_per_s'] / 1000:.2f} of a core" in text
    curve[-1] = point(32, 97.0, 60.0)
    assert "AWS's buckets, not the cores, set its pace" in report.GENERATED["P5b"]({"figures": {"curve": curve}})
