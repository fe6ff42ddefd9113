"""Chart geometry: bars around zero, ticks that cover the data, the CV curve, the waterfall."""

from __future__ import annotations

import pytest

from services.console.charts import _nice_ticks, bar_chart, cv_chart, waterfall


@pytest.mark.parametrize("lo,hi", [(-0.33, 2.6), (0.0, 7.5), (0.5, 0.9), (-3.0, -1.0), (0.0, 0.0), (-1e-4, 3e-4)])
def test_ticks_cover_the_range(lo, hi):
    ticks = _nice_ticks(lo, hi)
    assert ticks[0] <= lo and ticks[-1] >= hi and ticks == sorted(ticks)


def test_bars_start_at_zero_and_point_the_sign_of_the_value():
    chart = bar_chart([("a", 2.0), ("b", -1.0), ("c", 0.0)])
    a, b, c = chart.bars
    assert a.x == pytest.approx(chart.zero_x) and a.width > 0 and not a.negative
    assert b.x + b.width == pytest.approx(chart.zero_x) and b.negative and b.anchor == "end"
    assert a.width == pytest.approx(2 * b.width)
    assert c.width == 0.0
    assert all(chart.label_width < x < chart.width for x, _ in chart.ticks)
    assert all(bar.x + bar.width <= chart.width - 60 for bar in chart.bars)


def test_cv_curve_marks_the_chosen_alpha_on_a_log_axis():
    chart = cv_chart([(0.01, 3.0), (0.1, 2.0), (1.0, 2.5)], chosen_alpha=0.1)
    xs = [x for x, _, _, _ in chart.points]
    assert xs[1] - xs[0] == pytest.approx(xs[2] - xs[1])  # equal steps per decade
    assert chart.chosen == pytest.approx(chart.points[1][:2])
    assert chart.points[1][1] > chart.points[0][1]  # a smaller error sits lower: a larger SVG y
    assert cv_chart([], None).points == []


def test_waterfall_places_each_org_on_its_lane():
    chart = waterfall(
        [("insurer", "Setup", 0.0, 2.0), ("helper", "Intersection", 1.0, 3.0)],
        ["Setup", "Intersection"],
        ["insurer", "helper"],
    )
    setup, intersection = chart.spans
    assert setup.y < intersection.y and setup.x < intersection.x
    assert setup.width == pytest.approx(intersection.width) and intersection.colour == 1
