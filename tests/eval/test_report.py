"""The comparison of runs in progress: each run at its last point, and all of them at the steps
every one of them reached."""

from __future__ import annotations

from betaedit_plugin.eval.report import common_steps_table, write_comparison


def _run(method, steps, leakage_per_step):
    evals = [{"step": s, "efficacy": 1.0 - s / 1000, "ppl": 31.0 + s / 100, "rel_leakage": leakage_per_step * s,
              "perturbation": float(s), "locality_acc": 0.9} for s in steps]
    return {"method": method, "evals": evals, "timing": {"edit_mean_s": 10.0}}


def _rows(table):
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_runs_in_progress_are_compared_at_the_steps_all_reached(tmp_path):
    runs = {"memit": _run("memit", [0, 100, 200], 1e-4), "betaedit": _run("betaedit", [0, 100, 200, 300, 400], 2e-4),
            "alphaedit": _run("alphaedit", [0, 100, 300], 3e-4)}
    table = common_steps_table(runs)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header == ["edits", "method", "efficacy", "ppl", "rel. leakage", "‖D‖_F"]  # locality_acc is no step column
    rows = _rows(table)
    assert [(r[0], r[1]) for r in rows] == [("0", "memit"), ("0", "betaedit"), ("0", "alphaedit"),
                                            ("100", "memit"), ("100", "betaedit"), ("100", "alphaedit")]
    assert rows[4] == ["100", "betaedit", "0.900", "32.00", "2.00e-02", "100.000"]

    path = write_comparison(runs, tmp_path)
    text = path.read_text()
    last, common = text.split("## At the steps every run reached")
    assert "| betaedit | 400 |" in last and "| alphaedit | 300 |" in last and "| memit | 200 |" in last
    assert "| 100 | alphaedit | 0.900 | 32.00 | 3.00e-02 | 100.000 |" in common and "| 200 |" not in common


def test_no_common_table_for_one_run_or_no_shared_step():
    assert common_steps_table({"memit": _run("memit", [0, 100], 1e-4)}) == ""
    assert common_steps_table({"a": _run("memit", [100], 1e-4), "b": _run("betaedit", [200], 1e-4)}) == ""
