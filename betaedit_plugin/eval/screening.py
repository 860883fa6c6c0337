"""The screening of update rules on fixed targets: one table, the choice of settings, three figures.

A screening is a set of fixed-target runs (``targets=`` a bank, the runner's results.json each) that
share records, statistics and evaluation sample and differ in their update rule's settings. This
module reads them side by side:

- ``screening_rows``: one row per run and evaluation point: the method, the settings the run differs
  in from the other runs of its method, the metrics, and how much the projector refreshes changed it;
- ``choose``: each method's setting with the lowest relative leakage among those that keep efficacy
  at or above a floor at one step (the campaign's rule; results/CAMPAIGN.md);
- ``fronts``: each method's efficacy-leakage front at a step (the settings no other of its settings
  beats on both);
- ``write_screening``: ``screening.md`` (the choice, the fronts, then every row) and the figures: each
  method's efficacy-leakage front, a sensitivity figure per swept BetaEdit setting (lambda1, tau, lambda2:
  metrics against the setting, one line per evaluation step), and the refreshes' principal angles;
- ``fixed_vs_sequential`` / ``write_fixed_vs_sequential``: how close screening comes to the sequential
  protocol: each method's sequential run beside the same run on fixed targets (same records, settings
  and evaluation sample; only z* differs: optimised on the edited model, or read from the bank),
  metric by metric at every step both evaluated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .._fileio import atomic_write, atomic_write_text
from ..methods.base import ADDED_FIELDS, PLACEMENT_FIELDS
from .report import _fmt
from .plots import plain_log_axis

# metrics of a screening row: (key, header, format)
ROW_METRICS = (
    ("efficacy", "efficacy", "{:.3f}"),
    ("generality", "generality", "{:.3f}"),
    ("specificity", "specificity", "{:.3f}"),
    ("ppl", "ppl", "{:.2f}"),
    ("rel_leakage", "rel. leakage", "{:.2e}"),
    ("perturbation", "‖D‖_F", "{:.2f}"),
)


def swept_settings(runs: Mapping[str, Mapping]) -> Dict[str, List[str]]:
    """{method: the hparams keys whose values differ between that method's runs, or that a run of it
    set on its command line (``hparams.X=...``) unless every run of the screening set it alike (a
    statistics folder, say)}, sorted; never the `PLACEMENT_FIELDS` (a screening run on a GPU is not a setting).
    A field that runs written before it existed lack counts at its neutral value (`ADDED_FIELDS`)."""
    by_method: Dict[str, List[Mapping]] = {}
    given: Dict[str, set] = {}
    overrides = {name: {k: repr(v) for k, v in ((r.get("config") or {}).get("hparams") or {}).items() if v is not None}
                 for name, r in runs.items()}
    common = set.intersection(*(set(o.items()) for o in overrides.values())) if overrides else set()
    for name, results in runs.items():
        method = results["method"]
        by_method.setdefault(method, []).append(results.get("hparams") or {})
        given.setdefault(method, set()).update(k for k, v in overrides[name].items() if (k, v) not in common)
    swept = {}
    for method, hps in by_method.items():
        keys = sorted({k for hp in hps for k in hp} - set(PLACEMENT_FIELDS))
        swept[method] = [k for k in keys if len({repr(_setting(hp, k)) for hp in hps}) > 1 or k in given[method]]
    return swept


def _setting(hparams: Mapping, key: str):
    """``hparams[key]``; for a field added later (`ADDED_FIELDS`) that an older run lacks, its neutral value."""
    return hparams.get(key, ADDED_FIELDS.get(key))


def _refreshes(results: Mapping, up_to: int) -> dict:
    """Refreshes written by step ``up_to``: their count, the largest principal angle (degrees) over
    layers and refreshes, and the last one's smallest rank after (over layers)."""
    angles, ranks, count = [], [], 0
    for entry in results.get("edits") or []:
        if entry.get("step", 0) > up_to or not entry.get("refresh"):
            continue
        count += 1
        layers = entry["refresh"].values()
        angles += [v["max_angle_deg"] for v in layers if isinstance(v.get("max_angle_deg"), (int, float))
                   and math.isfinite(v["max_angle_deg"])]
        ranks = [v["rank_after"] for v in layers]
    return {"refreshes": count, "max_angle_deg": max(angles) if angles else None,
            "min_rank_after": min(ranks) if ranks else None}


def screening_rows(runs: Mapping[str, Mapping]) -> List[dict]:
    """One row per (run, evaluation point after step 0), in the order of ``runs`` then step.

    Args:
        runs: run name -> results dict (as in results.json).
    Returns:
        dicts with ``run``, ``method``, ``setting`` ({swept key: value}), ``step``, the
        :data:`ROW_METRICS`, ``sampled`` (cases the point scored) and the refresh summary.
    """
    swept = swept_settings(runs)
    rows = []
    for name, results in runs.items():
        method, hp = results["method"], results.get("hparams") or {}
        setting = {k: _setting(hp, k) for k in swept.get(method, [])}
        for point in results.get("evals") or []:
            if point.get("step", 0) == 0:
                continue
            row = {"run": name, "method": method, "setting": setting, "step": point["step"],
                   "sampled": point.get("n_scored", point.get("sampled")), "c0": tuple(hp.get(k) for k in C0_FIELDS)}
            row.update({k: point.get(k) for k, _, _ in ROW_METRICS})
            row.update(_refreshes(results, point["step"]))
            rows.append(row)
    return rows


#: the hparams C0 is collected with: relative leakage is measured against the run's own C0, so runs whose
#: statistics differ have leakages of different measures (listed, not chosen between or drawn on one front)
C0_FIELDS = ("mom2_dataset", "mom2_n_samples", "mom2_max_length", "mom2_dtype")


def on_shared_c0(rows: Sequence[Mapping]) -> List[Mapping]:
    """The rows whose C0 statistics (`C0_FIELDS`) are those most of the rows share: the screening's."""
    if not rows:
        return []
    shared = _most_common([r.get("c0") for r in rows])
    return [r for r in rows if r.get("c0") == shared]


#: leakages within this share of the chosen one are a tie that the choice cannot tell apart (`choose`)
TIE_REL = 0.01


def _placed_at(rows: Sequence[Mapping], step: int) -> List[Mapping]:
    """The rows at ``step`` on the screening's C0 (`on_shared_c0`) with an efficacy and a leakage."""
    return [r for r in on_shared_c0(rows)
            if r["step"] == step and _number(r.get("efficacy")) and _number(r.get("rel_leakage"))]


def choose(rows: Sequence[Mapping], step: int, min_efficacy: float) -> Dict[str, Optional[dict]]:
    """{method: its row at ``step`` with the lowest relative leakage among those with efficacy >=
    ``min_efficacy``, or None where no run of the method reached the floor (or the step)}. The row's
    ``ties`` lists the settings of the method's other rows at the floor whose leakage lies within
    `TIE_REL` of it: settings the rule picks between by less than the runs' own noise. Only the rows
    on the screening's C0 (`on_shared_c0`) are chosen between."""
    chosen: Dict[str, Optional[dict]] = {}
    kept: Dict[str, list] = {}
    for row in rows:
        chosen.setdefault(row["method"], None)
    for row in _placed_at(rows, step):
        if row["efficacy"] < min_efficacy:
            continue
        kept.setdefault(row["method"], []).append(row)
        best = chosen[row["method"]]
        if best is None or row["rel_leakage"] < best["rel_leakage"]:
            chosen[row["method"]] = dict(row)
    for method, best in chosen.items():
        if best is not None:
            best["ties"] = [r["setting"] for r in kept[method]
                            if r["run"] != best["run"] and r["rel_leakage"] <= best["rel_leakage"] * (1 + TIE_REL)]
    return chosen


def fronts(rows: Sequence[Mapping], step: int) -> Dict[str, List[Mapping]]:
    """{method: its efficacy-leakage front at ``step``}: the method's rows (`_placed_at`) that no other
    of its rows dominates, i.e. none has a leakage as low and an efficacy as high with one of the two
    strictly better; from the least leaking. Exact ties both stay."""
    at = _placed_at(rows, step)

    def beaten(r, by):
        return (by["rel_leakage"] <= r["rel_leakage"] and by["efficacy"] >= r["efficacy"]
                and (by["rel_leakage"] < r["rel_leakage"] or by["efficacy"] > r["efficacy"]))

    out: Dict[str, List[Mapping]] = {}
    for method in sorted({r["method"] for r in at}):
        mine = [r for r in at if r["method"] == method]
        out[method] = sorted((r for r in mine if not any(beaten(r, o) for o in mine)),
                             key=lambda r: (r["rel_leakage"], -r["efficacy"], _setting_order(r["setting"])))
    return out


def fronts_table(rows: Sequence[Mapping]) -> str:
    """Markdown table: at every step, each method's front (`fronts`) from the least leaking setting, each
    point named by where it differs from the method's most common settings (`_short_setting_text`, as the
    figure labels it), how many of its settings the front leaves out (dominated), and the common values of
    the settings some point does not name (where every point names them all, as one swept key does: "–")."""
    lines = ["| edits | method | front, from the least leaking: setting (efficacy, rel. leakage) | dominated "
             "| the settings a point does not name: the most common |",
             "|---|---|---|---|---|"]
    for step in sorted({r["step"] for r in rows}):
        placed = _placed_at(rows, step)
        for method, front in fronts(rows, step).items():
            mine = [r for r in placed if r["method"] == method]
            usual = _usual_setting(mine)
            cells = "; ".join(f"{_short_setting_text(r['setting'], usual)} ({_fmt(r['efficacy'], '{:.3f}')}, "
                              f"{_fmt(r['rel_leakage'], '{:.3g}')})" for r in front)
            unnamed = {k: v for k, v in usual.items() if any(k not in _named_keys(r["setting"], usual) for r in front)}
            rest = _setting_text(unnamed) if unnamed else "–"
            lines.append(f"| {step} | {method} | {cells} | {len(mine) - len(front)} | {rest} |")
    return "\n".join(lines)


def _sampling_note(rows: Sequence[Mapping]) -> str:
    """One sentence on how far apart two efficacies must be to be told apart, from the cases a point scored."""
    counts = sorted({r["sampled"] for r in rows if _number(r.get("sampled")) and r["sampled"] > 0})
    if not counts:
        return ""
    n = counts[0]  # the fewest: the noisiest point
    scored = str(n) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return (f" Points score {scored} sampled cases: at efficacy 0.9 one standard error is {math.sqrt(0.09 / n):.3f}, "
            f"so efficacies closer than about {2 * math.sqrt(0.09 / n):.2f} are not told apart.")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _value_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else _fmt(value, "{:g}")


def _setting_text(setting: Mapping) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in setting.items()) or "(default)"


def _setting_order(setting: Mapping) -> tuple:
    """Sort key of a setting: its values in order, numbers by value (lambda1 3 before 1000)."""
    return tuple((0, float(v), "") if _number(v) else (1, 0.0, str(v)) for v in setting.values())


def screening_table(rows: Sequence[Mapping]) -> str:
    """Markdown table of every row, grouped by method, then setting (numbers by value), then step."""
    header = ("| method | setting | edits | " + " | ".join(h for _, h, _ in ROW_METRICS)
              + " | refreshes | max angle (deg) | min rank after |")
    lines = [header, "|" + "---|" * (len(ROW_METRICS) + 6)]
    for row in sorted(rows, key=lambda r: (r["method"], _setting_order(r["setting"]), r["run"], r["step"])):
        cells = [_fmt(row.get(k), f) for k, _, f in ROW_METRICS]
        lines.append(f"| {row['method']} | {_setting_text(row['setting'])} | {row['step']} | " + " | ".join(cells)
                     + f" | {row['refreshes']} | {_fmt(row['max_angle_deg'], '{:.3g}')} | {_fmt(row['min_rank_after'], '{}')} |")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    _plt().close(fig)
    return path


def _most_common(values: Sequence):
    """The value given most often (ties: the first of them given)."""
    keys = [repr(v) for v in values]
    return values[max(range(len(values)), key=lambda i: (keys.count(keys[i]), -i))]


def _usual_setting(mine: Sequence[Mapping]) -> Dict[str, object]:
    """{key: its most common value} over the setting keys in which ``mine`` (one method's rows) differ."""
    varied = [k for k in mine[0]["setting"] if len({repr(r["setting"].get(k)) for r in mine}) > 1] if mine else []
    return {k: _most_common([r["setting"].get(k) for r in mine]) for k in varied}


def _short_setting_text(setting: Mapping, usual: Mapping) -> str:
    """``setting`` where it differs from ``usual`` (`_usual_setting`), or by the first varied key where it
    does not (the usual point itself), or whole where nothing varies (a method's only setting): the name
    a front's point gets in the table and the figure."""
    return _setting_text({k: setting[k] for k in _named_keys(setting, usual)})


def _named_keys(setting: Mapping, usual: Mapping) -> list:
    """The keys `_short_setting_text` names ``setting`` by."""
    if not usual:
        return list(setting)
    return [k for k in usual if repr(setting.get(k)) != repr(usual[k])] or list(usual)[:1]


def plot_front(rows: Sequence[Mapping], step: int, chosen: Mapping[str, Optional[dict]], path: Path) -> Optional[Path]:
    """Efficacy against relative leakage at ``step``: one colour per method, each method's front
    (`fronts`) joined and labelled, the settings it dominates hollow and unlabelled (screening.md lists
    them), the chosen settings circled; the runs on the screening's C0 (`on_shared_c0`). None when no
    run reached ``step``."""
    at = [r for r in _placed_at(rows, step) if r["rel_leakage"] > 0]  # on a log axis
    if not at:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 6))
    placed: list = []
    front_of = fronts(at, step)
    for index, method in enumerate(sorted({r["method"] for r in at})):
        mine = [r for r in at if r["method"] == method]
        front = front_of[method]
        ax.plot([r["rel_leakage"] for r in front], [r["efficacy"] for r in front], marker="o", linestyle="-",
                color=f"C{index}", label=f"{method} ({len(front)} of {len(mine)} on its front)")
        dominated = [r for r in mine if r not in front]
        if dominated:
            ax.plot([r["rel_leakage"] for r in dominated], [r["efficacy"] for r in dominated], marker="o",
                    linestyle="none", fillstyle="none", color=f"C{index}", alpha=0.6)
        usual = _usual_setting(mine)
        for r in front:  # labelled by where it differs from this method's usual settings (the rest is in screening.md)
            # stacked above the labels already near this point, so that a crowded corner stays readable
            near = sum(1 for x, y in placed if abs(math.log10(x / r["rel_leakage"])) < 0.12 and abs(y - r["efficacy"]) < 0.03)
            placed.append((r["rel_leakage"], r["efficacy"]))
            ax.annotate(_short_setting_text(r["setting"], usual), (r["rel_leakage"], r["efficacy"]),
                        fontsize=6, color=f"C{index}", textcoords="offset points", xytext=(3, 3 - 7 * near))
        pick = chosen.get(method)
        if pick is not None and pick["step"] == step:
            ax.plot([pick["rel_leakage"]], [pick["efficacy"]], marker="o", markersize=12, fillstyle="none",
                    color=f"C{index}")
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("relative leakage trace(D C0 D^T) / trace(W0 C0 W0^T)")
    ax.set_ylabel("efficacy")
    ax.set_title(f"Efficacy-leakage front after {step} fixed-target edits (line: each method's front; hollow: "
                 "dominated; circled: chosen)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sensitivity(rows: Sequence[Mapping], method: str, key: str, path: Path) -> Optional[Path]:
    """Metrics of ``method``'s runs against one swept setting ``key`` (the others held at the values
    most of those runs share), one line per evaluation step. None when fewer than two values."""
    mine = [r for r in rows if r["method"] == method and key in r["setting"]]
    others = [k for k in (mine[0]["setting"] if mine else {}) if k != key]
    if len({repr(r["setting"][key]) for r in mine}) < 2:  # a setting given but not varied
        return None
    if not all(_number(r["setting"][key]) for r in mine):  # a switch (recollect_c0): the table shows it
        return None
    if key in C0_FIELDS:  # each C0 measures leakage its own way: the table shows them
        return None
    for other in others:  # hold every other setting at its most common value among these runs
        common = repr(_most_common([r["setting"][other] for r in mine]))
        mine = [r for r in mine if repr(r["setting"][other]) == common]
    if len({repr(r["setting"][key]) for r in mine}) < 2:
        return None
    plt = _plt()
    panels = [m for m in ROW_METRICS if m[0] in ("efficacy", "generality", "specificity", "ppl", "rel_leakage")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    steps = sorted({r["step"] for r in mine})
    for ax, (metric, header, _) in zip(axes, panels):
        for index, step in enumerate(steps):
            pts = sorted((r["setting"][key], r[metric]) for r in mine if r["step"] == step and _number(r.get(metric)))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=f"C{index}", label=f"{step} edits")
        values = [r["setting"][key] for r in mine]
        if min(values) >= 0 and max(values) > 0 and max(values) / max(min(v for v in values if v > 0), 1e-12) >= 100:
            ax.set_xscale("symlog", linthresh=min(v for v in values if v > 0))  # 0 (the ablation) stays drawable
        if metric == "rel_leakage":
            ax.set_yscale("log")
            plain_log_axis(ax.yaxis)
        ax.set_xlabel(key)
        ax.set_title(header, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    held = ", ".join(f"{k}={_value_text(mine[0]['setting'][k])}" for k in others)
    fig.suptitle(f"{method}: sensitivity to {key} on fixed targets" + (f" ({held})" if held else ""), fontsize=11)
    return _save(fig, path)


def write_screening(runs: Mapping[str, Mapping], dest: Path, *, choose_step: int = 250,
                    min_efficacy: float = 0.95) -> Path:
    """Write ``screening.md`` and the figures into ``dest``; returns the markdown's path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rows = screening_rows(runs)
    chosen = choose(rows, choose_step, min_efficacy)
    figures = [plot_front(rows, step, chosen, dest / f"front-{step}.png") for step in sorted({r["step"] for r in rows})]
    swept = swept_settings(runs)
    for method, keys in swept.items():
        figures += [plot_sensitivity(rows, method, key, dest / f"sensitivity-{method}-{key}.png") for key in keys]
    figures = [f for f in figures if f is not None]
    lines = ["# Screening on fixed targets", "",
             f"{len(runs)} runs; the settings shown (varied between a method's runs, or given on a run's command "
             "line): " + "; ".join(f"{m}: {', '.join(k) or 'none'}" for m, k in sorted(swept.items())) + ".", "",
             f"## Choice: lowest relative leakage with efficacy >= {min_efficacy:g} after {choose_step} edits", "",
             "Relative leakage is measured against each run's own C0: the choice and the fronts compare the runs on "
             "the statistics most of them share (mom2_*); a run on other statistics is only listed.", "",
             f"| method | setting | efficacy | rel. leakage | also within {TIE_REL:.0%} of that leakage (a tie) |",
             "|---|---|---|---|---|"]
    for method, row in sorted(chosen.items()):
        if row is None:
            lines.append(f"| {method} | none reached efficacy {min_efficacy:g} at {choose_step} edits (or the step) | – | – | – |")
        else:
            ties = "; ".join(_setting_text(t) for t in sorted(row["ties"], key=_setting_order)) or "–"
            lines.append(f"| {method} | {_setting_text(row['setting'])} | {_fmt(row['efficacy'], '{:.3f}')} "
                         f"| {_fmt(row['rel_leakage'], '{:.2e}')} | {ties} |")
    lines += ["", "## Efficacy-leakage fronts", "",
              "A method's front: its settings that no other of its settings beats on both relative leakage "
              "(as low) and efficacy (as high); the rest are dominated." + _sampling_note(rows), "",
              fronts_table(rows), "",
              "## Every run and evaluation point", "", screening_table(rows), "",
              "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures]
    path = dest / "screening.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


#: the metrics compared between a sequential run and its fixed-target twin
CLOSENESS_METRICS = tuple(m for m in ROW_METRICS if m[0] in ("efficacy", "generality", "specificity", "ppl",
                                                             "rel_leakage", "perturbation"))


def fixed_vs_sequential(pairs: Mapping[str, Tuple[Mapping, Mapping]]) -> List[dict]:
    """One row per (method, step after 0 that both runs evaluated): ``method``, ``step``, and for each
    of `CLOSENESS_METRICS` ``<key>`` = (sequential, fixed) (None where a run lacks it).

    Args:
        pairs: method -> (results of the sequential run, results of the fixed-target run), as in
            results.json.
    """
    rows = []
    for method, (seq, fixed) in pairs.items():
        at = {p["step"]: p for p in fixed.get("evals") or []}
        for point in seq.get("evals") or []:
            step = point.get("step", 0)
            if step == 0 or step not in at:
                continue
            row = {"method": method, "step": step}
            row.update({k: (point.get(k), at[step].get(k)) for k, _, _ in CLOSENESS_METRICS})
            rows.append(row)
    return rows


#: two runs wrote the same edit where their ||Delta||_F per layer agree this closely (relative): float32
#: updates computed on another machine (a GPU) differ in the last digits (as the journal's FINGERPRINT_RTOL)
SAME_EDIT_RTOL = 1e-4


def _same_edit(a: Mapping, b: Mapping) -> bool:
    """Two runs' ``edits`` entries of one step: the same cases, the same ||Delta||_F per layer (`SAME_EDIT_RTOL`)."""
    norms_a, norms_b = a.get("delta_norm") or {}, b.get("delta_norm") or {}
    return a.get("case_ids") == b.get("case_ids") and set(norms_a) == set(norms_b) and all(
        abs(norms_a[l] - norms_b[l]) <= SAME_EDIT_RTOL * max(abs(norms_a[l]), abs(norms_b[l])) for l in norms_a)


def pool_points(primary: Mapping, twin: Mapping) -> dict:
    """``primary`` (results.json of a run) with the evaluation points of ``twin`` at the steps it lacks,
    where the two wrote the same edits (`_same_edit` at every step both journaled): e.g. a screening run
    and the fixed-target twin of a sequential run, with the same settings and bank but other evaluation
    steps; past the steps both journaled, the twin's points are of the run the primary would be, had it
    gone on. Each borrowed point says so (``pooled_from``).

    Raises:
        ValueError: the runs wrote other edits (the first step where they differ named), or share no step.
    """
    edits = {e["step"]: e for e in primary.get("edits") or []}
    common = [e for e in twin.get("edits") or [] if e["step"] in edits]
    if not common:
        raise ValueError("the runs share no journaled step: nothing shows that they wrote the same edits")
    for e in common:
        mine = edits[e["step"]]
        if not _same_edit(mine, e):
            raise ValueError(f"the runs wrote other edits at step {e['step']} (cases {mine.get('case_ids')} / "
                             f"{e.get('case_ids')}, ||Delta||_F {mine.get('delta_norm')} / {e.get('delta_norm')})")
    have = {p["step"] for p in primary.get("evals") or []}
    borrowed = [dict(p, pooled_from=str(twin.get("config", {}).get("out_dir") or "twin"))
                for p in twin.get("evals") or [] if p["step"] not in have]
    return dict(primary, evals=sorted([*(primary.get("evals") or []), *borrowed], key=lambda p: p["step"]))


def _difference(pair) -> Optional[float]:
    seq, fixed = pair
    return fixed - seq if _number(seq) and _number(fixed) else None


def write_fixed_vs_sequential(pairs: Mapping[str, Tuple[Mapping, Mapping]], dest: Path, note: str = "") -> Path:
    """``fixed-vs-sequential.md`` (every common point: sequential, fixed, fixed - sequential; ``note``
    after the introduction) and ``fixed-vs-sequential.png`` (each metric against edits: sequential
    solid, fixed dashed) in ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rows = fixed_vs_sequential(pairs)
    head = " | ".join(f"{h}: seq / fixed / diff" for _, h, _ in CLOSENESS_METRICS)
    lines = ["# Screening against the sequential protocol", "",
             "Each method's sequential run beside the same run on the bank's fixed targets (z* computed once on "
             "the unedited model): same records, settings, statistics and evaluation sample, so the only "
             "difference is where z* comes from. diff = fixed - sequential.", "", *([note, ""] if note else []),
             f"| method | edits | {head} |", "|---|---|" + "---|" * len(CLOSENESS_METRICS)]
    for row in sorted(rows, key=lambda r: (r["method"], r["step"])):
        cells = [f"{_fmt(row[k][0], f)} / {_fmt(row[k][1], f)} / {_fmt(_difference(row[k]), f)}"
                 for k, _, f in CLOSENESS_METRICS]
        lines.append(f"| {row['method']} | {row['step']} | " + " | ".join(cells) + " |")
    figure = _plot_fixed_vs_sequential(rows, dest / "fixed-vs-sequential.png")
    if figure is not None:
        lines += ["", f"![{figure.stem}]({figure.name})"]
    path = dest / "fixed-vs-sequential.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _plot_fixed_vs_sequential(rows: Sequence[Mapping], path: Path) -> Optional[Path]:
    if not rows:
        return None
    plt = _plt()
    panels = [m for m in CLOSENESS_METRICS if m[0] in ("efficacy", "specificity", "rel_leakage", "perturbation")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for index, method in enumerate(sorted({r["method"] for r in rows})):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["step"])
        for ax, (metric, header, _) in zip(axes, panels):
            for which, style in ((0, "-"), (1, "--")):
                pts = [(r["step"], r[metric][which]) for r in mine if _number(r[metric][which])]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=style, marker="o", markersize=3,
                        color=f"C{index}", label=f"{method} {'fixed' if which else 'sequential'}")
            ax.set_title(header, fontsize=10)
            ax.set_xlabel("edits")
            ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Sequential (solid) against fixed targets (dashed)", fontsize=11)
    return _save(fig, path)
