"""The screening of fixed-target runs: rows equal to the runs' own results, the choice rule, the
refresh summary, the figures, and the command line (a bank among the directories is left out); a
sequential run beside its fixed-target twin."""

from __future__ import annotations

import json

import pytest

import torch

from betaedit_plugin.eval.screening import (CLOSENESS_METRICS, choose, fixed_vs_sequential, fronts, screening_rows,
                                            screening_table, swept_settings, write_fixed_vs_sequential)
from betaedit_plugin.runner.journal import Journal
from betaedit_plugin.runner import run_experiment, screening

from support.runs import cli
from test_journal import _cfg  # tests/runner is on sys.path (rootdir conftest, no packages)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """A 4-record bank and three 4-edit fixed-target runs on it: BetaEdit lambda1 0 and 30 (tau 2, so
    two refreshes each), AlphaEdit L2 10; evaluated at 2 and 4."""
    tmp = tmp_path_factory.mktemp("screen")
    root = tmp / "screen"
    run_experiment(_cfg(tmp, root / "bank", "mode=bank", "num_edits=4"))
    runs = {"beta-l1_0": ("method=betaedit", "hparams.lambda1=0", "hparams.tau=2"),
            "beta-l1_30": ("method=betaedit", "hparams.lambda1=30", "hparams.tau=2"),
            "alpha-L2_10": ("method=alphaedit", "hparams.L2=10")}
    results = {}
    for name, over in runs.items():
        results[name] = run_experiment(_cfg(tmp, root / name, "num_edits=4", f"targets={root / 'bank'}", *over))
    return tmp, root, results


def test_rows_are_the_runs_own_evaluation_points_with_their_swept_settings(screen):
    _, _, results = screen
    # varied between runs (lambda1), or given on a run's command line though not varied (tau, L2)
    assert swept_settings(results) == {"betaedit": ["lambda1", "tau"], "alphaedit": ["L2"]}
    # where a run computed is not a setting, even when runs differ in it
    elsewhere = {**results["alpha-L2_10"], "hparams": {**results["alpha-L2_10"]["hparams"], "device": "cuda"},
                 "config": {**results["alpha-L2_10"]["config"],
                            "hparams": {**results["alpha-L2_10"]["config"]["hparams"], "device": "cuda"}}}
    assert swept_settings({**results, "alpha-gpu": elsewhere})["alphaedit"] == ["L2"]
    rows = screening_rows(results)
    assert [(r["run"], r["step"]) for r in rows] == [(n, s) for n in results for s in (2, 4)]  # step 0 left out
    for row in rows:
        point = next(p for p in results[row["run"]]["evals"] if p["step"] == row["step"])
        for key in ("efficacy", "generality", "specificity", "ppl", "rel_leakage", "perturbation"):
            assert row[key] == point[key], (row["run"], key)
    assert {r["run"]: r["setting"] for r in rows} == {"beta-l1_0": {"lambda1": 0.0, "tau": 2},
                                                      "beta-l1_30": {"lambda1": 30.0, "tau": 2},
                                                      "alpha-L2_10": {"L2": 10.0}}
    # the refreshes written by each step, as the run recorded them (tau 2: at steps 2 and 4)
    for row in rows:
        refreshes = [e["refresh"] for e in results[row["run"]]["edits"] if e.get("refresh") and e["step"] <= row["step"]]
        assert row["refreshes"] == len(refreshes) == (row["step"] // 2 if row["method"] == "betaedit" else 0)
        angles = [v["max_angle_deg"] for r in refreshes for v in r.values()]
        assert row["max_angle_deg"] == (max(angles) if angles else None)
        if refreshes:
            assert row["min_rank_after"] == min(v["rank_after"] for v in refreshes[-1].values())


def test_the_choice_is_the_lowest_leakage_that_keeps_the_efficacy_floor(screen):
    _, _, results = screen
    rows = screening_rows(results)
    beta = [r for r in rows if r["method"] == "betaedit" and r["step"] == 4]
    assert beta[0]["rel_leakage"] != beta[1]["rel_leakage"]  # lambda1 changes what is written
    low, high = sorted(beta, key=lambda r: r["rel_leakage"])
    chosen = choose(rows, step=4, min_efficacy=0.0)
    assert chosen["betaedit"]["run"] == low["run"] and chosen["alphaedit"]["run"] == "alpha-L2_10"
    # a floor only the leakier run keeps moves the choice to it; one nobody keeps chooses nothing
    above = choose(rows, 4, low["efficacy"] + 1e-9)["betaedit"]
    assert (above or {}).get("run") == (high["run"] if high["efficacy"] > low["efficacy"] else None)
    assert chosen["betaedit"]["ties"] == ([high["setting"]] if high["rel_leakage"] <= 1.01 * low["rel_leakage"] else [])
    # settings whose leakage lies within 1% of the chosen one's are named as ties, others not
    tied = [dict(r, run=f"{r['run']}-twin", setting={**r["setting"], "tau": 3}, rel_leakage=r["rel_leakage"] * f)
            for r in (low,) for f in (1.009, 1.011)]
    got = choose(rows + tied, step=4, min_efficacy=0.0)["betaedit"]
    assert got["run"] == low["run"] and {"lambda1": low["setting"]["lambda1"], "tau": 3} in got["ties"]
    assert len([t for t in got["ties"] if t.get("tau") == 3]) == 1  # the one 1.1% above is no tie
    assert choose(rows, 4, 1.01) == {"betaedit": None, "alphaedit": None}
    assert choose(rows, 3, 0.0) == {"betaedit": None, "alphaedit": None}  # no run evaluated at step 3


def test_the_table_orders_settings_by_value_not_by_run_name():
    def row(run, method, step, **setting):
        return {"run": run, "method": method, "step": step, "setting": setting, "efficacy": 1.0, "refreshes": 0,
                "max_angle_deg": None, "min_rank_after": None}

    rows = [row("b-l1_1000", "betaedit", 250, lambda1=1000.0, tau=100), row("b-l1_3", "betaedit", 500, lambda1=3.0, tau=100),
            row("b-l1_3", "betaedit", 250, lambda1=3.0, tau=100), row("b-l1_300-never", "betaedit", 250, lambda1=300.0, tau=100000),
            row("b-l1_300", "betaedit", 250, lambda1=300.0, tau=100), row("a-L2_10", "alphaedit", 250, L2=10.0)]
    order = [line.split("|")[2:4] for line in screening_table(rows).splitlines()[2:]]
    assert [(s.strip(), int(e)) for s, e in order] == [
        ("L2=10", 250), ("lambda1=3, tau=100", 250), ("lambda1=3, tau=100", 500), ("lambda1=300, tau=100", 250),
        ("lambda1=300, tau=100000", 250), ("lambda1=1000, tau=100", 250)]


def test_the_command_line_writes_the_table_choice_and_figures_without_the_bank(screen):
    tmp, root, results = screen
    dirs = sorted(str(p) for p in root.iterdir() if p.is_dir())
    proc = cli(["screening", *dirs, "--out", str(tmp / "pub"), "--choose-step", "4", "--min-efficacy", "0"], cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    md = (tmp / "pub" / "screening.md").read_text()
    assert md.startswith("# Screening on fixed targets\n\n3 runs;")  # the bank is not a screening run
    chosen = choose(screening_rows(results), 4, 0.0)["betaedit"]
    ties = "; ".join(f"lambda1={t['lambda1']:g}, tau=2" for t in chosen["ties"]) or "–"
    assert (f"| betaedit | lambda1={chosen['setting']['lambda1']:g}, tau=2 | {chosen['efficacy']:.3f} "
            f"| {chosen['rel_leakage']:.2e} | {ties} |") in md
    # the choice + a front at each of 2 steps + 2 runs x 2 steps
    assert md.count("| beta-l1_") == 0 and md.count("| betaedit | lambda1=") == 1 + 2 + 4
    assert md.count("| alphaedit | L2=10 ") == 1 + 2 + 2
    front = fronts(screening_rows(results), 4)["betaedit"]
    # a front's points are named by the setting they differ in (tau=2 is every run's, not named; lambda1, the one
    # swept key, names every point: no common value to say)
    assert "| 4 | betaedit | " + "; ".join(f"lambda1={r['setting']['lambda1']:g} ({r['efficacy']:.3f}, "
                                            f"{r['rel_leakage']:.3g})" for r in front) + f" | {2 - len(front)} | – |" in md
    figures = sorted(p.name for p in (tmp / "pub").glob("*.png"))
    assert figures == ["front-2.png", "front-4.png", "sensitivity-betaedit-lambda1.png"]
    assert all((tmp / "pub" / f).read_bytes()[:8] == PNG for f in figures)
    for f in figures:
        assert f"![{f[:-4]}]({f})" in md
    # the library entry point reads the same directories to the same table
    assert screening(dirs, tmp / "lib", choose_step=4, min_efficacy=0.0).read_text() == md
    bad = cli(["screening", str(tmp / "nowhere")], cwd=tmp)
    assert bad.returncode == 2 and "results.json" in bad.stderr and "does not exist" in bad.stderr
    assert json.loads((root / "bank" / "results.json").read_text())["config"]["mode"] == "bank"


def test_a_sequential_run_beside_its_fixed_target_twin(screen):
    tmp, root, results = screen
    seq = run_experiment(_cfg(tmp, tmp / "seq-l1_30", "num_edits=4", "method=betaedit", "hparams.lambda1=30",
                              "hparams.tau=2"))
    fixed = results["beta-l1_30"]
    # the first z* is optimised on the unedited model in both; later ones only by the sequential run, on the
    # model its earlier edits changed: that is the whole difference between the two runs
    bank, steps = Journal.open(root / "bank").records, Journal.open(tmp / "seq-l1_30").records
    torch.testing.assert_close(steps[0].z_star, bank[0].z_star)
    assert not torch.allclose(steps[3].z_star, bank[3].z_star)
    rows = fixed_vs_sequential({"betaedit": (seq, fixed)})
    assert [(r["method"], r["step"]) for r in rows] == [("betaedit", 2), ("betaedit", 4)]
    for row in rows:
        ours = next(p for p in seq["evals"] if p["step"] == row["step"])
        theirs = next(p for p in fixed["evals"] if p["step"] == row["step"])
        assert ours["n_scored"] == theirs["n_scored"]  # the same evaluation sample
        for key, _, _ in CLOSENESS_METRICS:
            assert row[key] == (ours[key], theirs[key]), key
    md = write_fixed_vs_sequential({"betaedit": (seq, fixed)}, tmp / "closeness").read_text()
    last = rows[-1]
    eff, leak = last["efficacy"], last["rel_leakage"]
    assert (f"| betaedit | 4 | {eff[0]:.3f} / {eff[1]:.3f} / {eff[1] - eff[0]:.3f} |") in md
    assert f"{leak[0]:.2e} / {leak[1]:.2e} / {leak[1] - leak[0]:.2e}" in md
    assert (tmp / "closeness" / "fixed-vs-sequential.png").read_bytes()[:8] == PNG
    # a run that never evaluated at the other's steps gives no row
    assert fixed_vs_sequential({"betaedit": (seq, {"evals": [{"step": 0}, {"step": 3}]})}) == []


def test_a_twin_that_wrote_the_same_edits_lends_its_evaluation_points(screen):
    from betaedit_plugin.eval.screening import pool_points

    tmp, root, results = screen
    # the same run as beta-l1_30 (settings, bank), evaluated at 3 instead of 2 and 4, and stopped there
    twin = run_experiment(_cfg(tmp, tmp / "twin-l1_30", "num_edits=4", f"targets={root / 'bank'}", "method=betaedit",
                               "hparams.lambda1=30", "hparams.tau=2", "eval_every=3", "stop_after=3"))
    fixed = results["beta-l1_30"]
    pooled = pool_points(twin, fixed)
    assert [p["step"] for p in pooled["evals"]] == [0, 2, 3, 4]  # 2 and 4 borrowed, past the twin's last step too
    assert [p.get("pooled_from") is not None for p in pooled["evals"]] == [False, True, False, True]
    assert {k: v for k, v in pooled["evals"][1].items() if k != "pooled_from"} == fixed["evals"][1]
    assert pooled["edits"] == twin["edits"] and twin["evals"] == [p for p in pooled["evals"] if "pooled_from" not in p]
    # other edits (another lambda1): refused, naming the first step where they differ
    with pytest.raises(ValueError, match=r"wrote other edits at step 1"):
        pool_points(twin, results["beta-l1_0"])
    # the same edits computed elsewhere (float32 sums in another order): within 1e-4 relative, pooled
    nudged = [dict(e, delta_norm={l: v * (1 + 5e-5) for l, v in e["delta_norm"].items()}) for e in fixed["edits"]]
    assert [p["step"] for p in pool_points(twin, dict(fixed, edits=nudged))["evals"]] == [0, 2, 3, 4]
    bigger = [dict(e, delta_norm={l: v * (1 + 5e-4) for l, v in e["delta_norm"].items()}) for e in fixed["edits"]]
    with pytest.raises(ValueError, match=r"wrote other edits at step 1"):
        pool_points(twin, dict(fixed, edits=bigger))
    with pytest.raises(ValueError, match=r"share no journaled step"):
        pool_points(twin, dict(fixed, edits=[]))


def test_a_front_keeps_the_settings_no_other_beats_on_both_leakage_and_efficacy():
    def row(eff, leak, lambda1, method="betaedit", step=250):
        return {"run": f"r{lambda1}", "method": method, "step": step, "setting": {"lambda1": lambda1},
                "efficacy": eff, "rel_leakage": leak}

    rows = [row(0.97, 0.10, 0.0), row(0.95, 0.05, 300.0), row(0.95, 0.05, 301.0),  # an exact tie: both stay
            row(0.94, 0.06, 100.0),  # beaten on both by lambda1 300
            row(0.96, 0.10, 30.0),  # as leaky as lambda1 0 and less effective: beaten
            row(0.95, 0.07, 10.0),  # as effective as lambda1 300 and leakier: beaten
            row(0.86, 0.02, 3000.0), row(0.99, 0.30, 1.0, step=500), row(0.90, 0.04, 0.0, method="memit")]
    got = fronts(rows, 250)
    assert [r["setting"]["lambda1"] for r in got["betaedit"]] == [3000.0, 300.0, 301.0, 0.0]
    assert [r["setting"]["lambda1"] for r in got["memit"]] == [0.0]  # a method's only point is its front
    assert [r["setting"]["lambda1"] for r in fronts(rows, 500)["betaedit"]] == [1.0]


def test_front_labels_name_only_what_differs_from_the_methods_usual_settings(monkeypatch, tmp_path):
    from betaedit_plugin.eval import screening as scr

    def row(method, eff, leak, **setting):
        return {"run": "r", "method": method, "step": 250, "setting": setting, "efficacy": eff, "rel_leakage": leak}

    rows = [row("betaedit", 0.97, 0.10, lambda1=0.0, tau=100, th=0.02), row("betaedit", 0.95, 0.05, lambda1=300.0, tau=100, th=0.02),
            row("betaedit", 0.86, 0.02, lambda1=3000.0, tau=100, th=0.02), row("betaedit", 0.95, 0.05, lambda1=300.0, tau=10, th=0.02),
            row("betaedit", 0.32, 0.004, lambda1=300.0, tau=100, th=0.005), row("memit", 0.97, 0.05, w=1000.0),
            row("betaedit", 0.94, 0.06, lambda1=100.0, tau=100, th=0.02)]  # beaten by lambda1 300
    drawn = {}

    def save(fig, path):
        drawn["texts"] = [t.get_text() for t in fig.axes[0].texts]
        drawn["hollow"] = [(x, y) for line in fig.axes[0].lines if line.get_fillstyle() == "none"
                           for x, y in zip(line.get_xdata(), line.get_ydata())]

    monkeypatch.setattr(scr, "_save", save)
    scr.plot_front(rows, 250, {}, tmp_path / "front.png")
    # the usual BetaEdit point (all settings at their most common values) is named by its first swept
    # setting; a method with one point is named by its whole setting; a dominated point is drawn hollow, unlabelled
    assert sorted(drawn["texts"]) == sorted(["lambda1=0", "lambda1=300", "lambda1=3000", "tau=10", "th=0.005", "w=1000"])
    assert drawn["hollow"] == [(0.06, 0.94)]
    # the table names the front's points as the figure does (exact ties by setting: tau 10 before 100) and says
    # the values a point does not name
    table = scr.fronts_table(rows).splitlines()
    assert table[2:] == [
        "| 250 | betaedit | th=0.005 (0.320, 0.004); lambda1=3000 (0.860, 0.02); tau=10 (0.950, 0.05); lambda1=300 "
        "(0.950, 0.05); lambda1=0 (0.970, 0.1) | 1 | lambda1=300, tau=100, th=0.02 |",
        "| 250 | memit | w=1000 (0.970, 0.05) | 0 | – |"]


def test_a_switch_added_later_is_a_setting_only_where_a_run_turned_it_on(screen):
    _, _, results = screen
    assert results["beta-l1_0"]["hparams"]["recollect_c0"] is False  # today's runner writes every field
    # a run written before the field existed lacks it: as if at its neutral value, so nothing is swept
    older = {**results["beta-l1_30"], "hparams": {k: v for k, v in results["beta-l1_30"]["hparams"].items()
                                                  if k != "recollect_c0"}}
    assert swept_settings({**results, "beta-l1_30": older})["betaedit"] == ["lambda1", "tau"]
    on = {**results["beta-l1_30"], "hparams": {**results["beta-l1_30"]["hparams"], "recollect_c0": True},
          "config": {**results["beta-l1_30"]["config"],
                     "hparams": {**results["beta-l1_30"]["config"]["hparams"], "recollect_c0": True}}}
    runs = {**results, "beta-l1_30": older, "beta-rc0": on}
    assert swept_settings(runs)["betaedit"] == ["lambda1", "recollect_c0", "tau"]
    rows = screening_rows(runs)
    assert {r["run"]: r["setting"]["recollect_c0"] for r in rows if r["method"] == "betaedit"} == \
        {"beta-l1_0": False, "beta-l1_30": False, "beta-rc0": True}
    table = screening_table(rows)
    assert "| lambda1=30, recollect_c0=true, tau=2 |" in table and "| lambda1=30, recollect_c0=false, tau=2 |" in table


def test_a_run_on_other_statistics_is_listed_but_not_chosen_between_or_drawn(screen, monkeypatch, tmp_path):
    from betaedit_plugin.eval import screening as scr

    _, _, results = screen
    # BetaEdit lambda1 30 again, its C0 from twice the corpus, and a leakage (against that C0) below every other
    base = results["beta-l1_30"]
    other = {**base, "hparams": {**base["hparams"], "mom2_n_samples": 2 * base["hparams"]["mom2_n_samples"]},
             "evals": [dict(p, rel_leakage=p["rel_leakage"] / 100) for p in base["evals"]]}
    runs = {**results, "beta-l1_30-c0": other}
    rows = screening_rows(runs)
    assert {r["run"] for r in scr.on_shared_c0(rows)} == set(results)  # the screening's statistics: most runs'
    assert any(r["run"] == "beta-l1_30-c0" and r["setting"]["mom2_n_samples"] == other["hparams"]["mom2_n_samples"]
               for r in rows)  # listed, with the setting it differs in
    assert choose(rows, 4, 0.0)["betaedit"]["run"] == choose(screening_rows(results), 4, 0.0)["betaedit"]["run"]
    drawn = {}
    monkeypatch.setattr(scr, "_save", lambda fig, path: drawn.setdefault("x", [x for line in fig.axes[0].lines
                                                                                for x in line.get_xdata()]))
    scr.plot_front(rows, 4, {}, tmp_path / "front.png")
    assert min(drawn["x"]) == min(r["rel_leakage"] for r in scr.on_shared_c0(rows) if r["step"] == 4)
    assert scr.plot_sensitivity(rows, "betaedit", "mom2_n_samples", tmp_path / "s.png") is None
