"""The HTML report of `hparam-search plot`: one self-contained page with the study's summary,
the best trial's whole config (or the Pareto front), the top trials and the plots, checked
against the study itself and rendered by a real, offline browser."""

from __future__ import annotations

import html
import platform
import re
import socket
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import FIRST_TO_CLAIM, UserProject, open_study, two_studies
from tests.e2e.test_dashboard import ARTIFACTS, CHROMIUM_FLAGS, chromium
from tests.e2e.test_results import cli

# The second objective pulls x the other way, so the Pareto front has several trials; x > 4
# raises (PRUNED, as an error) and the first trial to see the marker kills itself (FAIL).
SCRIPT = FIRST_TO_CLAIM + '''
import os, signal
from hparam_search import hparam_search


@hparam_search(config_path="config.yaml", save_db_directory="./optuna_studies")
def train(config):
    if config.get("die_marker") and first_to_claim(config["die_marker"]):
        os.kill(os.getpid(), signal.SIGKILL)
    if config["x"] > 4:
        raise ValueError("x too large")
    if config.get("two"):
        return (config["x"] - 1) ** 2, (config["x"] + 1) ** 2 + config["y"]
    return (config["x"] - 1) ** 2 + config["y"]


if __name__ == "__main__":
    train()
'''
NOTE = "<b>fish & chips</b>"  # a fixed value the page must show as text, not as markup
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND"]  # any remote load would fail


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> UserProject:
    """A single-objective study with COMPLETE, PRUNED (error) and FAIL trials and more than
    ten completed, and a two-objective one, in a git repository; both plotted."""
    root = tmp_path_factory.mktemp("report") / "proj"
    root.mkdir()
    project = two_studies(root, SCRIPT, 15, "n_trials=10", note=NOTE)
    for study in ("exp_t", "exp_two"):
        result = cli("plot", study, "-o", str(root / "plots" / study), cwd=root)
        assert result.returncode == 0, result.stderr
    return project


def report(project: UserProject, study: str) -> str:
    return (project.root / "plots" / study / "report.html").read_text(encoding="utf-8")


class Tags(HTMLParser):
    """Every tag's attributes; script and style bodies are not parsed as tags."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attrs += [(tag, k, v or "") for k, v in attrs]


def section(page: str, ident: str) -> str:
    match = re.search(rf'<section class="card[^"]*" id="{ident}">(.*?)</section>', page, re.DOTALL)
    assert match, f"no section {ident}"
    return match.group(1)


def cells(part: str) -> list[list[str]]:
    """The body rows of the table in ``part``, as cell texts."""
    body = re.search(r"<tbody>(.*?)</tbody>", part, re.DOTALL).group(1)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in
             re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.DOTALL)]


def browse(browser: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, *CHROMIUM_FLAGS, *OFFLINE, f"--user-data-dir={profile}",
                           *extra, page.as_uri()], capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_report_loads_nothing_remote(made: UserProject) -> None:
    for study in ("exp_t", "exp_two"):
        page = report(made, study)
        tags = Tags()
        tags.feed(page)
        remote = [(t, k, v) for t, k, v in tags.attrs
                  if k in ("src", "href", "srcset", "poster", "data", "action")
                  and re.match(r"\s*(https?:)?//", v)]
        assert remote == []
        assert not any(t == "link" for t, _, _ in tags.attrs)  # no external style sheet
        style = re.search(r"<style>(.*?)</style>", page, re.DOTALL).group(1)
        assert "url(" not in style and "@import" not in style and "@font-face" not in style
        assert page.count("* plotly.js v") == 1  # plotly.js inlined once, not per plot


def test_the_summary_matches_the_study(made: UserProject) -> None:
    from hparam_search.results import StudyReader
    from hparam_search.storage import count_pruned_kinds, format_counts

    with open_study(f"sqlite:///{made.db()}", "exp_t") as study:
        trials = study.get_trials()
        best = study.best_trial
    with StudyReader(f"sqlite:///{made.db()}", "exp_t") as reader:
        runs = reader.runs()
    page = report(made, "exp_t")
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    assert counts["COMPLETE"] > 10 and counts["PRUNED"] >= 1 and counts["FAIL"] == 1
    kinds = count_pruned_kinds(trials)
    assert f'title="{html.escape(format_counts(counts, kinds))}"' in page
    chips = re.findall(r'<span class="chip state-(\w+)">([^<]*)</span>',
                       page.split('id="top"')[0])
    assert chips == [(s, format_counts({s: counts[s]}, kinds))
                     for s in ("COMPLETE", "PRUNED", "FAIL") if counts.get(s)]
    assert f'<div class="label">Trials</div><div class="value">{len(trials)}</div>' in page
    wall = (max(t.datetime_complete or t.datetime_start for t in trials)
            - min(t.datetime_start for t in trials)).total_seconds()
    shown = re.search(r'Wall time</div><div class="value">([\d.]+) s<', page)
    assert shown and abs(float(shown.group(1)) - wall) <= 0.51
    # The best trial: number, value, and the whole config it ran with.
    assert f"Best trial: #{best.number}</h2>" in page
    assert f'Best value</div><div class="value">{best.value:.6g}</div>' in page
    config = html.unescape(re.search(r'<pre class="config">(.*?)</pre>', page, re.DOTALL).group(1))
    expected = {k: v for k, v in yaml.safe_load(runs[-1]["config"]).items()
                if k != "sweep_parameters"}
    expected.update(best.params)
    assert yaml.safe_load(config) == expected
    assert html.escape(NOTE) in page and NOTE not in page
    # How it was run.
    run = section(page, "run")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=made.root, capture_output=True,
                            text=True, check=True).stdout.strip()
    import optuna

    for text in (socket.gethostname(), platform.python_version(), commit,
                 f"optuna {optuna.__version__}", str(made.script)):
        assert html.escape(text) in run
    assert re.search(r"<dt>Started</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</dd>", run)


def test_the_top_table_lists_the_ten_best_in_order(made: UserProject) -> None:
    with open_study(f"sqlite:///{made.db()}", "exp_t") as study:
        complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    top = sorted(complete, key=lambda t: t.value)[:10]
    page = report(made, "exp_t")
    part = section(page, "top")
    head = [html.unescape(h) for h in re.findall(r"<th(?: [^>]*)?>(.*?)</th>", part)]
    assert head == ["trial", "value", "x", "y", "duration", "state"]
    rows = cells(part)
    assert len(rows) == 10
    assert [int(r[0]) for r in rows] == [t.number for t in top]
    assert [r[1] for r in rows] == [f"{t.value:.6g}" for t in top]
    assert [r[2] for r in rows] == [f"{t.params['x']:.6g}" for t in top]
    assert all(r[4].endswith(" s") and r[5] == "COMPLETE" for r in rows)
    assert "The 10 best trials" in part


def test_a_browser_renders_the_report_offline(made: UserProject, tmp_path: Path) -> None:
    browser = chromium()
    page = made.root / "plots" / "exp_t" / "report.html"
    dom = browse(browser, page, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    ids = re.findall(r'<div id="(plot-[^"]+)" class="plotly-graph-div"', page.read_text())
    assert {"plot-optimization_history", "plot-param_importances", "plot-slice_x",
            "plot-slice_y", "plot-parallel_coordinate", "plot-contour"} <= set(ids)
    for ident in ids:  # plotly drew into every plot's div
        drawn = dom.stdout.split(f'id="{ident}"', 1)[1].split("<script", 1)[0]
        assert 'class="main-svg"' in drawn, ident
        assert "system-ui" in drawn and "Open Sans" not in drawn  # the page's own fonts
    assert re.search(r"body \{[^}]*font-family: system-ui[^;]*sans-serif;", dom.stdout)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    browse(browser, page, tmp_path / "profile", "--window-size=1280,2400",
           f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is None or len(colours) > 20  # a rendered page, not a blank one


def test_two_objectives_show_the_pareto_front(made: UserProject, tmp_path: Path) -> None:
    with open_study(f"sqlite:///{made.db('exp_two')}", "exp_two") as study:
        front = sorted(study.best_trials, key=lambda t: t.values)
    assert len(front) > 1
    page = report(made, "exp_two")
    assert "Best trial: #" not in page and '<pre class="config">' not in page
    part = section(page, "pareto")
    assert f"Pareto front: {len(front)} trials</h2>" in part
    rows = cells(part)
    assert [int(r[0]) for r in rows] == [t.number for t in front]
    assert [r[1:3] for r in rows] == [[f"{v:.6g}" for v in t.values] for t in front]
    assert '<th class="num">loss</th><th class="num">size</th>' in part
    assert "ranked by the first objective (loss)" in section(page, "top")
    browser = chromium()
    dom = browse(browser, made.root / "plots" / "exp_two" / "report.html",
                 tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    drawn = dom.stdout.split('id="plot-pareto_front"', 1)[1].split("<script", 1)[0]
    assert 'class="main-svg"' in drawn
