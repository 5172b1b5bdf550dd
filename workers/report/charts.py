"""Inline SVG charts for the report: PSNR per image and images finished over time.

Every text that reaches the SVG (image names in tooltips) is escaped; the result is
:class:`markupsafe.Markup`, so the template embeds it as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

_CHART_W, _CHART_H, _PAD_L, _PAD_B, _PAD_T = 820, 230, 48, 28, 24


def _svg(title: str, content: str) -> Markup:
    return Markup(f'<svg width={_CHART_W} height={_CHART_H} viewBox="0 0 {_CHART_W} {_CHART_H}" role=img '
            f'aria-label="{escape(title)}"><title>{escape(title)}</title>{content}</svg>')


def _axes(y_max: float, y_label: str, left: str, right: str, y_min: float = 0.0) -> str:
    """Axis lines, three y ticks (min, middle, max), the y unit above the axis, labels at both ends of x."""
    plot_h = _CHART_H - _PAD_B - _PAD_T
    parts = [f'<line x1={_PAD_L} y1={_PAD_T} x2={_PAD_L} y2={_PAD_T + plot_h} stroke="#999"/>',
             f'<line x1={_PAD_L} y1={_PAD_T + plot_h} x2={_CHART_W - 8} y2={_PAD_T + plot_h} stroke="#999"/>']
    for frac in (0.0, 0.5, 1.0):
        y = _PAD_T + plot_h * (1 - frac)
        parts.append(f'<text x={_PAD_L - 6} y={y + 4:.1f} text-anchor=end>{y_min + (y_max - y_min) * frac:g}</text>')
    parts.append(f'<text x={_PAD_L} y={_PAD_T - 10} text-anchor=middle>{escape(y_label)}</text>')
    parts.append(f'<text x={_PAD_L} y={_CHART_H - 8}>{escape(left)}</text>')
    parts.append(f'<text x={_CHART_W - 8} y={_CHART_H - 8} text-anchor=end>{escape(right)}</text>')
    return "".join(parts)


def _nice_max(value: float) -> float:
    """A round axis maximum >= value."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= value)


def bar_chart(values: Sequence[tuple[str, float]]) -> Markup:
    """PSNR per image, one bar each, in the given order; an infinite PSNR is drawn at the top."""
    finite = [v for _, v in values if math.isfinite(v)]
    y_max = _nice_max(max(finite, default=1.0))
    plot_w, plot_h = _CHART_W - _PAD_L - 8, _CHART_H - _PAD_B - _PAD_T
    step = plot_w / max(len(values), 1)
    bars = []
    for i, (name, value) in enumerate(values):
        height = plot_h * min(max(value, 0.0), y_max) / y_max if math.isfinite(value) else plot_h
        x = _PAD_L + i * step + step * 0.1
        bars.append(f'<rect x={x:.1f} y={_PAD_T + plot_h - height:.1f} width={max(step * 0.8, 0.5):.1f} '
                    f'height={height:.1f} fill="#4c72b0"><title>{escape(name)}: {value:.2f} dB</title></rect>')
    return _svg("PSNR per image (dB)", _axes(y_max, "dB", "worst", "best") + "".join(bars))


def line_chart(points: Sequence[tuple[float, int]], bin_s: int) -> Markup:
    """Images finished per interval against seconds since the run's first start."""
    y_max = _nice_max(max(n for _, n in points))
    plot_w, plot_h = _CHART_W - _PAD_L - 8, _CHART_H - _PAD_B - _PAD_T
    x_end = max(points[-1][0] + bin_s, 1.0)

    def xy(t: float, n: int) -> tuple[float, float]:
        return _PAD_L + plot_w * (t + bin_s / 2) / x_end, _PAD_T + plot_h * (1 - n / y_max)

    coords = [xy(t, n) for t, n in points]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(f'<circle cx={x:.1f} cy={y:.1f} r=2.5 fill="#dd8452"><title>{t:g}-{t + bin_s:g} s: {n}</title></circle>'
                   for (x, y), (t, n) in zip(coords, points, strict=True))
    return _svg("images finished per interval", _axes(y_max, "images", "0 s", f"{x_end:g} s")
                + f'<polyline points="{line}" fill="none" stroke="#dd8452" stroke-width="2"/>' + dots)


def curve_chart(points: Sequence[tuple[float, float]], title: str, y_label: str, x_label: str) -> Markup:
    """A curve of ``(x, y)`` points (a training run's held-back PSNR per step), y axis fitted to the data."""
    ys = [y for _, y in points]
    y_min, y_max = math.floor(min(ys)), math.ceil(max(ys))
    y_max = y_max if y_max > y_min else y_min + 1
    x_end = max(max(x for x, _ in points), 1.0)
    plot_w, plot_h = _CHART_W - _PAD_L - 8, _CHART_H - _PAD_B - _PAD_T
    coords = [(_PAD_L + plot_w * x / x_end, _PAD_T + plot_h * (1 - (y - y_min) / (y_max - y_min))) for x, y in points]
    line = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
    dots = "".join(f'<circle cx={cx:.1f} cy={cy:.1f} r=2.5 fill="#55a868"><title>{escape(x_label)} {x:g}: {y:.2f}</title></circle>'
                   for (cx, cy), (x, y) in zip(coords, points, strict=True))
    return _svg(title, _axes(y_max, y_label, f"0 {x_label}", f"{x_end:g} {x_label}", y_min=y_min)
                + f'<polyline points="{line}" fill="none" stroke="#55a868" stroke-width="2"/>' + dots)
