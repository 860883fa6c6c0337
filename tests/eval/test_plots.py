"""eval/plots.py: the axes of the published figures read as plain numbers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=True)
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from betaedit_plugin.eval.plots import plain_log_axis  # noqa: E402


def _labels(lo: float, hi: float) -> tuple:
    fig, ax = plt.subplots()
    try:
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        plain_log_axis(ax.yaxis)
        fig.canvas.draw()
        major = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
        minor = [t.get_text() for t in ax.get_yticklabels(minor=True) if t.get_text()]
        return major, minor
    finally:
        plt.close(fig)


@pytest.mark.parametrize("lo, hi, expect", [
    (31.0, 40.0, {"32", "34", "36", "38", "40"}),  # perplexity within one decade: round numbers
    (30.5, 53.0, {"35", "40", "45", "50"}),  # where the decade's own ticks would label only 40 and 50
    (0.018, 0.13, {"0.02", "0.06", "0.1", "0.12"}),  # relative leakage
    (0.015, 0.25, {"0.02", "0.06", "0.1", "0.2"}),  # more than a decade: the decade's ticks
])
def test_log_axes_within_a_decade_or_two_are_labelled_in_plain_numbers(lo, hi, expect):
    major, minor = _labels(lo, hi)
    labels = set(major) | set(minor)
    assert expect <= labels, labels
    assert not any("e" in l or "times" in l or "^" in l for l in labels), labels
    assert "0" not in labels  # no tick at 0 on a log axis


def test_log_axes_over_many_decades_label_the_decades_only():
    major, minor = _labels(0.001, 1000.0)
    assert {"0.001", "1", "1000"} <= set(major) and minor == []
