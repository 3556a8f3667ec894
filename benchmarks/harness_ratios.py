"""Pairs of runs from the shared harness's results: this launcher (`project`) against another
peer (raw Optuna's journal file by default), run by run, with the median ratio per setting.

The harness runs the peers spec by spec, so a spec listed several times gives interleaved
pairs in one invocation. On a machine whose speed drifts, one pair can fall either way; the
median of several interleaved pairs is the figure a target is checked against, and the worst
pair is shown beside it.

    benchmarks/run_harness.sh --peers project,optuna-journal --workloads W1 \\
        --n-jobs W1=1,2,1,2,1,2,1,2,1,2
    python benchmarks/harness_ratios.py benchmarks/results/harness.json [more.json ...]

Exit status 1 when a median ratio is below 1 or a run recorded another count than requested.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def pair_rows(rows: list[dict[str, Any]], peer: str, against: str) -> dict[str, list[tuple]]:
    """Per label, the (peer row, reference row) pairs in the order the harness ran them."""
    by_label: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_label[(row["label"], row["peer"])].append(row)
    pairs: dict[str, list[tuple]] = {}
    for label in dict.fromkeys(row["label"] for row in rows):
        mine, theirs = by_label.get((label, peer), []), by_label.get((label, against), [])
        if mine and theirs:
            pairs[label] = list(zip(mine, theirs))
    return pairs


def exact(row: dict[str, Any]) -> bool:
    return bool(row["ok"]) and row["n_recorded"] == row["n_trials_requested"]


def summarise(pairs: dict[str, list[tuple]]) -> list[dict[str, Any]]:
    lines = []
    for label, runs in pairs.items():
        ratios = [m["trials_per_s_wall"] / t["trials_per_s_wall"] for m, t in runs]
        lines.append({
            "label": label,
            "pairs": len(runs),
            "ratios": [round(r, 3) for r in ratios],
            "median_ratio": round(statistics.median(ratios), 3),
            "worst_ratio": round(min(ratios), 3),
            "median_trials_per_s": round(statistics.median(m["trials_per_s_wall"] for m, _ in runs), 1),
            "reference_median_trials_per_s": round(
                statistics.median(t["trials_per_s_wall"] for _, t in runs), 1),
            "all_exact": all(exact(m) for m, _ in runs),
        })
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+",
                        help="the harness's results JSON (its --out); several: one line each")
    parser.add_argument("--peer", default="project")
    parser.add_argument("--against", default="optuna-journal")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)

    invocations = []
    for path in args.results:
        rows = json.loads(path.read_text())["rows"]
        lines = summarise(pair_rows(rows, args.peer, args.against))
        if not lines:
            print(f"no runs of both {args.peer} and {args.against} in {path}", file=sys.stderr)
            return 2
        invocations.append({"source": str(path), "lines": lines})
    print(f"| invocation | run | pairs | {args.peer} trials/s (median) | {args.against} trials/s "
          "(median) | ratio, median | ratio, worst pair | every ratio | exact counts |")
    print("|---|---|---|---|---|---|---|---|---|")
    for number, invocation in enumerate(invocations, 1):
        for line in invocation["lines"]:
            print(f"| {number} | {line['label']} | {line['pairs']} "
                  f"| {line['median_trials_per_s']} | {line['reference_median_trials_per_s']} "
                  f"| {line['median_ratio']:.2f}x | {line['worst_ratio']:.2f}x "
                  f"| {', '.join(f'{r:.2f}' for r in line['ratios'])} "
                  f"| {'yes' if line['all_exact'] else 'NO'} |")
    if args.json:
        args.json.write_text(json.dumps({"peer": args.peer, "against": args.against,
                                         "invocations": invocations}, indent=1) + "\n")
    met = all(line["median_ratio"] >= 1 and line["all_exact"]
              for invocation in invocations for line in invocation["lines"])
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
