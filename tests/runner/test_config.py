"""The runner's configuration: generated from the method registry, validated by OmegaConf, and
today's results.json still compared."""

from __future__ import annotations

import dataclasses
import json

import pytest

from betaedit_plugin.methods import METHODS
from betaedit_plugin.runner.config import (
    ConfigError,
    group_options,
    hparams_override_fields,
    run_config_class,
    validate_config,
)


def test_hparams_overrides_are_the_fields_of_the_registered_methods():
    fields = set(hparams_override_fields())
    for method in METHODS:
        own = {f.name for f in dataclasses.fields(method.hparams_class) if f.metadata.get("runner", True)}
        assert own <= fields
    # the runner sets these itself; they are not overrides
    assert not {"alg_name", "model_name", "batch_size", "model_parallel", "mom2_adjustment"} & fields
    # the same 28 keys as the runner had before the registry (identities of old runs are unchanged)
    assert {"layers", "lambda1", "lambda2", "tau", "L2", "nullspace_threshold", "mom2_update_weight"} <= fields


def test_method_group_is_the_registry():
    assert group_options("method") == sorted(m.cli_name for m in METHODS)


def _cfg(**over):
    base = {
        "method": {"name": "betaedit", "alg": "BetaEdit"},
        "model": {"name": "tiny-llama", "path": "tiny-llama", "hparams_file": "smollm2-135m"},
        "data": {"name": "counterfact", "split": "edit", "path": None},
        "out_dir": "out",
    }
    base.update(over)
    return base


def test_a_plain_mapping_is_validated_and_completed():
    cfg = validate_config(_cfg(num_edits=3))
    assert cfg["num_edits"] == 3 and cfg["eval"]["max_cases"] == 200 and cfg["hparams"]["lambda1"] is None
    assert cfg["run_root"] == "runs/tiny-llama_counterfact_n3"


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"num_edits": 0}, "num_edits=0: expected an int >= 1"),
        ({"stop_after": 5, "num_edits": 5}, "stop_after=5: must be below num_edits=5"),
        ({"eval": {"ppl_tokens": 1}}, "eval.ppl_tokens=1"),
        ({"hparams": {"lamda1": 3}}, "lamda1"),
        ({"hparams": {"tau": "often"}}, "hparams.tau"),
        ({"method": {"name": "x", "alg": "BetaEdt"}}, "Did you mean 'BetaEdit'"),
        ({"data": {"name": "zsr"}}, "Did you mean 'zsre'"),
    ],
)
def test_bad_values_name_the_key(over, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        validate_config(_cfg(**over))


def test_the_schema_has_help_for_every_run_key():
    for f in dataclasses.fields(run_config_class()):
        assert f.metadata.get("help"), f.name


def test_compare_reads_results_of_the_runner_before_the_registry(tmp_path):
    """results.json format 1 as written by the runner at 6198c34 (a trimmed real file)."""
    from betaedit_plugin.runner import compare

    def results(method, eff):
        return {
            "format": 1, "method": method, "alg_name": {"memit": "BE-MEMIT", "betaedit": "BetaEdit"}[method],
            "model": "smollm2-135m", "data": "counterfact", "config": {"num_edits": 20}, "identity": {"num_edits": 20},
            "config_hash": "x", "hparams": {}, "status": "complete", "edits_done": 20,
            "evals": [{"step": 0, "efficacy": 0.3, "ppl": 31.8, "perturbation": 0.0, "leakage/L4": 0.0},
                      {"step": 20, "efficacy": eff, "ppl": 31.9, "perturbation": 40.0, "leakage/L4": 1e-3}],
            "edits": [{"step": 20, "case_ids": [19], "seconds": 8.0, "delta_norm": {"4": 1.0}, "refreshed": False}],
            "timing": {"statistics_s": 1.0, "projector_s": 0.5, "edit_total_s": 160.0, "edit_mean_s": 8.0,
                       "eval_total_s": 3.0},
        }

    for method, eff in (("betaedit", 1.0), ("memit", 0.9)):
        (tmp_path / method).mkdir()
        (tmp_path / method / "results.json").write_text(json.dumps(results(method, eff)))
    path = compare([tmp_path / "betaedit", tmp_path / "memit"], tmp_path / "cmp")
    table = path.read_text()
    assert table.index("| memit | 20 |") < table.index("| betaedit | 20 |")  # the registry's order
    assert (tmp_path / "cmp" / "efficacy.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "over, field, value",
    [
        ({"num_edits": 0}, "num_edits", 0),
        ({"stop_after": 5, "num_edits": 5}, "stop_after", 5),
        ({"eval": {"ppl_tokens": 1}}, "eval.ppl_tokens", 1),
        ({"data": {"name": "zsr"}}, "data.name", "zsr"),
        ({"mode": "x"}, "mode", "x"),
    ],
)
def test_a_config_error_carries_its_field_and_value(over, field, value):
    with pytest.raises(ConfigError) as info:
        validate_config(_cfg(**over))
    err = info.value
    assert (err.field, err.value) == (field, value)
    assert str(err) == err.format() and str(err).startswith(f"{field}={value!r}: {err.problem}")


def test_a_config_error_from_merging_hparams_names_its_field_and_fix():
    from betaedit_plugin.runner.config import build_hparams

    cfg = validate_config(_cfg(method={"name": "memit", "alg": "MEMIT"}, hparams={"tau": 3}))
    with pytest.raises(ConfigError) as info:
        build_hparams(cfg)
    assert (info.value.field, info.value.value, info.value.fix) == ("hparams.tau", 3, "drop it for this method")
    assert str(info.value) == "hparams.tau=3: method=memit (MEMITHyperParams) has no field 'tau'; drop it for this method"


def test_committed_results_json_round_trips_through_run_results():
    """results.json of the committed results (a target bank: with ``protocol``) read and written back unchanged."""
    from pathlib import Path

    from betaedit_plugin.runner.results import RunResults

    files = sorted((Path(__file__).resolve().parents[2] / "results").rglob("results.json"))
    assert files
    for path in files:
        data = json.loads(path.read_text())
        results = RunResults.from_json(data)
        assert results.to_json() == data and list(results.to_json()) == list(data)
        assert results.config_hash == data["config_hash"] and results.edits_done == data["edits_done"]


def test_results_of_an_older_runner_keep_their_keys():
    from betaedit_plugin.runner.results import RunResults

    old = {"format": 1, "method": "memit", "evals": [{"step": 0}], "edits": [], "status": "complete", "mine": 1}
    results = RunResults.from_json(old)
    assert results.to_json() == old and results.extra == {"mine": 1}
    results.add_point({"step": 3})
    results.add_point({"step": 1})
    assert [p["step"] for p in results.evals] == [0, 1, 3]
    with pytest.raises(ValueError, match="'evals' is a dict"):
        RunResults.from_json({**old, "evals": {}})


def test_timing_sums_the_phases_of_the_processes_before_a_resume():
    """A resumed run's timing adds this process's phases to the earlier processes'; the totals that
    come from the edit log (edits, evaluation points) are recomputed from it, not summed twice."""
    from betaedit_plugin.runner.results import RunResults

    base = {"method": "memit", "alg_name": "MEMIT", "model": "m", "data": "d", "config": {}, "identity": {},
            "config_hash": "h", "hparams": {}}
    earlier = RunResults.from_json({**base, "edits": [{"step": 1, "case_ids": [0], "seconds": 2.0}],
                                    "timing": {"statistics_s": 40.0, "projector_s": 5.0, "eval_total_s": 7.0,
                                               "edit_total_s": 2.0, "edit_mean_s": 2.0, "eval_points_s": 7.0}})
    now = RunResults.from_json(base)
    now.take_history(earlier)
    now.log_edit(2, [1], 3.0, {"delta_norm": {4: 1.0}})
    now.finish_timing({"load_model_s": 1.5, "statistics_s": 0.5, "eval_total_s": 4.0})
    assert now.timing == {"statistics_s": 40.5, "projector_s": 5.0, "eval_total_s": 11.0, "load_model_s": 1.5,
                          "edit_total_s": 5.0, "edit_mean_s": 2.5, "eval_points_s": 0.0}
    now.finish_timing({"load_model_s": 1.5, "statistics_s": 0.5, "eval_total_s": 6.0})  # again, later: not added twice
    assert now.timing["eval_total_s"] == 13.0 and now.timing["statistics_s"] == 40.5
