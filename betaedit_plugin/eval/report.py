"""Tables from run results: metrics.csv, a before/after table, and a markdown comparison of methods.

A run's ``results.json`` holds ``{"config": ..., "method": ..., "evals": [point, ...], "timing": ...}``
where each evaluation point is a flat dict with ``step`` (edits so far) and float metrics.
"""

from __future__ import annotations

import csv
import json
import math
import os
from functools import lru_cache
from pathlib import Path
from statistics import NormalDist
from typing import Mapping, Optional, Sequence

from .._fileio import atomic_write, atomic_write_text

# (key, header, format) of the columns shown in the markdown tables
TABLE_COLUMNS = (
    ("efficacy", "efficacy", "{:.3f}"),
    ("generality", "generality", "{:.3f}"),
    ("specificity", "specificity", "{:.3f}"),
    ("rewrite_acc", "rewrite acc", "{:.3f}"),
    ("rephrase_acc", "rephrase acc", "{:.3f}"),
    ("locality_acc", "locality acc", "{:.3f}"),
    ("fluency", "fluency", "{:.2f}"),
    ("ppl", "ppl", "{:.2f}"),
    ("mmlu_acc", "MMLU acc (chance 0.25)", "{:.3f}"),
    ("rel_leakage", "rel. leakage", "{:.2e}"),
    ("perturbation", "‖D‖_F", "{:.3f}"),
)


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def write_metrics_csv(evals: Sequence[Mapping], path: Path) -> None:
    """One row per evaluation point, one column per scalar metric (union over points)."""
    keys: list = []
    for point in evals:
        for key, value in point.items():
            if key not in keys and isinstance(value, (int, float)) and not isinstance(value, bool):
                keys.append(key)
    keys = ["step"] + [k for k in keys if k != "step"]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            for point in evals:
                writer.writerow({k: point.get(k, "") for k in keys})

    atomic_write(Path(path), write)


def before_after_table(evals: Sequence[Mapping]) -> str:
    """Markdown table of the first (before editing) and the last evaluation point."""
    if not evals:
        return "(no evaluation points)"
    first, last = evals[0], evals[-1]
    lines = [
        f"| metric | before (step {first['step']}) | after (step {last['step']}) |",
        "|---|---|---|",
    ]
    for key, header, fmt in TABLE_COLUMNS:
        if key in first or key in last:
            lines.append(f"| {header} | {_fmt(first.get(key), fmt)} | {_fmt(last.get(key), fmt)} |")
    return "\n".join(lines)


def comparison_table(runs: Mapping[str, Mapping]) -> str:
    """Markdown table, one row per run (method), at each run's last evaluation point.

    Args:
        runs: label -> results dict (as in results.json).
    """
    present = [c for c in TABLE_COLUMNS if any(c[0] in (r.get("evals") or [{}])[-1] for r in runs.values())]
    header = "| method | edits | " + " | ".join(h for _, h, _ in present) + " | s/edit |"
    lines = [header, "|" + "---|" * (len(present) + 3)]
    for label, results in runs.items():
        evals = results.get("evals") or [{}]
        last = evals[-1]
        per_edit = (results.get("timing") or {}).get("edit_mean_s")
        cells = [_fmt(last.get(k), f) for k, _, f in present]
        lines.append(f"| {label} | {last.get('step', '–')} | " + " | ".join(cells) + f" | {_fmt(per_edit, '{:.2f}')} |")
    return "\n".join(lines)


def _common_steps(runs: Mapping[str, Mapping]) -> set:
    """The steps every run evaluated (none for fewer than two runs)."""
    if len(runs) < 2:
        return set()
    return set.intersection(*({p.get("step") for p in r.get("evals") or []} for r in runs.values())) - {None}


#: the columns of `common_steps_table`: what a long sequential comparison is read by, every table column but
#: fluency (the token accuracies too: on ZsRE they are the headline, where the probability comparisons barely move)
STEP_COLUMNS = tuple(key for key, _, _ in TABLE_COLUMNS if key != "fluency")


def common_steps_table(runs: Mapping[str, Mapping]) -> str:
    """Markdown table of the runs at each step that two or more of them evaluated (step 0 included),
    one row per (step, run that reached it): runs compared where they are comparable, not each at its
    own last point, and a run still in progress (an ablation started beside finished runs) leaves the
    others' later steps in the table. Empty string when no step was evaluated by two runs."""
    by_step = {label: {p["step"]: p for p in r.get("evals") or [] if "step" in p} for label, r in runs.items()}
    reached: dict = {}
    for label, points in by_step.items():
        for step in points:
            reached.setdefault(step, []).append(label)
    steps = sorted(step for step, labels in reached.items() if len(labels) > 1)
    if not steps:
        return ""
    present = [c for c in TABLE_COLUMNS if c[0] in STEP_COLUMNS
               and any(c[0] in by_step[label][s] for s in steps for label in reached[s])]
    lines = ["| edits | method | " + " | ".join(h for _, h, _ in present) + " |", "|" + "---|" * (len(present) + 2)]
    for step in steps:
        for label in reached[step]:
            lines.append(f"| {step} | {label} | "
                         + " | ".join(_fmt(by_step[label][step].get(k), f) for k, _, f in present) + " |")
    return "\n".join(lines)


#: metrics that are proportions of won comparisons: a point keeps each comparison's outcome
#: (``outcomes``, `betaedit_plugin.eval.metrics.edit_metrics`), so their differences get intervals
PROPORTIONS = ("efficacy", "generality", "specificity")
#: metrics that are means of each prompt's share of tokens: the token accuracies (the argmax is the target
#: token) and token locality (it agrees with the unedited model's); their differences get an interval only
#: where both points kept every prompt's tokens (paired)
TOKEN_METRICS = ("rewrite_acc", "rephrase_acc", "locality_acc")
BY_CASE = (*PROPORTIONS, *TOKEN_METRICS)
_HEADER = {key: header for key, header, _ in TABLE_COLUMNS}
Z95 = NormalDist().inv_cdf(0.975)  # 1.96: the two-sided 95% interval of a normal estimate


def lacks_outcomes(point: Mapping) -> bool:
    """Whether ``point`` has a value of `BY_CASE` (or a perplexity) without the per-case outcomes
    (per-window NLLs) it comes from (the unedited model's at step 0 too: the changes from it are paired)."""
    kept = point.get("outcomes") or {}
    return any(
        isinstance(point.get(m), (int, float)) and not math.isnan(point[m]) and m not in kept for m in (*BY_CASE, "ppl"))


@lru_cache(maxsize=64)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom: the CDF integrated
    (Simpson's rule, float64) and inverted by bisection; 12.706 at (0.975, 1), 2.365 at (0.975, 7)."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile(p={p!r}, df={df!r}): expected 0.5 < p < 1 and df >= 1")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float, n: int = 2000) -> float:  # 0.5 + the integral of the density from 0 to t
        h = t / n
        f = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def ppl_ratio(a: Mapping, b: Mapping) -> Optional[tuple]:
    """``a["ppl"] / b["ppl"]`` of two evaluation points on the same text, with its 95% interval.

    The log of the ratio is the token-weighted mean of the windows' NLL differences (each point's
    ``outcomes["ppl"]``: [summed NLL, tokens] per window, `betaedit_plugin.eval.capability.perplexity`);
    its standard error is that of a weighted mean over the windows, the interval Student's t with
    (windows - 1) degrees of freedom, mapped back through exp.

    Returns:
        (ratio, low, high, windows), or None where a point kept no windows, or the windows differ in
        number or tokens (another text), or there are fewer than two.
    """
    wa, wb = ((p.get("outcomes") or {}).get("ppl") for p in (a, b))
    if not wa or not wb or len(wa) != len(wb) or len(wa) < 2 or any(x[1] != y[1] for x, y in zip(wa, wb)):
        return None
    weights = [n for _, n in wa]
    total = sum(weights)
    d = [(x[0] - y[0]) / n for x, y, n in zip(wa, wb, weights)]  # each window's mean NLL difference
    mean = sum(w * x for w, x in zip(weights, d)) / total
    k = len(d)
    se = math.sqrt(k / (k - 1) * sum((w * (x - mean)) ** 2 for w, x in zip(weights, d))) / total
    half = t_quantile(0.975, k - 1) * se
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half), k


def case_values(point: Mapping, metric: str) -> Optional[list]:
    """The values ``point[metric]`` is the mean of, from its ``outcomes`` (None where it kept none)."""
    kept = (point.get("outcomes") or {}).get(metric)
    if not kept:
        return None
    if metric in TOKEN_METRICS:
        from .metrics import token_scores  # here: the tables need no torch until a point kept its tokens

        return token_scores(kept)
    return [int(c) for c in kept]


def case_groups(point: Mapping, metric: str) -> Optional[list]:
    """How many of `case_values` each scored request added, where some request added more than one
    (``outcomes["groups"]``, `betaedit_plugin.eval.metrics.edit_metrics`); None: at most one each."""
    kept = ((point.get("outcomes") or {}).get("groups") or {}).get(metric)
    return [int(n) for n in kept.split()] if kept else None


def mean_and_se(values: Sequence[float], groups: Optional[Sequence[int]] = None) -> tuple:
    """The mean of ``values`` and its standard error, and over how many independent units.

    Without ``groups``, each value is one unit: the sample standard deviation / sqrt(n). With
    ``groups`` (consecutive runs of values that belong together, e.g. the 10 neighbourhood prompts of
    one request; zeros allowed), each run is one unit: the cluster-robust standard error of a mean,
    sqrt(C / (C - 1) * sum_c (S_c - n_c * mean)^2) / n over the C non-empty runs (S_c a run's sum, n_c
    its length), which equals the first where every run holds one value and is wider where the values
    of a run go together. NaN as the error for fewer than two units.

    Returns:
        (mean, standard error, units)
    Raises:
        ValueError: ``groups`` that do not add up to ``len(values)``.
    """
    n = len(values)
    sizes = [1] * n if groups is None else [int(k) for k in groups]
    if any(k < 0 for k in sizes) or sum(sizes) != n:
        raise ValueError(f"mean_and_se: groups {list(sizes)[:8]}{' ...' if len(sizes) > 8 else ''} add up to "
                         f"{sum(sizes)} values, not the {n} given (or hold a negative size); give each request's "
                         "number of values, in order, summing to len(values)")
    mean = sum(values) / n if n else float("nan")
    sums, start = [], 0
    for k in sizes:
        if k:
            sums.append((sum(values[start:start + k]), k))
        start += k
    units = len(sums)
    if units < 2:
        return mean, float("nan"), units
    spread = sum((total - k * mean) ** 2 for total, k in sums)
    return mean, math.sqrt(units / (units - 1) * spread) / n, units


def proportion_difference(a: Mapping, b: Mapping, metric: str) -> Optional[tuple]:
    """``a[metric] - b[metric]`` of two evaluation points and the half-width of its 95% interval.

    Paired when both points kept their outcomes on the same cases (the same ``scored_cases``): the
    mean of the case-by-case differences and its standard error (`mean_and_se`: the sample standard
    deviation / sqrt(n), or, where a request added several comparisons, `case_groups`, the
    cluster-robust one with each request a unit; n then counts requests).
    Otherwise, for the `PROPORTIONS`, as two independent binomial proportions of ``n_scored``
    comparisons each: sqrt(p_a(1 - p_a)/n_a + p_b(1 - p_b)/n_b), wider than the paired one where the
    cases are shared; the `TOKEN_METRICS` (no proportions) have no unpaired interval.

    Returns:
        (difference, half-width, "paired" or "unpaired", n), or None when a point lacks the metric.
    """
    va, vb = case_values(a, metric), case_values(b, metric)
    groups = case_groups(a, metric)
    if (va and vb and len(va) == len(vb) and a.get("scored_cases") and a.get("scored_cases") == b.get("scored_cases")
            and groups == case_groups(b, metric)):
        mean, se, n = mean_and_se([x - y for x, y in zip(va, vb)], groups)
        return mean, Z95 * se, "paired", n
    if metric not in PROPORTIONS:
        return None
    pa, pb, na, nb = a.get(metric), b.get(metric), a.get("n_scored"), b.get("n_scored")
    if not all(isinstance(v, (int, float)) for v in (pa, pb, na, nb)) or not (na and nb) or math.isnan(pa) or math.isnan(pb):
        return None
    return pa - pb, Z95 * math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb), "unpaired", min(na, nb)


def difference_pairs(runs: Mapping[str, Mapping], reference: Optional[str] = None) -> list:
    """(a, b) label pairs compared in ``runs``: each run of the last run's method (BetaEdit and its
    variants, in the registry's order) and each run of another method, then each further run of a
    method and that method's first run (a variant or ablation against the run it varies); or
    ``reference`` and each other run."""
    def method(label: str) -> str:
        return str(runs[label].get("method") or label)

    if reference is not None:
        return [(reference, label) for label in runs if label != reference]
    last = method(list(runs)[-1]) if runs else None
    pairs = [(ref, label) for ref in runs if method(ref) == last for label in runs if method(label) != last]
    first: dict = {}
    for label in runs:
        first.setdefault(method(label), label)
    return pairs + [(label, first[method(label)]) for label in runs if first[method(label)] != label]


def _point(run: Mapping, step: int) -> Mapping:
    return next(p for p in run["evals"] if p.get("step") == step)


def _difference_cells(a: Mapping, b: Mapping, metrics: Sequence[str]) -> list:
    """The cells of a differences row, a minus b: each of ``metrics`` (`proportion_difference`), the
    perplexity ratio (`ppl_ratio`), the cases and the kind of interval ("–" where there is none)."""
    cells, kinds, ns = [], set(), set()
    for metric in metrics:
        diff = proportion_difference(a, b, metric)
        if diff is None:
            cells.append("–")
            continue
        cells.append(f"{diff[0]:+.3f} ± {diff[1]:.3f}")
        kinds.add(diff[2])
        ns.add(diff[3])
    ratio = ppl_ratio(a, b)
    cells.append("–" if ratio is None else f"{ratio[0]:.3f} ({ratio[1]:.3f}-{ratio[2]:.3f})")
    return cells + ['/'.join(str(n) for n in sorted(ns)) or '–', '/'.join(sorted(kinds)) or '–']


#: what `unedited_table` compares with the unedited model: what an edit should leave as it was (token
#: locality is measured against the unedited model's own answers, 1 at step 0: its change is its value)
KEPT = ("specificity",)


def unedited_table(runs: Mapping[str, Mapping]) -> str:
    """Markdown: each run's last point (after 0) against its own step-0 point (the unedited model),
    for each of `KEPT` and the perplexity, with 95% intervals as in `differences_table` (paired where
    both points kept their outcomes on the same cases: the last point of a run scored over all its
    edits, as step 0 scored every request). Empty string where no run has both points."""
    lines = []
    for label, run in runs.items():
        steps = {p.get("step") for p in run.get("evals") or []}
        last = max((s for s in steps if isinstance(s, int) and s > 0), default=None)
        if last is None or 0 not in steps:
            continue
        cells = _difference_cells(_point(run, last), _point(run, 0), KEPT)
        if set(cells) != {"–"}:  # a point without these metrics compares nothing
            lines.append(f"| {label} | {last} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join([
        "Each run's last point minus the unedited model (its step 0), with 95% intervals as below; the perplexity "
        "as a ratio to the unedited model's (1: unchanged).", "",
        "| method | edits | " + " | ".join(f"{_HEADER[m]} change" for m in KEPT) + " | ppl ratio | cases | interval |",
        "|" + "---|" * (len(KEPT) + 5), *lines])


def differences_table(runs: Mapping[str, Mapping], reference: Optional[str] = None) -> str:
    """Markdown: for each of `difference_pairs`, a minus b at the last step (after 0) both reached, for
    each of `BY_CASE`, with 95% intervals (`proportion_difference`). Empty string where no pair has such a step."""
    lines = []
    for ref, label in difference_pairs(runs, reference):
        steps = _common_steps({ref: runs[ref], label: runs[label]}) - {0}
        if not steps:
            continue
        step = max(steps)
        cells = _difference_cells(_point(runs[ref], step), _point(runs[label], step), BY_CASE)
        lines.append(f"| {ref} minus {label} | {step} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join([
        "Each pair at the last step both runs reached, with 95% intervals: an interval that holds 0 is a difference "
        "these cases cannot show. Paired: the same cases scored in both runs, the mean and standard error of their "
        "case-by-case differences (a request's several prompts one unit, where it has several); unpaired (points "
        "that did not keep each outcome): two independent binomial proportions, wider; the token accuracies and "
        "token locality only paired (points written before they kept their tokens show none). The perplexity is a "
        "ratio (a / b; 1: no difference), paired over the held-out text's windows (Student's t over the windows; "
        "`ppl_ratio`).", "",
        "| difference | edits | " + " | ".join(_HEADER[m] for m in BY_CASE) + " | ppl ratio | cases | interval |",
        "|" + "---|" * (len(BY_CASE) + 5), *lines])


def difference_series(runs: Mapping[str, Mapping], reference: Optional[str] = None) -> dict:
    """The paired differences of `difference_pairs` at every step (after 0) both runs evaluated on the
    same cases with their outcomes kept: {"a minus b": {metric: [(step, difference, half-width)]}}
    for each of `BY_CASE` and, where both kept their windows, "ppl": log(ppl_a / ppl_b) (`ppl_ratio`)
    (the curves `plots.plot_differences` draws; unpaired points are left out, their intervals being of
    another kind). Pairs without such a step are left out."""
    series: dict = {}
    for ref, label in difference_pairs(runs, reference):
        for step in sorted(_common_steps({ref: runs[ref], label: runs[label]}) - {0}):
            a, b = _point(runs[ref], step), _point(runs[label], step)
            for metric in BY_CASE:
                diff = proportion_difference(a, b, metric)
                if diff is not None and diff[2] == "paired":
                    series.setdefault(f"{ref} minus {label}", {}).setdefault(metric, []).append((step, diff[0], diff[1]))
            ratio = ppl_ratio(a, b)
            if ratio is not None:  # drawn as log(a / b), whose interval is symmetric
                log_ratio = math.log(ratio[0])
                series.setdefault(f"{ref} minus {label}", {}).setdefault("ppl", []).append(
                    (step, log_ratio, math.log(ratio[2]) - log_ratio))
    return series


def load_results(out_dir: Path) -> dict:
    """``results.json`` of a run directory."""
    path = Path(out_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist: is {str(out_dir)!r} a run's out_dir?")
    return json.loads(path.read_text(encoding="utf-8"))


def sources_table(sources: Mapping[str, Path], dest: Path) -> str:
    """Markdown: which directory each run's label stands for (relative to ``dest``), so that a row
    "a minus b" can be read without knowing how the labels were given."""
    rows = [f"| {label} | `{os.path.relpath(Path(d).resolve(), Path(dest).resolve())}` |" for label, d in sources.items()]
    return "\n".join([
        "Each label and the run directory it stands for (relative to this file): a method's first run by "
        "directory name is named by the method alone, its others add their directory's name.", "",
        "| label | directory |", "|---|---|", *rows])


def write_comparison(runs: Mapping[str, Mapping], dest: Path, sources: Optional[Mapping[str, Path]] = None) -> Path:
    """Write ``comparison.md`` (table + timing) and the comparison plots into ``dest``; with
    ``sources`` ({label: run directory}) the table of which directory each label stands for too."""
    from .plots import plot_differences, plot_runs

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    plots = plot_runs({label: r.get("evals", []) for label, r in runs.items()}, dest)
    plots += plot_differences(difference_series(runs), dest)
    lines = ["# Comparison", "", "At each run's last evaluation point:", "", comparison_table(runs), ""]
    if sources:
        lines += ["## Runs", "", sources_table(sources, dest), ""]
    common = common_steps_table(runs)
    if common:
        lines += ["## At the steps two or more runs reached", "", common, ""]
    unedited = unedited_table(runs)
    if unedited:
        lines += ["## Against the unedited model", "", unedited, ""]
    differences = differences_table(runs)
    if differences:
        lines += ["## Differences and their sampling error", "", differences, ""]
    lines += ["## Wall time (s)", "",
              "Each phase summed over the processes that ran the run (a stopped one and those that resumed it; "
              "results written before this sum hold their last process's only); the edits from the run's log.", "",
              "| method | statistics | projector | edits (total) | per edit | evaluation |", "|---|---|---|---|---|---|"]
    for label, r in runs.items():
        t = r.get("timing") or {}
        lines.append(
            f"| {label} | " + " | ".join(_fmt(t.get(k), "{:.1f}") for k in ("statistics_s", "projector_s", "edit_total_s"))
            + f" | {_fmt(t.get('edit_mean_s'), '{:.2f}')} | {_fmt(t.get('eval_total_s'), '{:.1f}')} |"
        )
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = dest / "comparison.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
