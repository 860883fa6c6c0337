"""PNG plots of metrics against the number of edits, one line per run (matplotlib, Agg backend).

Each PNG is written atomically (`betaedit_plugin._fileio.atomic_write`): a reader, or a run killed
while plotting, sees the previous complete file or the new one, never a partial one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

from .._fileio import atomic_write

# (file stem, title, [(metric key, label)], y label, log scale, reference line)
FIGURES = (
    ("efficacy", "Efficacy and generality", [("efficacy", "efficacy"), ("generality", "generality")], "share of edits", False, None),
    ("specificity", "Specificity", [("specificity", "specificity"), ("locality_acc", "locality acc")], "share", False, None),
    ("capability_ppl", "Held-out perplexity (WikiText-2)", [("ppl", "ppl")], "perplexity", True, None),
    ("capability_mmlu", "MMLU probe accuracy", [("mmlu_acc", "accuracy")], "accuracy", False, 0.25),
    ("leakage", "Knowledge leakage trace(D C0 D^T) / trace(W0 C0 W0^T)", [("rel_leakage", "rel. leakage")], "relative leakage", True, None),
    ("perturbation", "Weight perturbation ||W_t - W_0||_F", [("perturbation", "||D||_F")], "Frobenius norm", False, None),
)


def _finite(points: Sequence[Mapping], key: str) -> tuple:
    xs, ys = [], []
    for p in points:
        v = p.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(p["step"])
            ys.append(v)
    return xs, ys


def _within_a_decade(a: float, b: float) -> bool:
    lo, hi = sorted((a, b))
    return 0 < lo and hi < 10 * lo


def _plain_log_ticks():
    """(major locator, minor locator, major formatter, minor formatter) of `plain_log_axis`."""
    from matplotlib.ticker import LogFormatter, LogLocator, MaxNLocator

    class Locator(LogLocator):
        """A log axis's ticks; within a decade, evenly spaced round numbers (30, 35, 40, ...) as majors
        and no minors, where the decade's own ticks (20, 30, ..., 90) would leave two or three."""

        def __init__(self, minor: bool):
            super().__init__(subs="auto" if minor else (1.0,))
            self.minor = minor

        def tick_values(self, vmin, vmax):
            if _within_a_decade(vmin, vmax):
                if self.minor:
                    return []
                ticks = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
                return ticks[ticks > 0]  # 0 has no place on a log axis
            return super().tick_values(vmin, vmax)

    class Formatter(LogFormatter):
        """matplotlib's LogFormatter (which ticks get a label) writing the numbers plainly: 35, 0.06,
        1000; within a decade every (major) tick."""

        def __call__(self, x, pos=None):
            if _within_a_decade(*self.axis.get_view_interval()) or super().__call__(x, pos):
                return f"{x:g}"
            return ""

    return Locator(minor=False), Locator(minor=True), Formatter(), Formatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))


def plain_log_axis(axis) -> None:
    """Label a log-scaled matplotlib axis (``ax.xaxis`` / ``ax.yaxis``) with plain numbers: its
    decades, within about two decades its minor ticks too (0.06, 0.2), and within one decade evenly
    spaced round numbers (35, 40, 45), not 3.5x10^1 or only the 40 and 50 of the decade's ticks."""
    major, minor, major_fmt, minor_fmt = _plain_log_ticks()
    axis.set_major_locator(major)
    axis.set_minor_locator(minor)
    axis.set_major_formatter(major_fmt)
    axis.set_minor_formatter(minor_fmt)


def plot_runs(runs: Mapping[str, Sequence[Mapping]], out_dir: Path) -> list:
    """Draw every figure in :data:`FIGURES` for the runs that have the metric.

    Args:
        runs: label (method) -> evaluation points (dicts with ``step`` and metrics).
        out_dir: where the PNGs go.

    Returns:
        paths of the written PNG files.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, title, series, ylabel, log, ref in FIGURES:
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for index, (label, points) in enumerate(runs.items()):
            for key, name in series:
                xs, ys = _finite(points, key)
                if log:  # zero (e.g. no leakage before the first edit) cannot be drawn on a log axis
                    xs, ys = [x for x, y in zip(xs, ys) if y > 0], [y for y in ys if y > 0]
                if not xs:
                    continue
                line_label = label if len(series) == 1 else f"{label}: {name}"
                style = "-" if key == series[0][0] else "--"  # one colour per run, one line style per metric
                ax.plot(xs, ys, marker="o", color=f"C{index % 10}", linestyle=style, label=line_label)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        if ref is not None:
            ax.axhline(ref, color="grey", linestyle=":", label=f"chance {ref}")
        if log:
            ax.set_yscale("log")
            plain_log_axis(ax.yaxis)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("number of edits")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))  # 100s, not 60s
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)
        written.append(path)
    return written


#: the panels of `plot_differences`: (metric key, title)
DIFFERENCE_PANELS = (("efficacy", "efficacy"), ("generality", "generality"), ("specificity", "specificity"),
                     ("rewrite_acc", "rewrite token accuracy"), ("rephrase_acc", "rephrase token accuracy"),
                     ("locality_acc", "token locality"), ("ppl", "perplexity: log(a / b)"))


def plot_differences(series: Mapping[str, Mapping[str, Sequence[tuple]]], out_dir: Path) -> list:
    """``differences.png``: one panel per metric of `DIFFERENCE_PANELS` that some pair has, one line per
    pair with its 95% band, and the zero line (a band across it is a difference these cases cannot show).

    Args:
        series: ``"a minus b"`` -> metric -> [(step, difference, half-width)], as
            `betaedit_plugin.eval.report.difference_series` gives them.
    Returns:
        [the PNG's path], or [] where no pair has two steps of any metric (a single step is the
        table's, not a curve).
    """
    if not any(len(points) >= 2 for by_metric in series.values() for points in by_metric.values()):
        return []
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    panels = [(m, title) for m, title in DIFFERENCE_PANELS if any(by_metric.get(m) for by_metric in series.values())]
    columns = (len(panels) + 1) // 2
    fig, axes = plt.subplots(2, columns, figsize=(14 / 3 * columns, 7), sharex=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (metric, title) in zip(axes.flat, panels):
        for index, (pair, by_metric) in enumerate(series.items()):
            points = sorted(by_metric.get(metric, ()))
            if not points:
                continue
            xs, ds, hws = zip(*points)
            colour = f"C{index % 10}"
            ax.errorbar(xs, ds, yerr=hws, marker="o", capsize=3, color=colour, label=pair)
            ax.fill_between(xs, [d - h for d, h in zip(ds, hws)], [d + h for d, h in zip(ds, hws)], color=colour, alpha=0.15)
        ax.axhline(0.0, color="grey", linestyle=":")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    for column in axes.T:  # the lowest panel drawn in each column carries the x axis
        lowest = [ax for ax in column if ax.get_visible()][-1]
        lowest.tick_params(labelbottom=True)
        lowest.set_xlabel("number of edits")
    for ax in axes[:, 0]:
        ax.set_ylabel("difference (95% interval)")
    legend = {}  # one entry per pair, from whichever panel drew it
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(len(legend), 3), fontsize=8)
    fig.suptitle("Paired differences on the same cases, at every point that kept its outcomes", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    path = out_dir / "differences.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return [path]
