"""Render a :class:`~workers.report.data.ReportData` as one self-contained HTML document.

The page is the Jinja2 template ``templates/report.html.j2`` with autoescaping on: every string a
user controls (file names, error texts, sources, pipeline values) is escaped by the template, never
by hand. It references nothing outside itself: images are ``data:`` URIs, charts are inline SVG
(:mod:`~workers.report.charts`), CSS is inline, there is no JavaScript, and a
Content-Security-Policy forbids fetching anything.
"""

from __future__ import annotations

import secrets
from functools import cache

import jinja2
from markupsafe import Markup

from workers.report.charts import Bar, bar_chart, curve_chart, line_chart
from workers.report.data import ReportData
from workers.report.labels import (
    cpu_stage_caption,
    fmt_bytes,
    fmt_db,
    fmt_rate,
    fmt_s,
    fmt_time,
    settings_rows,
    stage_label,
    training_rows,
    without_paths,
)

DISPLAY_WIDTH = 256  # CSS width of every image panel
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#222}
h1{font-size:21px;margin-bottom:4px} h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:0 0 6px;font-weight:600} h3.chart{margin-top:14px}
table{border-collapse:collapse} th,td{padding:2px 14px 2px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
.name,code{font-family:ui-monospace,monospace;word-break:break-all}
.image{border-top:1px solid #eee;padding:14px 0}
.panels{display:flex;flex-wrap:wrap;gap:10px;margin-bottom:8px}
figure{margin:0;width:@wpx} figure img{width:@wpx;height:auto;display:block;background:#eee}
figcaption{font-size:12px;color:#666}
img.px{image-rendering:pixelated}
.missing{width:@wpx;height:80px;display:flex;align-items:center;justify-content:center;
  background:#f3f3f3;color:#888;font-size:12px;text-align:center}
.failed{color:#b00020} .note{color:#666;font-size:12px}
.counts td{padding-right:28px;font-size:16px}
svg{background:#fafafa;border:1px solid #eee} svg text{font:11px system-ui,sans-serif;fill:#444}
svg text.axis{font-weight:600;fill:#222} svg text.value{font-size:10px;fill:#222}
.gain{font-weight:600} .worse{color:#b00020}
""".replace("@w", str(DISPLAY_WIDTH))


ONE_ROW = 5  # panels that fit side by side in the page's width


def panels(data: ReportData) -> list[list[tuple[str, str]]]:
    """The image panels this run's pipeline makes, as rows of (key, caption): the whole images, then
    their centre crops, on one row when they fit. No CPU stage, no panel for it; the ground truth
    when there is one."""
    cpu = cpu_stage_caption(data.pipeline)
    truth = data.with_truth
    whole = [("input", "input", True), ("denoised", cpu, bool(cpu)), ("sr", "output x4", True),
             ("truth", "ground truth", truth)]
    centre = [("crop_input", "input, centre (nearest)", True), ("crop_sr", "output, centre 1:1", True),
              ("crop_truth", "ground truth, centre 1:1", truth)]
    rows = [[(key, caption) for key, caption, shown in row if shown] for row in (whole, centre)]
    return [rows[0] + rows[1]] if len(rows[0]) + len(rows[1]) <= ONE_ROW else rows


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("workers.report", "templates"),
        autoescape=True,  # the template names end in .j2, so select_autoescape would not apply
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["seconds"] = fmt_s
    env.filters["db"] = fmt_db
    env.filters["plain"] = without_paths
    return env.get_template("report.html.j2")


def render_report(data: ReportData) -> str:
    """One self-contained HTML document for ``data``. Raises nothing for well-formed data."""
    marker = f"@size-{secrets.token_hex(8)}@"  # replaced once the page's size is known
    clock = data.clock
    numbers = {image.name: i for i, image in enumerate(data.images, 1)}
    page = _template().render(
        data=data,
        csp=Markup(CSP),  # constants of this module: trusted, and quoted as the CSP grammar needs
        css=Markup(_CSS),
        display_width=DISPLAY_WIDTH,
        panels=panels(data),
        settings_rows=settings_rows(data),
        wall_time=fmt_s(clock.wall_seconds) if clock.wall_seconds is not None else _no_wall_time(data),
        images_per_s=fmt_rate(clock.images_per_s) if clock.images_per_s is not None else "none yet",
        clock_note=_clock_note(data),
        stage_labels={t.stage: stage_label(t.stage, data.pipeline) for t in data.timings},
        timing_rows=[(stage_label(t.stage, data.pipeline), t.count, fmt_s(t.p50), fmt_s(t.p95), fmt_s(t.total))
                     for t in data.timings],
        throughput_chart=line_chart(clock.throughput, clock.bin_s) if clock.throughput else "",
        psnr_chart=bar_chart([Bar(numbers.get(s.name, i), s.name, s.psnr, s.baseline_psnr)
                              for i, s in enumerate(data.scores, 1) if s.psnr is not None]) if data.scores else "",
        failure_rows=[(f.name, f.stage, without_paths(f.reason), f.at) for f in data.failures],
        training_rows=training_rows(data),
        training_chart=curve_chart(data.training.curve, "held-back PSNR during training", "held-back PSNR (dB)",
                                   "training steps") if data.training and len(data.training.curve) > 1 else "",
        size_marker=marker,
    )
    return page.replace(marker, fmt_bytes(len(page.encode())))


def _no_wall_time(data: ReportData) -> str:
    """What the wall-time cell says when no image finished since the run's start."""
    clock = data.clock
    if clock.remaining == 0:
        return "nothing to do"
    if data.counts["pending"] or clock.remaining:
        return "nothing finished yet"
    return "not recorded"


def _clock_note(data: ReportData) -> str:
    """Where the clock starts, when the first image finished, and what it leaves out."""
    clock = data.clock
    first = f"; the first image finished {fmt_s(clock.first_seconds)} in" if clock.first_seconds is not None else ""
    if not clock.started_at:
        return (f"The run recorded no enqueue time (an older version made it): timed from its first image's start{first}."
                if clock.wall_seconds is not None else "")
    since = f"Timed from the enqueue at {fmt_time(clock.started_at)}"
    if clock.remaining == 0 and not clock.finished:
        return (f"The last enqueue ({fmt_time(clock.started_at)}) found nothing left to do: all "
                f"{clock.finished_before} images had finished before it, so this run has no new time to show.")
    if not clock.finished:
        return f"{since}; no image has finished since."
    before = (f". {clock.finished_before} images had finished before this enqueue (an earlier one did them): "
              "they are not in the time" if clock.finished_before else "")
    return f"{since} to the last image finished{first}{before}."
