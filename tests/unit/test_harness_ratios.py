"""benchmarks/harness_ratios.py: pairs of harness runs, the median ratio, and its exit status."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "harness_ratios.py"


@pytest.fixture(scope="module")
def ratios() -> Any:
    spec = importlib.util.spec_from_file_location("harness_ratios", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(peer: str, n_jobs: int, trials_per_s: float, recorded: int = 300) -> dict[str, Any]:
    return {"peer": peer, "label": f"W1 trivial n_jobs={n_jobs}", "n_jobs": n_jobs, "ok": True,
            "n_recorded": recorded, "n_trials_requested": 300,
            "trials_per_s_wall": trials_per_s}


def write(tmp_path: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"rows": rows}))
    return path


def interleaved(project: list[float], journal: list[float], *, journal_first: bool = False,
                recorded: int = 300) -> list[dict[str, Any]]:
    rows = []
    for mine, theirs in zip(project, journal):
        pair = [row("project", 1, mine, recorded), row("optuna-journal", 1, theirs)]
        rows += pair[::-1] if journal_first else pair
    return rows


def test_pairs_in_run_order_and_the_median_of_their_ratios(ratios: Any) -> None:
    rows = interleaved([200, 90, 300], [100, 100, 100], journal_first=True)
    rows.append(row("project", 2, 50))  # a setting the other peer did not run: no line
    [line] = ratios.summarise(ratios.pair_rows(rows, "project", "optuna-journal"))
    assert line["ratios"] == [2.0, 0.9, 3.0]
    assert (line["median_ratio"], line["worst_ratio"], line["pairs"]) == (2.0, 0.9, 3)
    assert line["all_exact"] is True


def test_exit_status_follows_the_medians_and_the_counts(ratios: Any, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    ahead = write(tmp_path, "ahead.json", interleaved([120, 90, 110], [100, 100, 100]))
    behind = write(tmp_path, "behind.json", interleaved([120, 90, 95], [100, 100, 100]))
    inexact = write(tmp_path, "inexact.json", interleaved([120], [100], recorded=299))
    none = write(tmp_path, "none.json", [row("project", 1, 100)])
    summary = tmp_path / "summary.json"
    assert ratios.main([str(ahead), "--json", str(summary)]) == 0
    assert "| 1 | W1 trivial n_jobs=1 | 3 | 110 | 100 | 1.10x | 0.90x |" in capsys.readouterr().out
    assert json.loads(summary.read_text())["invocations"][0]["lines"][0]["median_ratio"] == 1.1
    assert ratios.main([str(ahead), str(behind)]) == 1  # one invocation's median is 0.95x
    assert ratios.main([str(inexact)]) == 1
    assert ratios.main([str(none)]) == 2
