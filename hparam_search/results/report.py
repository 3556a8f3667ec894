"""The HTML report of ``hparam-search plot``: one self-contained page a user can send to a
colleague. A summary of the study (trials by state, wall time, the best trial and the whole
config it ran with, or the Pareto front, and how the search was run), the top trials as a
table, and the plots in a grid, each with a heading and a sentence on how to read it.

``gather`` reads what the page needs from a study; ``render_report`` turns plain data and
already-made plotly figures into one HTML string that loads nothing remote: plotly.js is
inlined once, the style sheet is inline, fonts are the system's own. Every value that comes
from the user (names, parameters, config, command) goes through ``html.escape``.
"""

from __future__ import annotations

import datetime
import math
import re
from html import escape
from pathlib import Path
from typing import Any

from ..storage import STATES
from .reader import StudyReader

TOP_N = 10
FONT_STACK = ('system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, '
              '"Noto Sans", "Liberation Sans", sans-serif')
MONO_STACK = ('ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", '
              '"DejaVu Sans Mono", monospace')
# Restrained: one accent and greys; figures keep Optuna's own colour scales.
COLORWAY = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#64748b"]

# Per kind of chart: (heading, how to read it, takes the whole row). A ``{target}`` in the
# text is the objective the plot shows.
CHARTS: dict[str, tuple[str, str, bool]] = {
    "pareto_front": (
        "The trade-off between the objectives",
        ("One dot per completed trial. The red dots form the Pareto front: no other trial is "
         "better on every objective at once, so picking among them is a choice of trade-off. "
         "Hover a dot for its trial number and parameters."), False),
    "optimization_history": (
        "How the best value improved",
        ("One dot per completed trial, in the order the trials ran, with {target} up; the "
         "line is the best value found so far. A line that flattens early means later trials "
         "found little better."), False),
    # With several objectives Optuna draws no best-so-far line.
    "optimization_history_multi": (
        "How the first objective evolved",
        ("One dot per completed trial, in the order the trials ran, with {target} up. Dots "
         "that sink over time show the search homing in."), False),
    "intermediate_values": (
        "How each trial progressed",
        ("The values each trial reported while it ran, one line per trial. Lines that stop "
         "early belong to trials that were pruned."), False),
    "param_importances": (
        "Which parameters mattered",
        ("How much of the variation in {target} each parameter explains (the bars add up to "
         "1). Long bars are worth tuning further; short ones barely mattered in the range "
         "searched."), False),
    "contour": (
        "How the two most important parameters interact",
        ("{target} estimated over the two most important parameters, the dots being the "
         "trials that ran. A compact region of good values shows where to search next; "
         "stripes show that one parameter matters more than the other."), False),
    "slice": (
        "Each parameter against the objective",
        ("One dot per completed trial: the parameter's value across, {target} up; the "
         "colour shows when the trial ran (the darker, the later). Good values that cluster "
         "show where a parameter is best; a flat cloud shows that it hardly matters."), True),
    "parallel_coordinate": (
        "Every trial across all parameters",
        ("Each line is one completed trial, going through its value of every parameter and "
         "coloured by {target}. Follow the lines of the best colour to see which "
         "combinations work."), True),
}

CSS = """
:root { --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --bg: #f5f6f8; --card: #ffffff;
        --accent: #2563eb; --soft: #f8fafc; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg); font-family: __FONT__;
       font-size: 14px; line-height: 1.5; }
main { max-width: 1200px; margin: 0 auto; padding: 32px 24px 40px; }
header.top { margin-bottom: 20px; }
.eyebrow { color: var(--accent); font-size: 12px; font-weight: 600; letter-spacing: .06em;
           text-transform: uppercase; }
h1 { font-size: 26px; line-height: 1.25; margin: 4px 0 6px; word-break: break-word; }
h2 { font-size: 16px; margin: 0 0 4px; }
h3 { font-size: 13px; margin: 14px 0 6px; color: var(--muted); font-weight: 600; }
.sub { color: var(--muted); margin: 0; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(210px, 1fr));
         gap: 12px; margin-bottom: 16px; }
.tile, .card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
.tile { padding: 14px 16px; }
.tile .label { color: var(--muted); font-size: 12px; font-weight: 600; letter-spacing: .04em;
               text-transform: uppercase; }
.tile .value { font-size: 22px; font-weight: 600; margin-top: 2px;
               font-variant-numeric: tabular-nums; }
.tile .value.small { font-size: 17px; padding-top: 4px; }
.tile .note { color: var(--muted); font-size: 13px; margin-top: 4px; }
.card { padding: 18px 20px; min-width: 0; }
.caption { color: var(--muted); font-size: 13px; margin: 0 0 12px; max-width: 75ch; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px;
        grid-auto-flow: row dense; margin-bottom: 16px; }
.wide { grid-column: 1 / -1; }
.block { margin-bottom: 16px; }
.subgrid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px 16px; }
.subgrid h3 { margin: 4px 0 0; }
@media (max-width: 900px) {
  main { padding: 20px 12px 32px; }
  .grid, .subgrid { grid-template-columns: minmax(0, 1fr); }
}
.chips { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
.chip { border-radius: 999px; font-size: 12px; padding: 1px 9px; background: #eef2f7;
        color: #334155; white-space: nowrap; }
.state-COMPLETE { background: #e8f5ee; color: #166534; }
.state-PRUNED { background: #fdf3e1; color: #92400e; }
.state-FAIL { background: #fdecec; color: #991b1b; }
.state-RUNNING { background: #e8effd; color: #1e40af; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 6px 10px; text-align: left;
         white-space: nowrap; }
th { color: var(--muted); font-size: 12px; font-weight: 600; }
td.num, th.num { text-align: right; }
#top tbody tr:first-child td { background: #f3f7ff; }  /* the best trial */
tbody tr:last-child td { border-bottom: 0; }
dl.meta { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 6px 16px;
          margin: 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
code, pre { font-family: __MONO__; font-size: 12.5px; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; margin: 0;
      overflow: auto; padding: 12px 14px; line-height: 1.45; max-height: 420px; }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; text-align: center; }
""".replace("__FONT__", FONT_STACK).replace("__MONO__", MONO_STACK)


def gather(reader: StudyReader, top: int = TOP_N) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What the report shows of a study: the summary ``show`` prints (plus the value columns,
    the storage and the best trial's whole config) and the ``top`` best completed trials as
    rows of number, value(s), parameters, duration and state."""
    from ..config import display_path
    from ..storage import describe
    from .tables import rows, summary, trial_config

    where = describe(reader.url)
    info = summary(reader, storage=display_path(Path(where)) if where.startswith("/") else where,
                   value_columns=reader.value_columns())
    best = info["best"]
    if isinstance(best, dict):
        info["best_config"] = trial_config(best["record"], info["runs"])
    records = reader.ranked(top) if info["states"].get("COMPLETE") else []
    params = sorted({p for r in records for p in r.params})
    table = []
    for row in rows(reader, records):
        table.append({"number": row["number"], **{c: row.get(c) for c in info["value_columns"]},
                      **{p: row.get(p) for p in params}, "duration_s": row["duration_s"],
                      "state": row["state"]})
    return info, table


def write_report(path: Path, study_name: str, info: dict[str, Any],
                 top_rows: list[dict[str, Any]], figures: list[tuple[str, Any]]) -> Path:
    """Write ``render_report``'s page to ``path``."""
    path.write_text(render_report(study_name, info, top_rows, figures), encoding="utf-8")
    return path


def render_report(study_name: str, info: dict[str, Any], top_rows: list[dict[str, Any]],
                  figures: list[tuple[str, Any]]) -> str:
    """The whole page. ``info`` is ``summary``'s dict (every key optional but ``directions``;
    ``gather`` adds ``value_columns``, ``storage`` and ``best_config``), ``top_rows`` the
    table's rows (their keys are its columns), ``figures`` ``(name, plotly figure)`` pairs
    named as ``plots.plot`` names its files (``slice_<param>`` for the slices)."""
    from .. import __version__

    directions = list(info.get("directions") or [])
    columns = list(info.get("value_columns") or
                   (["value"] if len(directions) == 1 else
                    [f"value_{i}" for i in range(len(directions))]))
    target = f"the objective ({columns[0]})" if len(directions) > 1 else "the objective"
    generated = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    where = f" · storage <code>{escape(str(info['storage']))}</code>" if info.get(
        "storage") else ""
    goal = "Goal: " + ", ".join(f"{d} {c}" for d, c in zip(directions, columns))
    body = [
        '<header class="top"><div class="eyebrow">Hyperparameter search report</div>',
        f"<h1>{escape(study_name)}</h1>",
        f'<p class="sub">{escape(goal)}{where}</p></header>',
        _tiles(info, columns),
        _details(info, columns),
        _top_table(top_rows, columns, directions),
        _charts(figures, target, multi=len(directions) > 1),
        (f"<footer>Made by hparam-search {escape(__version__)} on {generated}. This page is "
         "self-contained: it works offline and can be sent as one file.</footer>"),
    ]
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(study_name)} · hyperparameter search report</title>"
            f"<style>{CSS}</style></head>\n<body><main>{''.join(body)}</main></body></html>\n")


# -- summary ---------------------------------------------------------------------------------
def _tiles(info: dict[str, Any], columns: list[str]) -> str:
    from ..storage import format_counts

    states = info.get("states") or {}
    kinds = info.get("pruned_kinds") or {}
    chips = "".join(f'<span class="chip state-{s}">{escape(format_counts({s: states[s]}, kinds))}'
                    "</span>" for s in STATES if states.get(s))
    text = info.get("states_text") or format_counts(states, kinds)
    tiles = [_tile("Trials", escape(str(info.get("trials", sum(states.values())))),
                   f'<div class="chips" title="{escape(text)}">{chips}</div>' if chips else "")]
    best = info.get("best")
    if isinstance(best, dict):
        tiles.append(_tile(f"Best {columns[0]}", escape(_fmt(best.get("value"))),
                           f"trial #{escape(str(best['number']))}"))
    elif isinstance(best, list):
        tiles.append(_tile("Pareto front", f"{len(best)} trial{'s' * (len(best) != 1)}",
                           "no trial beats them on every objective"))
    elif "best" in info:
        tiles.append(_tile("Best", "–", "no trial completed yet"))
    if info.get("wall_s") is not None:
        tiles.append(_tile("Wall time", _duration(info["wall_s"]),
                           "first trial start to last finish"))
    if info.get("last_activity"):
        runs = info.get("runs") or []
        note = f"{len(runs)} runs" if len(runs) > 1 else ""
        tiles.append(_tile("Last activity", escape(str(info["last_activity"])), note,
                           small=True))
    return f'<section class="tiles">{"".join(tiles)}</section>'


def _tile(label: str, value: str, note: str = "", small: bool = False) -> str:
    """A summary tile; ``value`` and ``note`` are HTML (escaped by the caller)."""
    note = f'<div class="note">{note}</div>' if note else ""
    return (f'<div class="tile"><div class="label">{escape(label)}</div>'
            f'<div class="value{" small" if small else ""}">{value}</div>{note}</div>')


def _details(info: dict[str, Any], columns: list[str]) -> str:
    """The best trial (or the Pareto front) beside how the search was run."""
    cards: list[tuple[str, str]] = []  # (id, inner HTML)
    best = info.get("best")
    if isinstance(best, dict):
        params = "".join(f'<span class="chip">{escape(str(k))} = {escape(_fmt(v))}</span>'
                         for k, v in best.get("params", {}).items())
        parts = [f"<h2>Best trial: #{escape(str(best['number']))}</h2>",
                 (f'<p class="caption">It reached {escape(columns[0])} = '
                  f'{escape(_fmt(best.get("value")))}. Its parameters, then the whole config '
                  "it ran with (the fixed values plus these parameters), ready for "
                  "<code>train(config)</code> or to start a new search from.</p>")]
        if params:
            parts.append(f'<div class="chips">{params}</div>')
        if info.get("best_config") is not None:
            import yaml

            text = yaml.safe_dump(info["best_config"], sort_keys=False,
                                  allow_unicode=True).rstrip()
            parts.append(f'<h3>Full config</h3><pre class="config">{escape(text)}</pre>')
        cards.append(("best", "".join(parts)))
    elif isinstance(best, list) and best:
        cards.append(("pareto", _pareto(best, columns)))
    run = info.get("run")
    if run:
        cards.append(("run", _run(run, info.get("runs") or [])))
    wide = " wide" if len(cards) == 1 else ""  # alone, a card takes the whole row
    return "".join(['<div class="grid">', *(f'<section class="card{wide}" id="{ident}">'
                                           f"{inner}</section>" for ident, inner in cards),
                    "</div>"]) if cards else ""


def _pareto(front: list[dict[str, Any]], columns: list[str], limit: int = 50) -> str:
    """The Pareto front's trials, sorted by their values; at most ``limit`` of them."""
    front = sorted(front, key=lambda b: list(b.get("values") or []))
    params = sorted({p for b in front for p in b.get("params", {})})
    head = ["trial", *columns, *params]
    body = []
    for b in front[:limit]:
        values = list(b.get("values") or [])
        cells = [_td(b["number"])] + [_td(v) for v in values] + [
            _td(b.get("params", {}).get(p)) for p in params]
        body.append(f"<tr>{''.join(cells)}</tr>")
    numeric = set(range(1 + len(columns))) | {
        1 + len(columns) + i for i, p in enumerate(params)
        if all(_is_number(b.get("params", {}).get(p)) for b in front)}
    more = (f" The first {limit} are listed; <code>hparam-search show</code> lists them all."
            if len(front) > limit else "")
    return (f"<h2>Pareto front: {len(front)} trial{'s' * (len(front) != 1)}</h2>"
            '<p class="caption">With several objectives there is no single best trial: these '
            "are the trials no other trial beats on every objective, sorted by the first one. "
            f"<code>hparam-search trial STUDY NUMBER</code> prints one's whole config.{more}</p>"
            f"{_table(head, body, numeric=numeric)}")


def _run(run: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """The metadata the launcher stored for the (latest) run."""
    git = run.get("git") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (run.get("versions") or {}).items())
    commit = ""
    if git.get("commit"):
        commit = f"<code>{escape(str(git['commit']))}</code>" + (
            " (with uncommitted changes)" if git.get("dirty") else "")
    items = [("Started", escape(str(run.get("started") or "").replace("T", " ", 1))),
             ("Host", escape(str(run.get("host") or ""))),
             ("Python", escape(str(run.get("python") or ""))),
             ("Libraries", escape(versions)),
             ("Git commit", commit),
             ("Command", f"<code>{escape(str(run['command']))}</code>" if run.get("command")
              else ""),
             ("Script", f"<code>{escape(str(run['script']))}</code>" if run.get("script")
              else ""),
             ("Workers", escape(str(run.get("n_jobs") or "")) + (
                 f" ({escape(str(run['start_method']))})" if run.get("start_method") else ""))]
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items if v)
    which = (f"The latest of {len(runs)} runs (a resumed search adds one)." if len(runs) > 1
             else "Where, with what and from which command the search ran.")
    return (f'<h2>How the search was run</h2><p class="caption">{which}</p>'
            f'<dl class="meta">{rows}</dl>')


# -- top trials ------------------------------------------------------------------------------
def _top_table(top_rows: list[dict[str, Any]], columns: list[str], directions: list[str]
               ) -> str:
    if not top_rows:
        return ""
    keys = list(dict.fromkeys(k for row in top_rows for k in row))
    head = [_LABELS.get(k, k) for k in keys]
    body = ["<tr>" + "".join(_state_td(row[k]) if k == "state" else
                             _td(row.get(k), duration=k == "duration_s") for k in keys)
            + "</tr>" for row in top_rows]
    numeric = {i for i, k in enumerate(keys) if k == "number" or k in columns or
               k == "duration_s" or all(_is_number(r.get(k)) for r in top_rows)}
    order = ("lowest" if directions and directions[0] == "minimize" else "highest")
    by = f"{columns[0]}, {order} first" if len(directions) == 1 else (
        f"the first objective ({columns[0]}), {order} first")
    n = len(top_rows)
    title = f"The {n} best trials" if n > 1 else "The best trial"
    return (f'<section class="card block" id="top"><h2>{title}</h2>'
            f'<p class="caption">Completed trials ranked by {escape(by)}; the top row is the '
            "best. Durations are wall time per trial.</p>"
            f"{_table(head, body, numeric=numeric)}</section>")


_LABELS = {"number": "trial", "duration_s": "duration"}


def _table(head: list[str], body: list[str], numeric: set[int]) -> str:
    """A table of ready ``<tr>`` rows; the ``numeric`` columns' headers are right-aligned
    like their cells."""
    num = ' class="num"'
    th = "".join(f"<th{num if i in numeric else ''}>{escape(str(h))}</th>"
                 for i, h in enumerate(head))
    return (f'<div class="scroll"><table><thead><tr>{th}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _td(value: Any, duration: bool = False) -> str:
    text = _duration(value) if duration and _is_number(value) else _fmt(value)
    cls = ' class="num"' if _is_number(value) else ""
    return f"<td{cls}>{escape(text)}</td>"


def _state_td(state: Any) -> str:
    return f'<td><span class="chip state-{_ident(str(state))}">{escape(str(state))}</span></td>'


# -- plots -----------------------------------------------------------------------------------
def _charts(figures: list[tuple[str, Any]], target: str, multi: bool) -> str:
    """The plots as cards in CHARTS' order: the search over time, what mattered, then one
    parameter at a time and all of them together (the slices share one card)."""
    groups: dict[str, list[tuple[str, Any]]] = {}
    for name, figure in figures:
        groups.setdefault("slice" if name.startswith("slice_") else name, []).append(
            (name, figure))
    order = sorted(groups, key=lambda k: list(CHARTS).index(k) if k in CHARTS else len(CHARTS))
    cards: list[tuple[str, str, str, bool, str]] = []  # heading, caption, content, wide, id
    first = True
    for kind in order:
        text = f"{kind}_multi" if multi and f"{kind}_multi" in CHARTS else kind
        heading, caption, wide = CHARTS.get(text, (kind.replace("_", " ").capitalize(), "",
                                                   False))
        height = {"slice": 340, "parallel_coordinate": 460}.get(kind, 420)
        divs = []
        for name, figure in groups[kind]:
            div = _figure_html(figure, name, height, with_plotlyjs=first)
            first = False
            divs.append(f"<div><h3>{escape(name[len('slice_'):])}</h3>{div}</div>"
                        if kind == "slice" else div)
        content = (f'<div class="subgrid">{"".join(divs)}</div>' if len(divs) > 1 and
                   kind == "slice" else "".join(divs))
        cards.append((heading, caption.format(target=target), content, wide,
                      "slices" if kind == "slice" else kind))
    # A half-width card alone in its row takes the whole row rather than leave a hole.
    half = [i for i, card in enumerate(cards) if not card[3]]
    if len(half) % 2:
        cards[half[-1]] = (*cards[half[-1]][:3], True, cards[half[-1]][4])
    return f'<div class="grid charts">{"".join(_card(*card) for card in cards)}</div>'


def _card(heading: str, caption: str, content: str, wide: bool, name: str) -> str:
    caption = caption[:1].upper() + caption[1:]
    return (f'<section class="card{" wide" if wide else ""}" id="card-{_ident(name)}">'
            f"<h2>{escape(heading)}</h2>"
            f'<p class="caption">{escape(caption)}</p>{content}</section>')


def _figure_html(figure: Any, name: str, height: int, with_plotlyjs: bool) -> str:
    """One plotly figure as a div, in the page's style; plotly.js inlined with the first."""
    import plotly.graph_objects as go

    fig = go.Figure(figure)  # a copy: the caller's figure is left as it was
    fig.update_layout(template="plotly_white", title_text="", autosize=True, height=None,
                      width=None, colorway=COLORWAY,
                      font={"family": FONT_STACK, "size": 12, "color": "#374151"},
                      margin={"l": 56, "r": 24, "t": 24, "b": 48},
                      paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="#ffffff",
                      hoverlabel={"font_family": FONT_STACK},
                      modebar={"bgcolor": "rgba(255,255,255,0.8)", "color": "#9ca3af",
                               "activecolor": "#2563eb"},
                      legend={"font": {"size": 11}})
    return fig.to_html(full_html=False, include_plotlyjs=with_plotlyjs,
                       include_mathjax=False, div_id=f"plot-{_ident(name)}",
                       default_width="100%", default_height=f"{height}px",
                       config={"responsive": True, "displaylogo": False,
                               "toImageButtonOptions": {"format": "png", "scale": 2}})


def _ident(name: str) -> str:
    """``name`` as an HTML id that is also safe inside plotly's JavaScript string."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


# -- values ----------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _duration(seconds: Any) -> str:
    if not _is_number(seconds):
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"
