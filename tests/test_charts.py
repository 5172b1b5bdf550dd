"""The report's inline SVG charts: labelled axes, bars named or numbered with their values, the
bicubic baseline marked, every name escaped."""

from __future__ import annotations

import math
import re

from workers.report.charts import NAMED_BARS, Bar, bar_chart, curve_chart, line_chart, nice_step


def texts(svg: str, css_class: str) -> list[str]:
    return re.findall(rf"<text class={css_class}[^>]*>([^<]*)</text>", svg)


def test_few_bars_are_named_valued_and_marked_with_the_baseline():
    bars = [
        Bar(1, "val_00007.png", 26.5, 25.7),
        Bar(2, "<b>x</b>.png", 31.04, 29.8),
        Bar(3, "same.png", math.inf, 33.0),
    ]
    svg = str(bar_chart(bars))
    assert texts(svg, "axis") == ["PSNR (dB)", "images, worst PSNR first (numbered as in Images below)"]
    assert texts(svg, "value") == ["26.5", "31.0", "∞"] and texts(svg, "index") == ["1", "2", "3"]
    assert texts(svg, "name") == ["val_00007.png", "&lt;b&gt;x&lt;/b&gt;.png", "same.png"] and "<b>" not in svg
    assert svg.count("<line class=baseline") == 3 and "bicubic x4 of the input" in svg
    y_ticks = [float(t) for t in re.findall(r"<text x=\d+ y=[\d.]+ text-anchor=end>([\d.]+)</text>", svg)]
    assert y_ticks[0] <= 25.7 and y_ticks[-1] >= 33.0 and len(y_ticks) >= 3  # the axis spans bars and baselines


def test_many_bars_are_numbered_not_named():
    bars = [Bar(i, f"img_{i}.png", 20 + i / 10, None) for i in range(1, 201)]
    svg = str(bar_chart(bars))
    assert texts(svg, "name") == [] and texts(svg, "value") == [] and len(bars) > NAMED_BARS
    assert texts(svg, "index")[:2] == ["1", "11"] and len(texts(svg, "index")) == 20
    assert svg.count("<rect") == 201 and "<line class=baseline" not in svg  # 200 bars and the legend's


def test_the_throughput_and_training_charts_have_ticks_and_titles():
    svg = str(line_chart([(0.0, 0), (1.0, 0), (2.0, 3), (3.0, 5)], 1))
    assert texts(svg, "axis") == ["images per 1 s", "seconds since the run was enqueued"]
    assert svg.count("<circle") == 4 and "2-3 s: 3" in svg
    curve = str(
        curve_chart([(0, 31.2), (500, 33.4), (1000, 33.5)], "held-back PSNR", "held-back PSNR (dB)", "training steps")
    )
    assert texts(curve, "axis") == ["held-back PSNR (dB)", "training steps"] and ">1000<" in curve


def test_tick_steps_are_round():
    assert [nice_step(s) for s in (13.0, 0.7, 240.0, 1.0)] == [5, 0.2, 50, 0.2]
