"""examples/easyedit_benchmark.py: EasyEdit's benchmark flow on MEMIT/MEND-format files, with a tiny model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ee_support import ROWS, TINY_COMMON, TINY_METHOD

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "easyedit_benchmark.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("easyedit_benchmark_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def memit_counterfact(rows=ROWS):
    """CounterFact records in ROME/MEMIT's format (counterfact.json / multi_counterfact.json)."""
    return [{"case_id": i,
             "requested_rewrite": {"prompt": r[0].replace(r[1], "{}"), "subject": r[1], "relation_id": "P0",
                                   "target_new": {"str": r[2], "id": "Q0"}, "target_true": {"str": r[3], "id": "Q1"}},
             "paraphrase_prompts": [r[4], r[4] + ","], "neighborhood_prompts": [r[5], r[5] + ","],
             "attribute_prompts": [], "generation_prompts": [r[0]]}
            for i, r in enumerate(rows)]


def zsre_mend(rows=ROWS):
    return [{"subject": r[1], "src": f"{r[0]}?", "pred": r[3], "rephrase": f"{r[4]}?", "alt": r[2],
             "answers": [r[3]], "loc": f"nq question: {r[5].lower()}", "loc_ans": r[6], "cond": ""} for r in rows]


def tiny_yaml(tmp_path, method, model_dir) -> Path:
    from betaedit_plugin.hparams import hparams_class_for

    config = {"alg_name": method, "model_name": model_dir, "device": "cpu", "stats_dir": str(tmp_path / "stats"),
              **TINY_COMMON, **TINY_METHOD[method]}
    assert hparams_class_for(method)  # the YAML's alg_name is the paper's name, as in EasyEdit's YAMLs
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("method, data_type, sequential, generation", [("BetaEdit", "CF", True, True),
                                                                       ("AlphaEdit", "MCF", False, False),
                                                                       ("MEMIT", "ZsRE", True, False)])
def test_benchmark_flow_writes_easyedits_metrics_and_summary(example, tiny_checkpoint, tmp_path, capsys,
                                                             method, data_type, sequential, generation):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    records = zsre_mend() if data_type == "ZsRE" else memit_counterfact()
    (data_dir / example.DATA_FILES[data_type]).write_text(json.dumps(records))
    argv = ["--editing_method", method, "--hparams_dir", str(tiny_yaml(tmp_path, method, tiny_checkpoint("llama"))),
            "--data_dir", str(data_dir), "--data_type", data_type, "--ds_size", "3",
            "--output_dir", str(tmp_path / "out")]
    argv += ["--sequential_edit"] if sequential else []
    metrics = example.main(argv + ([] if generation else ["--no_test_generation"]))

    out = capsys.readouterr().out
    expected = tmp_path / "out" / f"tiny-llama_{method}_N=3_Sequential={sequential}.json"
    assert f"See results at:  {expected}" in out
    assert "Metrics Summary" in out and "neighborhood_acc" in out
    saved = json.loads(expected.read_text())
    assert len(saved) == len(metrics) == 3
    assert [m["requested_rewrite"]["target_new"] for m in saved] == [r[2] for r in ROWS[:3]]
    assert [m["post"]["rewrite_acc"][0] for m in saved] == [1.0, 1.0, 1.0]
    assert [m["pre"]["rewrite_acc"][0] for m in saved] == [0.0, 0.0, 0.0]
    if data_type != "ZsRE":  # every neighbourhood prompt of a MEMIT record is scored
        assert len(saved[0]["post"]["locality"]["neighborhood_acc"]) == 2
    if generation:  # test_generation=True, as in EasyEdit's script: n-gram entropy of generated text
        assert all(m["post"]["fluency"]["ngram_entropy"] > 0 for m in saved)


def test_missing_data_file_says_where_to_get_it_or_writes_the_bundled_sample(example, tmp_path):
    with pytest.raises(SystemExit, match=r"counterfact.json does not exist. Download it from https://memit"):
        example.main(["--editing_method", "BetaEdit", "--hparams_dir", "x.yaml", "--data_dir", str(tmp_path),
                      "--data_type", "CF"])
    example.write_bundled_sample("CF", tmp_path / "counterfact.json", 3)
    reqs = example.load_requests("CF", tmp_path / "counterfact.json", 3)
    assert [r.case_id for r in reqs] == [0, 1, 4]
    assert reqs[0].prompt == "The mother tongue of Danielle Darrieux is" and reqs[0].target_new == "English"
    example.write_bundled_sample("ZsRE", tmp_path / "zsre_mend_eval.json", 3)
    assert len(example.load_requests("ZsRE", tmp_path / "zsre_mend_eval.json", 3)) == 3


def test_example_runs_as_a_plain_script_in_this_environment(tiny_checkpoint, tmp_path):
    """README's command as written: `python examples/easyedit_benchmark.py ...` in a fresh process, with no
    PYTHONPATH and no wrapper; EasyEdit's source and the CPU import stubs are installed into the environment."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "zsre_mend_eval.json").write_text(json.dumps(zsre_mend()))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--editing_method", "MEMIT",
         "--hparams_dir", str(tiny_yaml(tmp_path, "MEMIT", tiny_checkpoint("llama"))), "--data_dir", str(data_dir),
         "--data_type", "ZsRE", "--ds_size", "2", "--sequential_edit", "--no_test_generation",
         "--output_dir", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    saved = json.loads((tmp_path / "out" / "tiny-llama_MEMIT_N=2_Sequential=True.json").read_text())
    assert [m["post"]["rewrite_acc"][0] for m in saved] == [1.0, 1.0]
