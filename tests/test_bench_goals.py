"""bench/goals.py: which measured runs meet issue 12's goals, and the table it prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench_goals", Path(__file__).resolve().parent.parent / "bench" / "goals.py")
assert _spec is not None and _spec.loader is not None
goals = importlib.util.module_from_spec(_spec)
sys.modules["bench_goals"] = goals  # dataclasses look their module up there
_spec.loader.exec_module(goals)

ROW_100K, ROW_60MS, ROW_10K, ROW_1M = goals.ROWS


def _ratio_run(ours: float, node: float) -> dict:
    return {"ratio": ours / node, "wall_rate": ours, "node_rate": node}


def test_a_ratio_row_is_met_at_its_goal_and_not_below_it() -> None:
    assert goals.met(ROW_100K, _ratio_run(4800, 800))  # exactly 6x
    assert not goals.met(ROW_100K, _ratio_run(4799, 800))
    assert goals.met(ROW_10K, _ratio_run(2400, 800))
    assert not goals.met(ROW_60MS, {"ratio": None, "wall_rate": 3000, "node_rate": None})


def test_the_memory_row_must_stay_below_its_limit() -> None:
    assert goals.met(ROW_1M, {"tree_mb": 249.9, "wall_rate": 3700})
    assert not goals.met(ROW_1M, {"tree_mb": 250.0, "wall_rate": 3700})


def test_politeness_needs_the_limit_kept_and_nothing_lost_or_sent_twice() -> None:
    base = {"offered_vs_limit_pct": 9.9, "lost": 0, "duplicated": 0, "throttled": 12}
    assert goals.polite(base)
    assert not goals.polite({**base, "offered_vs_limit_pct": 10.1})
    assert not goals.polite({**base, "lost": 1})
    assert not goals.polite({**base, "duplicated": 1})


def test_the_table_counts_met_runs_and_leads_repeats_with_their_median() -> None:
    runs = [_ratio_run(4000, 800), _ratio_run(5000, 800), _ratio_run(4900, 800)]
    lines = goals.table([(ROW_100K, "h2", runs), (ROW_1M, "h1", [{"tree_mb": 228.4,
                                                                   "wall_rate": 3729}])],
                        {"offered_vs_limit_pct": -0.8, "throttled": 229, "lost": 0,
                         "duplicated": 0})
    assert len(lines) == 4
    assert "2/3" in lines[1] and "median 6.12x" in lines[1] and "5.00x (4,000 vs 800/s)" in lines[1]
    assert "1/1" in lines[2] and "228 MB" in lines[2]
    assert "-0.8 % offered" in lines[3] and "1/1" in lines[3]
