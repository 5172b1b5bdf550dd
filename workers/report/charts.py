"""Inline SVG charts for the report: PSNR per image against the bicubic baseline, images finished
over time, and a training curve. Each has labelled axes with ticks; the PSNR chart names or numbers
its bars and writes their values.

Every text that reaches the SVG (image names) is escaped; the result is
:class:`markupsafe.Markup`, so the template embeds it as it is. No script: the report's CSP forbids it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

_CHART_W = 820
_PAD_L, _PAD_R, _PAD_T = 64, 14, 30
_PLOT_H = 180
_BAR, _BASELINE, _LINE, _CURVE = "#4c72b0", "#222", "#dd8452", "#55a868"
NAMED_BARS = 24  # up to this many bars are named under the axis; more are numbered
VALUED_BARS = 40  # up to this many bars carry their value
_NAME_CHARS = 16


@dataclass(frozen=True)
class Bar:
    """One image on the PSNR chart: its number in the report, its name, its PSNR and the baseline's."""

    number: int
    name: str
    value: float
    baseline: float | None = None


@dataclass(frozen=True)
class _Frame:
    """Where the plot sits in the SVG, and the data ranges its axes span."""

    height: int
    x_min: float
    x_max: float
    y_min: float
    y_max: float

    @property
    def plot_w(self) -> float:
        return _CHART_W - _PAD_L - _PAD_R

    @property
    def bottom(self) -> float:
        return _PAD_T + _PLOT_H

    def x(self, value: float) -> float:
        return _PAD_L + self.plot_w * (value - self.x_min) / ((self.x_max - self.x_min) or 1.0)

    def y(self, value: float) -> float:
        clamped = min(max(value, self.y_min), self.y_max)
        return self.bottom - _PLOT_H * (clamped - self.y_min) / ((self.y_max - self.y_min) or 1.0)


def _svg(title: str, frame: _Frame, content: str) -> Markup:
    return Markup(f'<svg width={_CHART_W} height={frame.height} viewBox="0 0 {_CHART_W} {frame.height}" role=img '
                  f'aria-label="{escape(title)}"><title>{escape(title)}</title>{content}</svg>')


def _axes(frame: _Frame, y_title: str, x_title: str, y_ticks: Sequence[float], x_ticks: Sequence[float] = (),
          x_unit: str = "") -> str:
    """Both axis lines, y ticks with grid lines and values, x ticks with values, both axis titles."""
    parts = [f'<line x1={_PAD_L} y1={_PAD_T} x2={_PAD_L} y2={frame.bottom} stroke="#999"/>',
             f'<line x1={_PAD_L} y1={frame.bottom} x2={_CHART_W - _PAD_R} y2={frame.bottom} stroke="#999"/>']
    for tick in y_ticks:
        y = frame.y(tick)
        parts.append(f'<line x1={_PAD_L} y1={y:.1f} x2={_CHART_W - _PAD_R} y2={y:.1f} stroke="#e6e6e6"/>'
                     f'<text x={_PAD_L - 6} y={y + 4:.1f} text-anchor=end>{tick:g}</text>')
    for tick in x_ticks:
        x = frame.x(tick)
        parts.append(f'<line x1={x:.1f} y1={frame.bottom} x2={x:.1f} y2={frame.bottom + 4} stroke="#999"/>'
                     f'<text x={x:.1f} y={frame.bottom + 16} text-anchor=middle>{tick:g}{escape(x_unit)}</text>')
    middle_y = _PAD_T + _PLOT_H / 2
    parts.append(f'<text class=axis transform="translate(16 {middle_y:.1f}) rotate(-90)" text-anchor=middle>'
                 f'{escape(y_title)}</text>')
    parts.append(f'<text class=axis x={_PAD_L + frame.plot_w / 2:.1f} y={frame.height - 6} text-anchor=middle>'
                 f'{escape(x_title)}</text>')
    return "".join(parts)


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about ``ticks`` intervals."""
    raw = max(span, 1e-9) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _ticks(low: float, high: float, step: float) -> list[float]:
    count = round((high - low) / step)
    return [round(low + i * step, 10) for i in range(count + 1)]


def _range(values: Sequence[float], floor_at_zero: bool = False) -> tuple[float, float, float]:
    """(low, high, step) of an axis that holds ``values`` with round ends."""
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if floor_at_zero:
        low = min(low, 0.0)
    if high - low < 1e-9:
        low, high = (low - 1, high + 1) if not floor_at_zero else (0.0, max(high, 1.0))
    step = nice_step(high - low)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def bar_chart(bars: Sequence[Bar]) -> Markup:
    """PSNR per image, one bar each in the given order (worst first), the bicubic baseline as a dark
    mark across its bar; bars named (few) or numbered as in the report, values written on them (few).
    An infinite PSNR is drawn to the top and written as ∞."""
    finite = [v for b in bars for v in (b.value, b.baseline) if v is not None and math.isfinite(v)]
    low, high, step = _range(finite)
    low = max(low - step, 0.0) if finite and min(finite) - low < step / 4 else low  # room under the worst bar
    high = high + step if finite and high - max(finite) < step / 4 else high  # and above the best one's value
    named = len(bars) <= NAMED_BARS
    pad_b = 112 if named else 44
    frame = _Frame(_PAD_T + _PLOT_H + pad_b, 0, max(len(bars), 1), low, high)
    slot = frame.plot_w / max(len(bars), 1)
    every = 1 if len(bars) <= VALUED_BARS else math.ceil(len(bars) / 20)
    marks = []
    for i, bar in enumerate(bars):
        x0, center = frame.x(i) + slot * 0.12, frame.x(i + 0.5)
        top = frame.y(bar.value) if math.isfinite(bar.value) else _PAD_T
        tip = f"{bar.number}. {bar.name}: {_db(bar.value)}" + (
            f", bicubic {_db(bar.baseline)}" if bar.baseline is not None else "")
        marks.append(f'<rect x={x0:.1f} y={top:.1f} width={max(slot * 0.76, 0.5):.1f} height={frame.bottom - top:.1f} '
                     f'fill="{_BAR}"><title>{escape(tip)}</title></rect>')
        if bar.baseline is not None:
            base = frame.y(bar.baseline) if math.isfinite(bar.baseline) else _PAD_T
            marks.append(f'<line class=baseline x1={x0 - slot * 0.06:.1f} y1={base:.1f} x2={x0 + slot * 0.82:.1f} '
                         f'y2={base:.1f} stroke="{_BASELINE}" stroke-width=2.5><title>{escape(tip)}</title></line>')
        if len(bars) <= VALUED_BARS:
            label = "∞" if math.isinf(bar.value) else f"{bar.value:.1f}"
            marks.append(f'<text class=value x={center:.1f} y={max(top - 4, _PAD_T - 2):.1f} '
                         f'text-anchor=middle>{label}</text>')
        if i % every == 0:
            marks.append(f'<text class=index x={center:.1f} y={frame.bottom + 14} text-anchor=middle>{bar.number}</text>')
        if named:
            marks.append(f'<text class=name transform="translate({center + 3:.1f} {frame.bottom + 24}) rotate(-40)" '
                         f'text-anchor=end>{escape(_short(bar.name))}</text>')
    legend = (f'<rect x={_CHART_W - 250} y=8 width=12 height=12 fill="{_BAR}"/>'
              f'<text x={_CHART_W - 233} y=18>this run</text>'
              f'<line x1={_CHART_W - 160} y1=14 x2={_CHART_W - 146} y2=14 stroke="{_BASELINE}" stroke-width="2.5"/>'
              f'<text x={_CHART_W - 140} y=18>bicubic x4 of the input</text>')
    x_title = "images, worst PSNR first (numbered as in Images below)"
    return _svg("PSNR per image against the ground truth (dB), this run and bicubic x4", frame,
                _axes(frame, "PSNR (dB)", x_title, _ticks(low, high, step)) + "".join(marks) + legend)


def line_chart(points: Sequence[tuple[float, int]], bin_s: int) -> Markup:
    """Images finished per interval of ``bin_s`` seconds, against seconds since the run's start."""
    x_end = max(points[-1][0] + bin_s, 1.0)
    _, y_max, y_step = _range([n for _, n in points], floor_at_zero=True)
    y_step = max(y_step, 1.0)  # whole images
    y_max = math.ceil(y_max / y_step) * y_step
    x_step = nice_step(x_end, 8)
    frame = _Frame(_PAD_T + _PLOT_H + 40, 0.0, x_end, 0.0, y_max)
    coords = [(frame.x(t + bin_s / 2), frame.y(n)) for t, n in points]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(f'<circle cx={x:.1f} cy={y:.1f} r=2.5 fill="{_LINE}"><title>{t:g}-{t + bin_s:g} s: {n}</title></circle>'
                   for (x, y), (t, n) in zip(coords, points, strict=True))
    axes = _axes(frame, f"images per {bin_s} s", "seconds since the run was enqueued", _ticks(0.0, y_max, y_step),
                 _ticks(0.0, math.floor(x_end / x_step) * x_step, x_step))
    return _svg("images finished per interval", frame,
                axes + f'<polyline points="{line}" fill="none" stroke="{_LINE}" stroke-width="2"/>' + dots)


def curve_chart(points: Sequence[tuple[float, float]], title: str, y_label: str, x_label: str) -> Markup:
    """A curve of ``(x, y)`` points (a training run's held-back PSNR per step), y axis fitted to the data."""
    low, high, y_step = _range([y for _, y in points])
    x_end = max(max(x for x, _ in points), 1.0)
    x_step = nice_step(x_end, 8)
    frame = _Frame(_PAD_T + _PLOT_H + 40, 0.0, x_end, low, high)
    coords = [(frame.x(x), frame.y(y)) for x, y in points]
    line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
    dots = "".join(f'<circle cx={cx:.1f} cy={cy:.1f} r=2.5 fill="{_CURVE}"><title>{escape(x_label)} {x:g}: {y:.2f}</title></circle>'
                   for (cx, cy), (x, y) in zip(coords, points, strict=True))
    axes = _axes(frame, y_label, x_label, _ticks(low, high, y_step), _ticks(0.0, math.floor(x_end / x_step) * x_step, x_step))
    return _svg(title, frame, axes + f'<polyline points="{line}" fill="none" stroke="{_CURVE}" stroke-width="2"/>' + dots)


def _db(value: float) -> str:
    return "∞ dB" if math.isinf(value) else f"{value:.2f} dB"


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "…"
