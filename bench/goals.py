"""Issue 12's goals in one table: every row measured, with its goal and whether it was met.

Runs ``bench/send_bench.py`` once per row (Node web-push 3.6.7 at c=64 in the same run,
on the same subscriptions and sink, for the ratio rows) and ``bench/politeness.py``, then
prints what each run printed and one table:

    .venv/bin/python bench/goals.py                  # every row, both sinks (~25 min)
    .venv/bin/python bench/goals.py --sink h2 --rows 100k,60ms

``--sink h1`` offers HTTP/1.1 only (the send benchmark's default), ``h2`` offers HTTP/2 by
ALPN as push services do, ``both`` runs each ratio row on each. The 1M row measures the
sender tree's peak RSS (no peer: Node would take ~25 min there). A ratio is a whole-process
rate (start-up included) against Node's in the same run; this machine is shared, so compare
rows of one table, and repeat (``--repeat``) before believing a ratio near its goal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Row:
    """One line of the issue's goal table."""

    key: str
    label: str
    args: tuple[str, ...]  # send_bench.py's arguments (the sink's protocol is added)
    metric: str  # "ratio": pushcli/Node wall rate, at least ``goal``; "tree_mb": below it
    goal: float
    per_sink: bool = True  # run once per sink protocol asked for


ROWS = (
    Row("100k", "100,000 subscribers, loopback", ("--subscribers", "100000"), "ratio", 6.0),
    Row("60ms", "30,000 subscribers, sink 60 ms away", ("--subscribers", "30000",
                                                         "--latency-ms", "60"), "ratio", 4.0),
    Row("10k", "10,000 subscribers, loopback", ("--subscribers", "10000"), "ratio", 3.0),
    Row("1m", "1,000,000 subscribers, peak RSS of the sender tree",
        ("--subscribers", "1000000", "--peer", "none"), "tree_mb", 250.0, per_sink=False),
)
POLITENESS_GOAL_PCT = 10.0  # offered at most 10 % over the sink's limit


def met(row: Row, figures: dict) -> bool:
    """Whether one run's figures meet the row's goal."""
    if row.metric == "ratio":
        return figures.get("ratio") is not None and figures["ratio"] >= row.goal
    return figures[row.metric] < row.goal


def polite(figures: dict) -> bool:
    """The politeness goal: at most +10 % over the limit, nothing lost or sent twice."""
    return (figures["offered_vs_limit_pct"] <= POLITENESS_GOAL_PCT
            and figures["lost"] == 0 and figures["duplicated"] == 0)


def describe(row: Row, runs: list[dict]) -> str:
    """The figure column: each run's value (median first when repeated)."""
    if row.metric == "ratio":
        values = [f"{r['ratio']:.2f}x ({r['wall_rate']:,.0f} vs {r['node_rate']:,.0f}/s)"
                  if r.get("ratio") is not None else "no peer" for r in runs]
        ratios = [r["ratio"] for r in runs if r.get("ratio") is not None]
        head = f"median {statistics.median(ratios):.2f}x; " if len(ratios) > 1 else ""
    else:
        values = [f"{r['tree_mb']:.0f} MB ({r['wall_rate']:,.0f}/s)" for r in runs]
        head = ""
    return head + ", ".join(values)


def table(results: list[tuple[Row, str, list[dict]]], politeness: dict | None) -> list[str]:
    """The goal table's lines: case, sink, measured, goal, met (in how many runs)."""
    lines = [f"{'case':<52} {'sink':<6} {'goal':<9} {'met':<7} measured"]
    for row, sink, runs in results:
        goal = f">= {row.goal:g}x" if row.metric == "ratio" else f"< {row.goal:g} MB"
        hits = sum(met(row, r) for r in runs)
        lines.append(f"{row.label:<52} {sink:<6} {goal:<9} {f'{hits}/{len(runs)}':<7} "
                     f"{describe(row, runs)}")
    if politeness is not None:
        lines.append(
            f"{'politeness: 1,000/s allowed, 60 ms, 429 above it':<52} {'h1':<6} "
            f"{'<= +10 %':<9} {f'{int(polite(politeness))}/1':<7} "
            f"{politeness['offered_vs_limit_pct']:+.1f} % offered, "
            f"{politeness['throttled']:,} answered 429, lost {politeness['lost']}, "
            f"duplicated {politeness['duplicated']}")
    return lines


def run(script: str, args: list[str], out: Path) -> dict:
    """Run a benchmark script, showing its output; its figures (it writes them to ``out``)."""
    cmd = [sys.executable, str(HERE / script), *args, "--figures", str(out)]
    print("$ " + " ".join(cmd[1:]), flush=True)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0:
        sys.exit(f"{script} exited {proc.returncode}")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="100k,60ms,10k,1m,politeness",
                    help="which rows, comma-separated (default: all): "
                    + ", ".join(r.key for r in ROWS) + ", politeness")
    ap.add_argument("--sink", choices=["h1", "h2", "both"], default="both",
                    help="the sink offers HTTP/1.1 only, HTTP/2 by ALPN, or each in turn")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each ratio row")
    args = ap.parse_args()
    wanted = {k.strip() for k in args.rows.split(",") if k.strip()}
    unknown = wanted - {r.key for r in ROWS} - {"politeness"}
    if unknown:
        ap.error(f"unknown rows: {', '.join(sorted(unknown))}")
    sinks = ["h1", "h2"] if args.sink == "both" else [args.sink]
    results: list[tuple[Row, str, list[dict]]] = []
    politeness: dict | None = None
    with tempfile.TemporaryDirectory(prefix="pushcli-goals-") as tmp:
        out = Path(tmp) / "figures.json"
        for row in ROWS:
            if row.key not in wanted:
                continue
            for sink in sinks if row.per_sink else sinks[:1]:
                extra = ["--http2"] if sink == "h2" else []
                repeat = args.repeat if row.metric == "ratio" else 1
                runs = [run("send_bench.py", [*row.args, *extra], out) for _ in range(repeat)]
                results.append((row, sink, runs))
        if "politeness" in wanted:
            politeness = run("politeness.py", [], out)
    print()
    print("\n".join(table(results, politeness)))


if __name__ == "__main__":
    main()
