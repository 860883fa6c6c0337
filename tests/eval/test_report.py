"""The comparison of runs in progress: each run at its last point, and the runs at each step two or more
of them reached."""

from __future__ import annotations

import math

import pytest

from betaedit_plugin.eval.report import common_steps_table, write_comparison


def _run(method, steps, leakage_per_step):
    evals = [{"step": s, "efficacy": 1.0 - s / 1000, "ppl": 31.0 + s / 100, "rel_leakage": leakage_per_step * s,
              "perturbation": float(s), "locality_acc": 0.8 - s / 2000, "fluency": 4.5} for s in steps]
    return {"method": method, "evals": evals, "timing": {"edit_mean_s": 10.0}}


def _rows(table):
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_runs_are_compared_at_every_step_two_or_more_of_them_reached(tmp_path):
    runs = {"memit": _run("memit", [0, 100, 200], 1e-4), "betaedit": _run("betaedit", [0, 100, 200, 300, 400], 2e-4),
            "alphaedit": _run("alphaedit", [0, 100, 300], 3e-4)}
    table = common_steps_table(runs)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    # the metrics the runs have, in TABLE_COLUMNS' order; fluency is no step column
    assert header == ["edits", "method", "efficacy", "locality acc", "ppl", "rel. leakage", "‖D‖_F"]
    rows = _rows(table)
    # each step with the runs that reached it: one run's slower progress does not hide the others' later steps
    assert [(r[0], r[1]) for r in rows] == [("0", "memit"), ("0", "betaedit"), ("0", "alphaedit"),
                                            ("100", "memit"), ("100", "betaedit"), ("100", "alphaedit"),
                                            ("200", "memit"), ("200", "betaedit"), ("300", "betaedit"), ("300", "alphaedit")]
    assert rows[4] == ["100", "betaedit", "0.900", "0.750", "32.00", "2.00e-02", "100.000"]
    assert rows[9] == ["300", "alphaedit", "0.700", "0.650", "34.00", "9.00e-02", "300.000"]

    path = write_comparison(runs, tmp_path)
    text = path.read_text()
    last, common = text.split("## At the steps two or more runs reached")
    assert "| betaedit | 400 |" in last and "| alphaedit | 300 |" in last and "| memit | 200 |" in last
    assert "| 100 | alphaedit | 0.900 | 0.750 | 32.00 | 3.00e-02 | 100.000 |" in common and "| 400 |" not in common  # one run alone


def test_no_common_table_for_one_run_or_no_shared_step():
    assert common_steps_table({"memit": _run("memit", [0, 100], 1e-4)}) == ""
    assert common_steps_table({"a": _run("memit", [100], 1e-4), "b": _run("betaedit", [200], 1e-4)}) == ""


# ---------------------------------------------------------------------------- differences and their sampling error
def _point(step, outcomes, cases="abc"):
    point = {"step": step, "n_scored": len(outcomes["efficacy"]), "scored_cases": cases, "outcomes": outcomes}
    point.update({m: w.count("1") / len(w) for m, w in outcomes.items()})
    return point


def test_a_paired_difference_is_the_mean_and_standard_error_of_the_case_by_case_differences():
    import statistics

    from betaedit_plugin.eval.report import Z95, proportion_difference

    a = _point(100, {"efficacy": "11011110", "specificity": "10101010"})
    b = _point(100, {"efficacy": "10011100", "specificity": "10101010"})
    d = [1 - 1, 1 - 0, 0 - 0, 1 - 1, 1 - 1, 1 - 1, 1 - 0, 0 - 0]
    diff, half, kind, n = proportion_difference(a, b, "efficacy")
    assert (kind, n) == ("paired", 8)
    assert diff == pytest.approx(statistics.fmean(d)) and diff == pytest.approx(a["efficacy"] - b["efficacy"])
    assert half == pytest.approx(1.959964 * statistics.stdev(d) / 8 ** 0.5, rel=1e-6)
    assert proportion_difference(a, b, "specificity")[:2] == (0.0, 0.0)  # the same outcome on every case
    assert Z95 == pytest.approx(statistics.NormalDist().inv_cdf(0.975), rel=1e-12)


def test_points_on_other_cases_or_without_outcomes_get_the_wider_unpaired_interval():
    from betaedit_plugin.eval.report import proportion_difference

    a = _point(100, {"efficacy": "11011110"})
    other_cases = _point(100, {"efficacy": "10011100"}, cases="xyz")
    no_outcomes = {k: v for k, v in other_cases.items() if k != "outcomes"}
    expected = 1.959964 * ((0.75 * 0.25 + 0.5 * 0.5) / 8) ** 0.5
    for b in (other_cases, no_outcomes):
        diff, half, kind, n = proportion_difference(a, b, "efficacy")
        assert (kind, n) == ("unpaired", 8) and diff == pytest.approx(0.25) and half == pytest.approx(expected, rel=1e-6)
    paired = proportion_difference(a, _point(100, {"efficacy": "10011100"}), "efficacy")[1]
    assert paired < expected  # sharing the cases is what makes the paired one narrower
    assert proportion_difference(a, b, "generality") is None


def test_token_locality_differences_are_paired_over_each_prompts_share_of_agreeing_tokens():
    import statistics

    from betaedit_plugin.eval.report import differences_table, proportion_difference

    a = _point(100, {"efficacy": "111", "locality_acc": "1111 10 011"})
    b = _point(100, {"efficacy": "101", "locality_acc": "0111 00 111"})
    d = [1.0 - 0.75, 0.5 - 0.0, 2 / 3 - 1.0]
    diff, half, kind, n = proportion_difference(a, b, "locality_acc")
    assert (kind, n) == ("paired", 3) and diff == pytest.approx(statistics.fmean(d), rel=1e-12)
    assert half == pytest.approx(1.959964 * statistics.stdev(d) / 3 ** 0.5, rel=1e-6)
    # a mean of shares is no binomial proportion: on other cases, or without the tokens, no interval
    assert proportion_difference(a, _point(100, b["outcomes"], cases="xyz"), "locality_acc") is None
    assert proportion_difference(a, _point(100, {"efficacy": "101"}), "locality_acc") is None
    table = differences_table({"alphaedit": {"evals": [b]}, "betaedit": {"evals": [a]}})
    assert ("| difference | edits | efficacy | generality | specificity | rewrite acc | rephrase acc | locality acc | "
            "ppl ratio | cases | interval |") in table
    half_eff = 1.959964 * statistics.stdev([0, 1, 0]) / 3 ** 0.5
    assert table.splitlines()[-1] == (f"| betaedit minus alphaedit | 100 | +0.333 ± {half_eff:.3f} | – | – | – | – | "
                                      f"{statistics.fmean(d):+.3f} ± {1.959964 * statistics.stdev(d) / 3 ** 0.5:.3f} | – | 3 | paired |")


def test_token_accuracy_differences_are_paired_over_each_prompts_share_of_target_tokens():
    import statistics

    from betaedit_plugin.eval.report import difference_series, differences_table, proportion_difference

    # ZsRE's headline metrics: the rewrite and rephrase prompts' target tokens the argmax gets right
    a = _point(100, {"efficacy": "111", "rewrite_acc": "111 10 1", "rephrase_acc": "011 10 0"})
    b = _point(100, {"efficacy": "101", "rewrite_acc": "011 00 1", "rephrase_acc": "001 10 1"})
    for metric, d in (("rewrite_acc", [1 - 2 / 3, 0.5, 0.0]), ("rephrase_acc", [1 / 3, 0.0, -1.0])):
        diff, half, kind, n = proportion_difference(a, b, metric)
        assert (kind, n) == ("paired", 3) and diff == pytest.approx(statistics.fmean(d), rel=1e-12), metric
        assert half == pytest.approx(1.959964 * statistics.stdev(d) / 3 ** 0.5, rel=1e-6), metric
        # means of shares, not proportions: no interval without the tokens of both on the same cases
        assert proportion_difference(a, _point(100, b["outcomes"], cases="xyz"), metric) is None
        assert proportion_difference(a, _point(100, {"efficacy": "101"}), metric) is None
    rows = _rows("\n".join(differences_table({"alphaedit": {"evals": [b]}, "betaedit": {"evals": [a]}}).splitlines()[2:]))
    assert rows[0][5:7] == [f"{statistics.fmean([1 - 2 / 3, 0.5, 0.0]):+.3f} ± "
                            f"{1.959964 * statistics.stdev([1 - 2 / 3, 0.5, 0.0]) / 3 ** 0.5:.3f}",
                            f"{statistics.fmean([1 / 3, 0.0, -1.0]):+.3f} ± {1.959964 * statistics.stdev([1 / 3, 0.0, -1.0]) / 3 ** 0.5:.3f}"]
    # a paraphrase per prompt, two for the first request: the request is the unit (clustered)
    a2 = dict(a, outcomes=dict(a["outcomes"], rephrase_acc="011 1 10 0", groups={"rephrase_acc": "2 1 1"}))
    b2 = dict(b, outcomes=dict(b["outcomes"], rephrase_acc="001 0 10 1", groups={"rephrase_acc": "2 1 1"}))
    diff, half, kind, n = proportion_difference(a2, b2, "rephrase_acc")
    d = [1 / 3, 1.0, 0.0, -1.0]
    assert (kind, n) == ("paired", 3) and diff == pytest.approx(statistics.fmean(d), rel=1e-12)
    assert half == pytest.approx(1.959964 * _cluster_se(d, [2, 1, 1]), rel=1e-6)
    series = difference_series({"alphaedit": {"method": "alphaedit", "evals": [b]}, "betaedit": {"method": "betaedit", "evals": [a]}})
    assert set(series["betaedit minus alphaedit"]) == {"efficacy", "rewrite_acc", "rephrase_acc"}


def _cluster_se(values, sizes):
    """float64 reference: the cluster-robust (sandwich) standard error of the mean of ``values``, a regression
    on a constant with ``sizes`` consecutive values a cluster, with the small-sample factor C / (C - 1)."""
    import numpy as np

    u = np.asarray(values, dtype=np.float64)
    x = np.ones((len(u), 1))
    u = u - np.linalg.lstsq(x, u, rcond=None)[0][0]
    bounds = np.cumsum([0, *sizes])
    scores = [x[i:j].T @ u[i:j] for i, j in zip(bounds[:-1], bounds[1:]) if j > i]
    bread = np.linalg.inv(x.T @ x)
    c = len(scores)
    cov = c / (c - 1) * bread @ sum(np.outer(g, g) for g in scores) @ bread
    return float(np.sqrt(cov[0, 0]))


def test_the_standard_error_of_a_mean_counts_each_request_once():
    import numpy as np

    from betaedit_plugin.eval.report import mean_and_se

    values = np.random.default_rng(0).integers(-1, 2, size=40).astype(float).tolist()
    mean, se, units = mean_and_se(values)  # one value a request: the sample standard deviation / sqrt(n)
    assert units == 40 and mean == pytest.approx(np.mean(values), rel=1e-12)
    assert se == pytest.approx(np.std(values, ddof=1) / 40 ** 0.5, rel=1e-12)
    assert mean_and_se(values, [1] * 40) == (mean, se, 40)
    sizes = [3, 0, 1, 5, 2, 4, 1, 0, 6, 3, 2, 2, 5, 1, 3, 2]  # requests with several values, two with none
    mean, se, units = mean_and_se(values, sizes)
    assert units == 14 and mean == pytest.approx(np.mean(values), rel=1e-12)
    assert se == pytest.approx(_cluster_se(values, sizes), rel=1e-10)
    # a request whose 4 values are copies of one value is worth one value, not four
    copies = [v for v in values[:10] for _ in range(4)]
    assert mean_and_se(copies, [4] * 10) == pytest.approx(mean_and_se(values[:10]), rel=1e-12)
    assert mean_and_se(copies)[1] < 0.55 * mean_and_se(values[:10])[1]  # what counting each copy would claim
    with pytest.raises(ValueError, match=r"add up to 30 values, not the 40 given"):
        mean_and_se(values, [3] * 10)
    assert math.isnan(mean_and_se([1.0, 0.0], [2])[1])  # one unit: no error estimate


def test_paired_differences_over_requests_with_several_prompts_are_clustered_by_request():
    from betaedit_plugin.eval.report import Z95, proportion_difference

    outcomes_a = {"efficacy": "111", "specificity": "1111001100", "locality_acc": "11 10 1 0 11 01 1 1 1 0"}
    outcomes_b = {"efficacy": "101", "specificity": "0000001110", "locality_acc": "01 10 0 0 11 11 1 1 0 0"}
    groups = {"specificity": "4 3 3", "locality_acc": "4 3 3"}  # 10 neighbourhood prompts of 3 requests
    a, b = _point(100, dict(outcomes_a)), _point(100, dict(outcomes_b))
    for point in (a, b):
        point["outcomes"]["groups"] = dict(groups)
    d = [int(x) - int(y) for x, y in zip(outcomes_a["specificity"], outcomes_b["specificity"])]
    diff, half, kind, n = proportion_difference(a, b, "specificity")
    assert (kind, n) == ("paired", 3) and diff == pytest.approx(0.3, rel=1e-12)
    assert half == pytest.approx(Z95 * _cluster_se(d, [4, 3, 3]), rel=1e-10)
    unclustered = {k: v for k, v in b.items() if k != "outcomes"} | {"outcomes": outcomes_b}
    a_alone = {k: v for k, v in a.items() if k != "outcomes"} | {"outcomes": outcomes_a}
    assert half > proportion_difference(a_alone, unclustered, "specificity")[1]  # 4 prompts alike are not 4 cases
    shares = [(1, 0.5), (0.5, 0.5), (1, 0), (0, 0), (1, 1), (0.5, 1), (1, 1), (1, 1), (1, 0), (0, 0)]
    diff, half, kind, n = proportion_difference(a, b, "locality_acc")
    assert (kind, n) == ("paired", 3)
    assert half == pytest.approx(Z95 * _cluster_se([x - y for x, y in shares], [4, 3, 3]), rel=1e-10)
    # a point that does not say how its comparisons group is not paired with one that does
    assert proportion_difference(a, unclustered, "specificity")[2] == "unpaired"
    assert proportion_difference(a, unclustered, "locality_acc") is None


def test_the_comparison_shows_each_betaedit_run_minus_each_other_method_and_each_variant_minus_its_run(tmp_path):
    from betaedit_plugin.eval.report import differences_table

    runs = {
        "memit": {"method": "memit", "evals": [_point(0, {"efficacy": "0000"}), _point(100, {"efficacy": "1100"}),
                                                _point(200, {"efficacy": "1000"})]},
        "alphaedit": {"method": "alphaedit", "evals": [_point(0, {"efficacy": "0000"}), _point(100, {"efficacy": "1110"})]},
        "betaedit": {"method": "betaedit", "evals": [_point(0, {"efficacy": "0000"}), _point(100, {"efficacy": "1111"}),
                                                      _point(200, {"efficacy": "1111"})]},
        # a variant (another setting) still at its first point: compared where it is, not pulling the others back
        "betaedit (variant)": {"method": "betaedit", "evals": [_point(0, {"efficacy": "0000"}),
                                                                _point(100, {"efficacy": "0111"})]},
    }
    table = differences_table(runs)
    assert table.startswith("Each pair at the last step both runs reached")
    rows = _rows("\n".join(table.splitlines()[2:]))
    none = ["–"] * 5  # generality, specificity, the token accuracies, token locality: not kept here
    assert rows == [["betaedit minus memit", "200", "+0.750 ± 0.490", *none, "–", "4", "paired"],
                    ["betaedit minus alphaedit", "100", "+0.250 ± 0.490", *none, "–", "4", "paired"],
                    ["betaedit (variant) minus memit", "100", "+0.250 ± 0.938", *none, "–", "4", "paired"],
                    ["betaedit (variant) minus alphaedit", "100", "+0.000 ± 0.800", *none, "–", "4", "paired"],
                    # and the variant against the run of its own method that it varies (an ablation's effect)
                    ["betaedit (variant) minus betaedit", "100", "-0.250 ± 0.490", *none, "–", "4", "paired"]]
    assert differences_table(runs, reference="memit").splitlines()[4].startswith("| memit minus alphaedit | 100 | -0.250 ± 0.490 |")
    assert "## Differences and their sampling error" in write_comparison(runs, tmp_path).read_text()
    assert differences_table({"memit": runs["memit"]}) == ""


def test_the_paired_differences_at_every_point_are_the_curves_of_differences_png(tmp_path):
    from betaedit_plugin.eval.report import difference_series, proportion_difference

    memit = [_point(0, {"efficacy": "0000"}), _point(100, {"efficacy": "1100", "specificity": "1111"}),
             _point(200, {"efficacy": "1000", "specificity": "1110"}), _point(300, {"efficacy": "1000"})]
    beta = [_point(0, {"efficacy": "0000"}), _point(100, {"efficacy": "1111", "specificity": "1011"}),
            _point(200, {"efficacy": "1101", "specificity": "1111"}),
            {k: v for k, v in _point(300, {"efficacy": "1110"}).items() if k != "outcomes"}]  # kept no outcomes
    runs = {"memit": {"method": "memit", "evals": memit}, "betaedit": {"method": "betaedit", "evals": beta}}
    series = difference_series(runs)
    # steps after 0 that both evaluated on the same cases with their outcomes: 100 and 200, not the unpaired 300
    assert list(series) == ["betaedit minus memit"] and set(series["betaedit minus memit"]) == {"efficacy", "specificity"}
    got = series["betaedit minus memit"]["efficacy"]
    assert [s for s, _, _ in got] == [100, 200]
    for (step, diff, half), a, b in zip(got, beta[1:3], memit[1:3]):
        assert (diff, half) == pytest.approx(proportion_difference(a, b, "efficacy")[:2])
    assert got[1][1] == pytest.approx(0.5)  # 3 of 4 against 1 of 4
    # the figure is drawn by write_comparison where some pair has two points, and only then
    write_comparison(runs, tmp_path / "two")
    assert (tmp_path / "two" / "differences.png").stat().st_size > 10_000
    assert "![differences](differences.png)" in (tmp_path / "two" / "comparison.md").read_text()
    runs["memit"]["evals"] = memit[:2]
    write_comparison(runs, tmp_path / "one")
    assert not (tmp_path / "one" / "differences.png").exists()  # one point is the table's, not a curve


def test_a_point_lacks_outcomes_where_a_by_case_metric_has_a_value_but_not_its_cases():
    from betaedit_plugin.eval.report import lacks_outcomes

    full = _point(100, {"efficacy": "10", "generality": "11", "specificity": "01", "rewrite_acc": "1 10",
                        "rephrase_acc": "01 1", "locality_acc": "11 10"})
    assert not lacks_outcomes(full)
    for metric in ("rewrite_acc", "rephrase_acc", "locality_acc"):  # a point written before it kept its tokens
        assert lacks_outcomes(dict(full, outcomes={k: v for k, v in full["outcomes"].items() if k != metric})), metric
    assert lacks_outcomes({k: v for k, v in full.items() if k != "outcomes"})
    assert lacks_outcomes(dict(full, step=0, outcomes={}))  # the unedited model's too: the changes from it are paired
    assert not lacks_outcomes({"step": 100, "efficacy": float("nan"), "outcomes": {}})  # no value, nothing to keep


def test_t_quantiles_against_the_printed_table():
    from betaedit_plugin.eval.report import t_quantile

    # Student's t, two-sided 95% (and one 90%) points as printed in statistical tables
    for p, df, printed in ((0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 7, 2.3646), (0.975, 30, 2.0423),
                           (0.95, 10, 1.8125), (0.975, 1000, 1.9623)):
        assert t_quantile(p, df) == pytest.approx(printed, abs=1e-4), (p, df)
    with pytest.raises(ValueError, match=r"t_quantile\(p=0.4, df=3\): expected 0.5 < p < 1 and df >= 1"):
        t_quantile(0.4, 3)


def _ppl_point(step, windows):
    import math

    total, count = sum(t for t, _ in windows), sum(n for _, n in windows)
    return {"step": step, "ppl": math.exp(total / count), "outcomes": {"ppl": [list(w) for w in windows]}}


def test_a_perplexity_ratio_is_paired_over_the_texts_windows():
    import math
    import statistics

    from betaedit_plugin.eval.report import differences_table, lacks_outcomes, ppl_ratio, t_quantile

    a = _ppl_point(100, [(300.0, 100), (250.0, 100), (420.0, 100), (330.0, 100)])
    b = _ppl_point(100, [(280.0, 100), (245.0, 100), (380.0, 100), (300.0, 100)])
    ratio, low, high, k = ppl_ratio(a, b)
    assert k == 4 and ratio == pytest.approx(a["ppl"] / b["ppl"], rel=1e-12)  # the ratio of the two perplexities
    d = [0.20, 0.05, 0.40, 0.30]  # each window's mean NLL difference; equal windows: Student's t over them
    half = t_quantile(0.975, 3) * statistics.stdev(d) / math.sqrt(4)
    assert (math.log(low), math.log(high)) == pytest.approx((statistics.fmean(d) - half, statistics.fmean(d) + half))
    # windows of other sizes weigh by their tokens: the log ratio is still that of the perplexities
    c = _ppl_point(100, [(300.0, 100), (120.0, 50)])
    e = _ppl_point(100, [(290.0, 100), (100.0, 50)])
    assert ppl_ratio(c, e)[0] == pytest.approx(c["ppl"] / e["ppl"], rel=1e-12)
    assert ppl_ratio(a, c) is None  # another text (other windows)
    assert ppl_ratio(a, {"step": 100, "ppl": 30.0}) is None  # a point that kept no windows
    assert lacks_outcomes({"step": 100, "ppl": 30.0, "outcomes": {}}) and not lacks_outcomes(a)
    runs = {"memit": {"method": "memit", "evals": [b]}, "betaedit": {"method": "betaedit", "evals": [a]}}
    row = differences_table(runs).splitlines()[4]
    assert row == f"| betaedit minus memit | 100 | – | – | – | – | – | – | {ratio:.3f} ({low:.3f}-{high:.3f}) | – | – |"


def test_each_run_is_compared_with_the_unedited_model_at_its_last_point(tmp_path):
    import math
    import statistics

    from betaedit_plugin.eval.report import Z95, t_quantile, unedited_table

    unedited = _point(0, {"efficacy": "0000", "specificity": "1111"}, cases="all")
    unedited["outcomes"]["ppl"] = [[300.0, 100], [250.0, 100], [400.0, 100]]
    unedited["ppl"] = math.exp(950.0 / 300)
    last = _point(300, {"efficacy": "1111", "specificity": "1010"}, cases="all")  # the final point: every edit scored
    last["outcomes"]["ppl"] = [[330.0, 100], [255.0, 100], [460.0, 100]]
    last["ppl"] = math.exp(1045.0 / 300)
    sampled = dict(_point(200, {"efficacy": "11", "specificity": "10"}, cases="two"), ppl=30.0)  # kept no windows
    runs = {"memit": {"method": "memit", "evals": [unedited, sampled, last]},
            "alphaedit": {"method": "alphaedit", "evals": [sampled]},  # no step 0: left out
            "betaedit": {"method": "betaedit", "evals": [unedited, sampled]}}
    rows = _rows("\n".join(unedited_table(runs).splitlines()[2:]))
    d = [0, -1, 0, -1]  # specificity, case by case, 2 of 4 neighbourhood answers changed
    spec = f"{statistics.fmean(d):+.3f} ± {Z95 * statistics.stdev(d) / 2:.3f}"
    w = [0.3, 0.05, 0.6]  # each window's mean NLL difference
    half = t_quantile(0.975, 2) * statistics.stdev(w) / math.sqrt(3)
    ratio = f"{last['ppl'] / unedited['ppl']:.3f} ({math.exp(statistics.fmean(w) - half):.3f}-{math.exp(statistics.fmean(w) + half):.3f})"
    assert rows == [["memit", "300", spec, ratio, "4", "paired"],
                    # a sampled point (other cases than step 0's), without windows: unpaired, no ratio
                    ["betaedit", "200", f"-0.500 ± {Z95 * math.sqrt(0.5 * 0.5 / 2 + 1 * 0 / 4):.3f}", "–", "2", "unpaired"]]
    assert "## Against the unedited model" in write_comparison(runs, tmp_path).read_text()
    assert unedited_table({"alphaedit": runs["alphaedit"]}) == ""


def test_compare_names_the_directory_of_each_label_so_a_minus_row_says_which_run_is_subtracted(tmp_path):
    """Two runs of one method, given in the reverse of their directories' order: the plain label is the
    first directory by name whatever the command line's order, and comparison.md says so."""
    import json

    from betaedit_plugin.runner.compare import compare

    runs = {"betaedit-a": "1111", "betaedit-b": "1100"}
    for name, efficacy in runs.items():
        (tmp_path / name).mkdir()
        results = {"method": "betaedit", "evals": [_point(0, {"efficacy": "0000"}), _point(100, {"efficacy": efficacy})]}
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    text = compare([tmp_path / "betaedit-b", tmp_path / "betaedit-a"], tmp_path / "out").read_text()
    assert "| betaedit | `../betaedit-a` |" in text and "| betaedit (betaedit-b) | `../betaedit-b` |" in text
    # b minus a: 0.5 - 1.0
    assert "| betaedit (betaedit-b) minus betaedit | 100 | -0.500 ± " in text
