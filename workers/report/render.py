"""Render a :class:`~workers.report.data.ReportData` as one self-contained HTML document.

The page is the Jinja2 template ``templates/report.html.j2`` with autoescaping on: every string a
user controls (file names, error texts, sources, pipeline values) is escaped by the template, never
by hand. It references nothing outside itself: images are ``data:`` URIs, charts are inline SVG
(:mod:`~workers.report.charts`), CSS is inline, there is no JavaScript, and a
Content-Security-Policy forbids fetching anything.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import statistics
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from workers.report.charts import bar_chart, curve_chart, line_chart
from workers.report.data import ReportData

DISPLAY_WIDTH = 256  # CSS width of every image panel
_LONG_TEXT = 160  # settings longer than this are summarised
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;color:#222}
h1{font-size:21px;margin-bottom:4px} h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:14px;margin:0 0 6px;font-weight:600} h3.chart{margin-top:14px}
table{border-collapse:collapse} th,td{padding:2px 14px 2px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
.name,code{font-family:ui-monospace,monospace;word-break:break-all}
.image{border-top:1px solid #eee;padding:14px 0}
.panels{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:@wpx} figure img{width:@wpx;height:auto;display:block;background:#eee}
figcaption{font-size:12px;color:#666}
img.px{image-rendering:pixelated}
.missing{width:@wpx;height:80px;display:flex;align-items:center;justify-content:center;
  background:#f3f3f3;color:#888;font-size:12px;text-align:center}
.failed{color:#b00020} .note{color:#666;font-size:12px}
.counts td{padding-right:28px;font-size:16px}
svg{background:#fafafa;border:1px solid #eee} svg text{font:11px system-ui,sans-serif;fill:#444}
""".replace("@w", str(DISPLAY_WIDTH))

_PANELS = (
    ("input", "input"),
    ("denoised", "denoised"),
    ("sr", "super-resolved x4"),
    ("crop_input", "input, center (nearest)"),
    ("crop_sr", "x4 output, center 1:1"),
)



@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("workers.report", "templates"),
        autoescape=True,  # the template names end in .j2, so select_autoescape would not apply
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["seconds"] = fmt_s
    return env.get_template("report.html.j2")


def render_report(data: ReportData) -> str:
    """One self-contained HTML document for ``data``. Raises nothing for well-formed data."""
    scored = [s for s in data.scores if s.psnr is not None]
    marker = f"@size-{secrets.token_hex(8)}@"  # replaced once the page's size is known
    page = _template().render(
        data=data,
        csp=Markup(CSP),  # constants of this module: trusted, and quoted as the CSP grammar needs
        css=Markup(_CSS),
        display_width=DISPLAY_WIDTH,
        panels=_PANELS,
        settings_rows=_settings_rows(data),
        timing_rows=[(t.stage, t.count, fmt_s(t.p50), fmt_s(t.p95), fmt_s(t.total)) for t in data.timings],
        throughput_chart=line_chart(data.throughput, data.throughput_bin_s) if data.throughput else "",
        # fmean is inf if one image is identical to its ground truth
        mean_psnr=statistics.fmean(s.psnr for s in scored) if scored else 0.0,
        mean_ssim=statistics.fmean(s.ssim for s in data.scores if s.ssim is not None) if scored else 0.0,
        psnr_chart=bar_chart([(s.name, s.psnr or 0.0) for s in data.scores]) if data.scores else "",
        failure_rows=[(f.name, f.stage, f.reason, f.at) for f in data.failures],
        training_rows=_training_rows(data),
        training_chart=curve_chart(data.training.curve, "held-back PSNR during training", "dB", "steps")
        if data.training and len(data.training.curve) > 1 else "",
        size_marker=marker,
    )
    return page.replace(marker, fmt_bytes(len(page.encode())))


def _training_rows(data: ReportData) -> list[tuple[str, object]]:
    t = data.training
    if t is None:
        return []
    best = f"{t.best_psnr:.2f} dB at step {t.best_step}" if t.best_psnr is not None else "n/a (no pair held back)"
    return [("started from", f"{t.start} ({t.architecture})"), ("steps", t.steps), ("training pairs", t.pairs),
            ("best held-back PSNR", best), ("training time", fmt_s(t.seconds))]


def _settings_rows(data: ReportData) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [
        ("run id", data.run_id),
        ("source", data.source),
        ("created", data.created_at or "?"),
        ("model requested", data.model),
    ]
    for source, sha, device, precision in data.models or (("?", "?", "?", "?"),):
        rows += [("model source", source), ("model sha256", sha or "n/a"), ("device", device or "n/a"),
                 ("precision", precision or "n/a")]
    rows += [
        ("code version", ", ".join(data.code_versions) or "?"),
        ("expected columns", data.expected_columns if data.expected_columns is not None else "from the rows"),
        ("seed-compat", "yes (BGR feed, resize to a multiple of 8)" if data.seed_compat else "no"),
    ]
    rows += [(f"pipeline.{k}", v) for k, v in _flatten(data.pipeline)]
    return rows


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted.key, text)`` for every leaf; a string holding a JSON object (an embedded artifact
    such as the tone curve) is shown as its size and hash, then its own fields."""
    for key, value in mapping.items():
        artifact = _json_object(value)
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        elif artifact is not None:
            digest = hashlib.sha256(value.encode()).hexdigest()
            yield f"{prefix}{key}", f"JSON, {fmt_bytes(len(value.encode()))}, sha256 {digest}"
            yield from _flatten(artifact, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", _describe(value)


def _json_object(value: object) -> dict[str, Any] | None:
    if not isinstance(value, str) or not value.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _describe(value: object) -> str:
    """A short text for one setting: long lists by shape, long strings cut."""
    if value == "":
        return "(empty)"
    text = value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, list) and len(text) > _LONG_TEXT:
        shape = np.shape(np.asarray(value, dtype=object)) if value else (0,)
        return f"list, {' x '.join(map(str, shape))}"
    return text if len(text) <= _LONG_TEXT else f"{text[:_LONG_TEXT]}… ({len(text)} characters)"


def fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def fmt_bytes(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"
