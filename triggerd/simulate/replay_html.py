"""`triggerd replay --html FILE`: the report as one self-contained page (inline CSS and SVG,
no script, no fetch), so it can be mailed, attached to a pull request or opened offline.

Per rule: the figures of every run (the table `text` prints), a timeline (the rule's arrivals
as a density strip, then one lane per run with a mark per trigger: actual, current,
candidates) and, with `--sweep`, the trade-off chart: retrains per day against data staleness
(p50 filled, p95 hollow), one point per swept value, with the current config and candidates
as squares. Every mark carries its data (`data-run`, `data-rule`, `data-at`, `data-value`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from html import escape

from triggerd.simulate.figures import Figures
from triggerd.simulate.replay_report import ROWS, Report, Run, seconds

WIDTH, LEFT, RIGHT = 960, 130, 20
LANE, BINS, MAX_MARKS = 26, 240, 5000
CHART_W, CHART_H, PAD = 520, 300, 50
Place = Callable[[float, float], tuple[float, float]]  # data units -> pixels

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24;max-width:1000px}
h1{font-size:20px} h2{font-size:17px;margin-top:32px;border-top:1px solid #ddd;padding-top:16px}
table{border-collapse:collapse;margin:8px 0} td,th{padding:2px 10px;text-align:right}
td:first-child,th:first-child{text-align:left} th{border-bottom:1px solid #999}
.muted{color:#666} svg{display:block;margin:8px 0}
.lane-label{font-size:12px;fill:#333} .axis{font-size:11px;fill:#666}
.density{fill:#7a8ca3} .trigger{stroke-width:2} .run-actual{stroke:#222;fill:#222}
.run-current{stroke:#1f6feb;fill:#1f6feb} .run-sweep{stroke:#1f6feb;fill:#1f6feb}
.run-candidate{stroke:#d9480f;fill:#d9480f}
.grid{stroke:#eee} .curve{fill:none;stroke:#1f6feb;stroke-width:1.5}
.p95{fill:#fff;stroke:#1f6feb;stroke-width:1.5} .none{fill:#fff;stroke:#c92a2a}
"""


def page(report: Report) -> str:
    title = f"triggerd replay {report.start:%Y-%m-%d} .. {report.until:%Y-%m-%d}"
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>{escape(title)}</h1>",
             f"<p>{report.count} arrival(s) from {escape(report.arrivals)}; jobs: "
             f"{escape(report.jobs)}.</p>"]
    for rule in report.rules:
        parts.append(_rule_section(report, rule))
    parts.append("</body></html>")
    return "\n".join(parts)


def _rule_section(report: Report, rule: str) -> str:
    runs = [r for r in report.runs if r.kind != "sweep" and rule in r.figures]
    out = [f"<section class=rule data-rule='{escape(rule, True)}'><h2>rule {escape(rule)}</h2>",
           _table(rule, runs), _timeline(report, rule, runs)]
    sweep = [r for r in report.run("sweep") if rule in r.figures]
    if sweep:
        out.append(_chart(report, rule, sweep, runs))
    out.append("</section>")
    return "\n".join(out)


def _table(rule: str, runs: list[Run]) -> str:
    head = "".join(f"<th>{escape(r.name)}</th>" for r in runs)
    rows = "".join(f"<tr><td>{escape(name)}</td>"
                   + "".join(f"<td>{escape(show(r.figures[rule]))}</td>" for r in runs)
                   + "</tr>" for name, show in ROWS)
    return f"<table><tr><th></th>{head}</tr>{rows}</table>"


def _x(report: Report, at: datetime) -> float:
    span = (report.until - report.start).total_seconds() or 1.0
    frac = (at - report.start).total_seconds() / span
    return LEFT + min(max(frac, 0.0), 1.0) * (WIDTH - LEFT - RIGHT)


def _timeline(report: Report, rule: str, runs: list[Run]) -> str:
    height = LANE * (len(runs) + 1) + 24
    out = [f"<svg class=timeline width={WIDTH} height={height} "
           f"viewBox='0 0 {WIDTH} {height}' role=img "
           f"aria-label='timeline of rule {escape(rule, True)}'>"]
    arrivals = _arrivals(report, rule)
    out.append(f"<text class=lane-label x=4 y={LANE - 8}>arrivals ({len(arrivals)})</text>")
    out += _density(report, arrivals)
    for i, run in enumerate(runs, 1):
        y = LANE * i
        facts = [f for f in run.result.triggers if f.rule == rule]
        out.append(f"<text class=lane-label x=4 y={y + LANE - 8}>{escape(run.name)} "
                   f"({len(facts)})</text>")
        for f in facts[:MAX_MARKS]:
            x = _x(report, f.at)
            out.append(f"<line class='trigger run-{run.kind}' data-run='{escape(run.name, True)}'"
                       f" data-rule='{escape(rule, True)}' data-at='{f.at.isoformat()}' "
                       f"x1={x:.1f} x2={x:.1f} y1={y + 4} y2={y + LANE - 4}>"
                       f"<title>{escape(run.name)}: {f.at.isoformat()} {escape(f.reason)} "
                       f"({len(f.events)} event(s))</title></line>")
        if len(facts) > MAX_MARKS:
            out.append(f"<text class=axis x={WIDTH - RIGHT} y={y + 12} text-anchor=end>"
                       f"first {MAX_MARKS} of {len(facts)} shown</text>")
    base = LANE * (len(runs) + 1) + 14
    for k in range(5):
        at = report.start + (report.until - report.start) * (k / 4)
        anchor = ("start", "middle", "middle", "middle", "end")[k]
        out.append(f"<text class=axis x={_x(report, at):.1f} y={base} text-anchor={anchor}>"
                   f"{at:%Y-%m-%d %H:%M}</text>")
    out.append("</svg>")
    return "\n".join(out)


def _arrivals(report: Report, rule: str) -> list[datetime]:
    """The rule's arrivals, as the current run saw them: consumed and still pending."""
    current = next((r for r in report.runs if r.kind == "current"), None)
    if current is None:
        return []
    times = [at for f in current.result.triggers if f.rule == rule for _e, at in f.events]
    return times + current.result.pending.get(rule, [])


def _density(report: Report, times: list[datetime]) -> list[str]:
    counts = [0] * BINS
    for at in times:
        i = int((_x(report, at) - LEFT) / (WIDTH - LEFT - RIGHT) * BINS)
        counts[min(max(i, 0), BINS - 1)] += 1
    top = max(counts, default=0) or 1
    step = (WIDTH - LEFT - RIGHT) / BINS
    out = []
    for i, n in enumerate(counts):
        if n:
            h = max(1.0, (LANE - 6) * n / top)
            out.append(f"<rect class=density data-count={n} x={LEFT + i * step:.1f} "
                       f"y={LANE - 3 - h:.1f} width={max(step - 0.5, 0.5):.1f} "
                       f"height={h:.1f}></rect>")
    return out


def _chart(report: Report, rule: str, sweep: list[Run], runs: list[Run]) -> str:
    """Retrains per day (x) against staleness (y, hours): the sweep's curve and the runs."""
    points = [(r, r.figures[rule]) for r in [*sweep, *runs] if r.kind != "actual"]
    xs = [f.retrains_per_day for _r, f in points]
    ys = [v / 3600 for _r, f in points for v in (f.staleness_p50, f.staleness_p95)
          if v is not None]
    x_top, y_top = _nice(max(xs, default=1.0)), _nice(max(ys, default=1.0))

    def at(x: float, y: float) -> tuple[float, float]:
        return (PAD + x / x_top * (CHART_W - 2 * PAD),
                CHART_H - PAD - y / y_top * (CHART_H - 2 * PAD))

    out = [f"<svg class=tradeoff data-rule='{escape(rule, True)}' width={CHART_W} "
           f"height={CHART_H} viewBox='0 0 {CHART_W} {CHART_H}' role=img "
           f"aria-label='retrains per day against staleness, rule {escape(rule, True)}'>"]
    for k in range(5):
        gx, gy = at(x_top * k / 4, 0)[0], at(0, y_top * k / 4)[1]
        out.append(f"<line class=grid x1={gx:.1f} x2={gx:.1f} y1={PAD} y2={CHART_H - PAD}>"
                   f"</line><text class=axis x={gx:.1f} y={CHART_H - PAD + 16} "
                   f"text-anchor=middle>{x_top * k / 4:g}</text>")
        out.append(f"<line class=grid x1={PAD} x2={CHART_W - PAD} y1={gy:.1f} y2={gy:.1f}>"
                   f"</line><text class=axis x={PAD - 6} y={gy + 4:.1f} text-anchor=end>"
                   f"{y_top * k / 4:g}</text>")
    out.append(f"<text class=axis x={CHART_W / 2} y={CHART_H - 8} text-anchor=middle>"
               f"retrains per day</text><text class=axis x=12 y={PAD - 16}>staleness (hours):"
               f" p50 filled, p95 hollow</text>")
    curve = [at(f.retrains_per_day, f.staleness_p50 / 3600) for _r, f in points[:len(sweep)]
             if f.staleness_p50 is not None]
    if len(curve) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in sorted(curve))
        out.append(f"<polyline class=curve points='{path}'></polyline>")
    for run, f in points:
        out += _marks(run, f, rule, at, y_top)
    out.append("</svg>")
    return "\n".join(out)


def _marks(run: Run, f: Figures, rule: str, place: Place, top: float) -> list[str]:
    label = run.name.partition("=")[2] if run.kind == "sweep" else run.name
    data = (f"data-run='{escape(run.name, True)}' data-rule='{escape(rule, True)}' "
            f"data-value='{escape(label, True)}' data-retrains-per-day='{f.retrains_per_day:.4f}'")
    tip = (f"<title>{escape(run.name)}: {f.retrains_per_day:.2f} retrains/day, staleness p50 "
           f"{seconds(f.staleness_p50)}, p95 {seconds(f.staleness_p95)}</title>")
    out = []
    for q, value in (("p50", f.staleness_p50), ("p95", f.staleness_p95)):
        if value is None and q == "p95":
            continue
        # no event served (no retrain started): drawn on the top edge, marked "none"
        x, y = place(f.retrains_per_day, top if value is None else value / 3600)
        cls = f"point {q} run-{run.kind}" + (" none" if value is None else "")
        if run.kind == "sweep":
            out.append(f"<circle class='{cls}' {data} cx={x:.1f} cy={y:.1f} r=5>{tip}</circle>")
        else:
            out.append(f"<rect class='{cls}' {data} x={x - 5:.1f} y={y - 5:.1f} width=10 "
                       f"height=10>{tip}</rect>")
        if q == "p50":
            text = label + (" (no retrain)" if value is None else "")
            out.append(f"<text class=axis x={x + 8:.1f} y={y - 6:.1f}>{escape(text)}</text>")
    return out


def _nice(top: float) -> float:
    """A round axis end at or above `top`."""
    if top <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(top))) / 10 if top >= 1 else 1.0
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= top:
            return step * magnitude
    return 10 * magnitude
