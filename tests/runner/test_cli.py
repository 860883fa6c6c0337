"""The benchmark runner end to end on a tiny model through its command line: multirun, resume,
refusals, CLI errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from betaedit_plugin.run import CONF_DIR, ConfigError, compare, main, run_experiment

METHODS = ("memit", "alphaedit", "betaedit")
PNGS = ("efficacy.png", "specificity.png", "capability_ppl.png", "capability_mmlu.png", "leakage.png", "perturbation.png")


def _common(tmp: Path) -> list:
    """Small, fast settings shared by every run here (the same identity for the resume comparison)."""
    return [
        "model=tiny-llama",
        "num_edits=6",
        "eval_every=3",
        "checkpoint_every=3",
        "eval.mmlu_n=3",
        "eval.ppl_tokens=96",
        "eval.ppl_window=48",
        "eval.fluency_prompts=2",
        "eval.fluency_tokens=4",
        "hparams.v_num_grad_steps=4",
        f"hparams.stats_dir={tmp / 'stats'}",
        "progress=false",
    ]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "betaedit_plugin.run", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
        timeout=600,
    )


def _compose(overrides: list) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from betaedit_plugin.runner.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same as the CLI runs (OMP_NUM_THREADS=1), for bit-equal weights
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def multirun(tmp_path_factory):
    """One CLI multirun of the three methods, 6 edits each."""
    tmp = tmp_path_factory.mktemp("runner")
    root = tmp / "runs"
    proc = _cli(["-m", "method=" + ",".join(METHODS), *_common(tmp), f"run_root={root}"], cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, root, proc


def _numbers(point: dict) -> dict:
    return {k: v for k, v in point.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_multirun_writes_results_csv_plots_and_a_comparison(multirun):
    tmp, root, proc = multirun
    for method in METHODS:
        out = root / method
        results = json.loads((out / "results.json").read_text())
        assert results["status"] == "complete" and results["edits_done"] == 6
        assert results["method"] == method
        assert [p["step"] for p in results["evals"]] == [0, 3, 6]
        assert results["config"]["num_edits"] == 6 and results["hparams"]["layers"] == [1, 2]
        for point in results["evals"]:
            for key, value in _numbers(point).items():
                assert math.isfinite(value), (method, point["step"], key, value)
        last = results["evals"][-1]
        for key in ("efficacy", "generality", "specificity", "rewrite_acc", "locality_acc", "fluency", "ppl",
                    "mmlu_acc", "leakage", "rel_leakage", "perturbation", "leakage/L1", "perturbation/L2"):
            assert key in last, key
        assert last["mmlu_chance"] == 0.25
        assert last["perturbation"] > 0 and results["evals"][0]["perturbation"] == 0
        assert {"load_model_s", "statistics_s", "projector_s", "edit_mean_s", "eval_total_s"} <= set(results["timing"])
        csv_lines = (out / "metrics.csv").read_text().splitlines()
        assert csv_lines[0].startswith("step,") and len(csv_lines) == 4
        for png in PNGS:
            assert (out / png).stat().st_size > 1000, png
        assert (out / "checkpoints" / "step-0000006" / "manifest.json").is_file()
    table = (root / "comparison.md").read_text()
    assert all(f"| {m} | 6 |" in table for m in METHODS)
    for png in PNGS:
        assert (root / png).is_file()
    assert "before (step 0)" in proc.stdout and "plots:" in proc.stdout
    # the three methods wrote different updates
    norms = {m: json.loads((root / m / "results.json").read_text())["evals"][-1]["perturbation"] for m in METHODS}
    assert len(set(norms.values())) == 3


def test_results_json_of_a_run_round_trips_through_run_results(multirun):
    """RunResults reads what a real run wrote (results.json and its checkpoint's) and writes it back the same."""
    from betaedit_plugin.runner import RunResults

    _, root, _ = multirun
    for method in METHODS:
        for path in (root / method / "results.json", root / method / "checkpoints" / "step-0000006" / "results.json"):
            text = path.read_text()
            results = RunResults.from_json(json.loads(text))
            assert results.dumps() == text, path  # byte for byte: the same keys, order and values
            assert results.method == method and results.edits_done == 6
            assert results.complete == (path.parent.name == method)  # a checkpoint is written while the run goes on
            assert [p["step"] for p in results.evals] == [0, 3, 6] and results.point(3) is results.evals[1]
            assert results.timing["edit_mean_s"] > 0 and results.extra == {}


def test_compare_entry_point_rebuilds_the_table(multirun, tmp_path):
    _, root, _ = multirun
    path = compare([root / m for m in METHODS], tmp_path)
    assert path == tmp_path / "comparison.md"
    assert "| betaedit | 6 |" in path.read_text()


def test_compare_cli_names_a_missing_run(multirun, tmp_path, capsys):
    _, root, _ = multirun
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(root / "memit"), str(tmp_path / "nope"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "nope" in err
    assert main(["compare", str(root / "memit"), "--out", str(tmp_path)]) == 0
    assert "| memit | 6 |" in (tmp_path / "comparison.md").read_text()


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(multirun, one_thread):
    from safetensors.torch import load_file

    tmp, root, _ = multirun
    out = tmp / "interrupted"
    overrides = [*_common(tmp), "method=betaedit", f"run_root={tmp / 'other'}", f"out_dir={out}"]
    first = run_experiment(_compose(overrides + ["stop_after=3"]))
    assert first["status"] == "stopped" and first["edits_done"] == 3
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000003"]

    second = run_experiment(_compose(overrides + ["resume=true"]))
    assert second["status"] == "complete" and second["resumed_from"] == 3
    reference = json.loads((root / "betaedit" / "results.json").read_text())

    def strip(points):  # wall times differ, everything else must not
        return [{k: v for k, v in p.items() if not k.endswith("_s")} for p in points]

    assert strip(second["evals"]) == strip(reference["evals"])
    assert second["config_hash"] == reference["config_hash"]
    mine = load_file(str(out / "checkpoints" / "step-0000006" / "editor_state.safetensors"))
    theirs = load_file(str(root / "betaedit" / "checkpoints" / "step-0000006" / "editor_state.safetensors"))
    assert mine.keys() == theirs.keys() and {"layers.1.w", "layers.2.w"} <= set(mine)
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key  # bit-equal: weights, history, solver


def test_truncated_or_corrupt_checkpoint_is_refused(multirun, tmp_path):
    tmp, root, _ = multirun
    out = tmp_path / "copy"
    shutil.copytree(root / "betaedit", out)
    overrides = [*_common(tmp), "method=betaedit", f"run_root={tmp_path}", f"out_dir={out}", "resume=true"]
    ckpt = out / "checkpoints" / "step-0000006"
    state = ckpt / "editor_state.safetensors"
    state.write_bytes(state.read_bytes()[:-10])  # truncated
    with pytest.raises(ConfigError, match="editor_state.safetensors' does not match its sha256"):
        run_experiment(_compose(overrides))
    (ckpt / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="has no manifest.json"):
        run_experiment(_compose(overrides))


def test_out_dir_of_another_run_is_refused_and_left_alone(multirun):
    tmp, root, _ = multirun
    out = root / "betaedit"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    overrides = [*_common(tmp), "method=betaedit", "num_edits=5", f"run_root={root}", f"out_dir={out}"]
    with pytest.raises(ConfigError, match=r"another config \(num_edits=6 there, 5 here\)"):
        run_experiment(_compose([o for o in overrides if o != "num_edits=6"]))
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["method=nope"], "method='nope': unknown method. Available: alphaedit, alphaedit-nohist, betaedit, memit"),
        (["model=tiny-lama"], "Did you mean 'tiny-llama'?"),
        (["data=zsr"], "Did you mean 'zsre'?"),
        (["num_edits=0"], "num_edits=0: expected an int >= 1"),
        (["eval_every=0"], "eval_every=0: expected an int >= 1"),
        (["num_edits=99999"], "num_edits=99999: data=counterfact (edit) has only 10000 edits"),
        (["data.path=/no/such/file.json"], "data.path='/no/such/file.json': data file '/no/such/file.json' does not exist"),
        (["hparams.lamda1=5"], "Did you mean 'lambda1'?"),
        (["-m", "method=memit,betaedt"], "method='betaedt': unknown method. Did you mean 'betaedit'?"),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, args, needle):
    """The CLI's main() in this process (the subprocess form is checked below)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, needle", [(["method=nope"], "method='nope'"), (["num_edits=0"], "num_edits=0")])
def test_bad_config_in_a_subprocess_exits_2_without_traceback(tmp_path, args, needle):
    proc = _cli([*args, f"out_dir={tmp_path / 'out'}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_bad_data_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(SystemExit) as exit_info:
        main([f"data.path={bad}", f"out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "data.path=" in err and "unreadable" in err


def test_cli_refuses_an_out_dir_of_another_run(multirun):
    tmp, root, _ = multirun
    out = root / "betaedit"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    args = [a for a in _common(tmp) if a != "num_edits=6"] + ["method=betaedit", "num_edits=5", f"run_root={root}", f"out_dir={out}"]
    proc = _cli(args, cwd=tmp)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "num_edits=6 there, 5 here" in proc.stderr
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------- user errors (issue 13)
def _write_cases(path: Path, edit: dict) -> Path:
    """The first three bundled CounterFact cases as a data file, with ``edit`` = {index: {field: value}}."""
    from betaedit_plugin.data import read_json_records, resource_path

    records = read_json_records(resource_path("counterfact/counterfact-edit.json.gz"))[:3]
    for i, fields in edit.items():
        records[i].update(fields)
    path.write_text(json.dumps(records))
    return path


def _assert_one_line_exit_2(err: str, code, *needles: str) -> None:
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("betaedit-run: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(
    "args, needles",
    [
        (["method=memit", "hparams.mom2_update_weight=0"],
         ["mom2_update_weight=0.0: MEMIT needs w > 0", "use e.g. 15000"]),
        (["hparams.device=gpu"], ["hparams.device='gpu': not a torch device; use 'cpu'"]),
        pytest.param(["hparams.device=cuda:0"], ["hparams.device='cuda:0': CUDA is not available", "set hparams.device to 'cpu'"],
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")),
    ],
)
def test_hparams_that_cannot_work_here_exit_2_before_hydra(tmp_path, capsys, args, needles):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, f"out_dir={tmp_path / 'out'}"])
    _assert_one_line_exit_2(capsys.readouterr().err, exit_info.value.code, *needles)
    assert not (tmp_path / "out").exists()


def test_invalid_data_record_exits_2_naming_it_and_the_fix(tmp_path, capsys):
    data = _write_cases(tmp_path / "cases.json", {1: {"subject": "Nobody"}})
    with pytest.raises(SystemExit) as exit_info:
        main([f"data.path={data}", "num_edits=3", f"out_dir={tmp_path / 'out'}"])
    _assert_one_line_exit_2(capsys.readouterr().err, exit_info.value.code, f"data.path='{data}'",
                            "1 invalid record(s): record 1: subject='Nobody' does not occur", "data.skip_invalid=true")
    assert not (tmp_path / "out").exists()


def test_out_dir_that_is_a_file_or_holds_a_truncated_results_json_exits_2_untouched(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main([f"out_dir={a_file}"])
    _assert_one_line_exit_2(capsys.readouterr().err, exit_info.value.code, f"out_dir='{a_file}' is a file, not a directory")
    assert a_file.read_text() == "mine"

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"format": 1, "identity": {"num_e')
    for resume in ("false", "true"):
        with pytest.raises(SystemExit) as exit_info:
            main([f"out_dir={out}", f"resume={resume}"])
        _assert_one_line_exit_2(capsys.readouterr().err, exit_info.value.code, "results.json' is unreadable (JSONDecodeError",
                                "delete it")
    assert [p.name for p in out.iterdir()] == ["results.json"]
    assert (out / "results.json").read_text() == '{"format": 1, "identity": {"num_e'


def test_errors_found_with_the_model_exit_2_and_leave_out_dir_as_it_was(tmp_path):
    """An empty null space, and a prompt longer than tiny-gpt2's 256 positions: found once the model is
    loaded, inside Hydra's job; the directories and log Hydra made are removed again."""
    proc = _cli([*_common(tmp_path), "num_edits=2", "hparams.nullspace_threshold=1e-12",
                 f"out_dir={tmp_path / 'runs' / 'a'}"], cwd=tmp_path)
    _assert_one_line_exit_2(proc.stderr, proc.returncode, "hparams.nullspace_threshold=1e-12: no eigenvalue of C0 is below it",
                            "set nullspace_threshold above", "(layer 1)")
    assert not (tmp_path / "runs").exists()

    data = _write_cases(tmp_path / "long.json", {1: {"prompt": "word " * 300 + "The mother tongue of Danielle Darrieux is",
                                                     "subject": "Danielle Darrieux"}})
    out = tmp_path / "existing"
    out.mkdir()
    (out / "run.log").write_text("an earlier run\n")
    proc = _cli([*_common(tmp_path), "model=tiny-gpt2", "num_edits=2", "batch_size=2", f"data.path={data}",
                 f"out_dir={out}"], cwd=tmp_path)
    _assert_one_line_exit_2(proc.stderr, proc.returncode, f"data.path='{data}'", "requests[1] (case_id ",
                            "and target_new (", "more than the model's context of 256 positions", "leave the case out")
    assert [p.name for p in out.iterdir()] == ["run.log"] and (out / "run.log").read_text() == "an earlier run\n"


def test_literal_braces_skipped_records_and_resume_without_checkpoint(tmp_path):
    """A prompt with literal braces is edited and evaluated; an invalid record is skipped with a warning
    and listed in results.json; resume=true with no checkpoint says so and starts from edit 0."""
    data = _write_cases(tmp_path / "cases.json", {
        0: {"prompt": "In the set {x}, the mother tongue of Danielle Darrieux is",
            "rephrase_prompt": "In {the} set, Danielle Darrieux speaks"},
        1: {"subject": "Nobody"},
    })
    out = tmp_path / "out"
    proc = _cli([*_common(tmp_path), "num_edits=2", "eval_every=2", f"data.path={data}", "data.skip_invalid=true",
                 "resume=true", f"out_dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert f"resume=true but no checkpoint or journal in {out}: starting from edit 0" in log
    assert "skipped 1 invalid record(s) (case_ids [1])" in proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert [(s["index"], s["case_id"]) for s in results["skipped_invalid"]] == [(1, 1)]
    assert "subject='Nobody'" in results["skipped_invalid"][0]["reason"]
    written = json.loads(data.read_text())
    assert [c for e in results["edits"] for c in e["case_ids"]] == [written[0]["case_id"], written[2]["case_id"]]
    assert results["status"] == "complete" and math.isfinite(results["evals"][-1]["efficacy"])
