"""Smoke suite (``pytest -m smoke``): one edit through each front door on tiny models, in a fresh process.

The runner's command line, the Python API and the EasyEdit adapter (called as EasyEdit's
``BaseEditor`` calls it; EasyEdit itself is not needed) each edit a tiny random model under
``tests/support/deprecations.py``, which shows every ``DeprecationWarning``, ``FutureWarning``
and logged deprecation notice (transformers logs its cache-argument ones) and traces each to its
caller. A run passes when it edits and no notice on its stderr comes from the package's own
calls; notices that one library raises about another's calls are printed, not failed on.
`make test-newest` runs this suite against the newest release of every dependency, so that a
deprecation in a new release is seen before the removal that follows it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.smoke

REPO = Path(__file__).resolve().parents[1]
TRACER = REPO / "tests" / "support" / "deprecations.py"
# settings under which a tiny random model takes an edit (as in tests/test_install.py)
TINY_EDIT = dict(layers=[1, 2], v_loss_layer=-1, fact_token="last", v_num_grad_steps=20, v_lr=0.5,
                 clamp_norm_factor=10.0, v_weight_decay=0.0, kl_factor=0.0, lambda1=1.0, lambda2=0.1,
                 nullspace_threshold=0.3, mom2_n_samples=50, mom2_max_length=32,
                 context_template_length_params=[[5, 2]])
PROMPT, SUBJECT, TARGET = "The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "German"


def _run(args: list, tmp_path: Path) -> subprocess.CompletedProcess:
    """``args`` (``-m MODULE ...`` or ``-c CODE``) under tests/support/deprecations.py; checks the exit
    status and that no deprecation notice came from the package's own calls."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="0", BETAEDIT_CACHE=str(tmp_path / "cache"))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONWARNINGS", None)
    report = tmp_path / "deprecations.json"
    proc = subprocess.run([sys.executable, str(TRACER), str(report), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    notices = json.loads(report.read_text())
    assert notices["package"] == [], "deprecation notices from the package's own calls:\n" + "\n".join(notices["package"])
    # the package's own notices are none; what other libraries' calls raise is listed, not failed on
    for line in notices["other"]:
        print("not the package's:", line)
    return proc


def _python(script: str, tmp_path: Path) -> dict:
    proc = _run(["-c", textwrap.dedent(script)], tmp_path)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_runner_command_line_edits_tiny_llama(tmp_path):
    out = tmp_path / "out"
    proc = _run(["-m", "betaedit_plugin.run", "method=betaedit", "model=tiny-llama", "num_edits=2", "eval_every=2",
                 "checkpoint_every=2", "eval.mmlu_n=2", "eval.ppl_tokens=64", "eval.ppl_window=32",
                 "eval.fluency_prompts=1", "eval.fluency_tokens=4", "hparams.v_num_grad_steps=4",
                 f"hparams.stats_dir={tmp_path / 'stats'}", "progress=false", f"out_dir={out}"], tmp_path)
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and results["edits_done"] == 2
    assert len(results["evals"]) == 2 and len(results["edits"]) == 2


def test_python_api_edits_tiny_qwen3(tmp_path):
    out = _python(f"""
        import json
        from betaedit_plugin import BetaEditHyperParams, BetaEditor, edit
        hp = BetaEditHyperParams(model_name="tiny-qwen3", **{TINY_EDIT!r})
        editor = BetaEditor.from_hparams(hp)
        metrics, _ = edit(editor, prompts=[{PROMPT!r}], target_new=[{TARGET!r}], subject=[{SUBJECT!r}])
        print(json.dumps([metrics[0]["pre"]["rewrite_acc"][0], metrics[0]["post"]["rewrite_acc"][0]]))
    """, tmp_path)
    assert out == [0.0, 1.0]


def test_easyedit_adapter_edits_tiny_gpt2(tmp_path):
    """BetaEditExecutor.apply_to_model with EasyEdit's calling convention (BaseEditor.edit_requests)."""
    out = _python(f"""
        import json
        import torch
        from betaedit_plugin import BetaEditHyperParams
        from betaedit_plugin.adapters.easyedit import BetaEditExecutor
        from betaedit_plugin.models.tiny import build_tiny

        model, tok = build_tiny("gpt2")
        hp = BetaEditHyperParams(model_name="tiny-gpt2", **{TINY_EDIT!r})
        request = {{"prompt": {PROMPT!r}, "subject": {SUBJECT!r}, "target_new": {TARGET!r},
                    "ground_truth": "French", "portability": {{}}, "locality": {{}}}}
        target = tok(" " + {TARGET!r})["input_ids"][0]
        ids = torch.tensor([tok({PROMPT!r})["input_ids"]])
        with torch.no_grad():
            before = int(model(ids).logits[0, -1].argmax())
        edited, weights_copy = BetaEditExecutor("BetaEdit").apply_to_model(
            model, tok, [request], hp, copy=False, return_orig_weights=True, keep_original_weight=False)
        with torch.no_grad():
            after = int(edited(ids).logits[0, -1].argmax())
        print(json.dumps([before == target, after == target, sorted(weights_copy)]))
    """, tmp_path)
    assert out[:2] == [False, True] and out[2] == ["transformer.h.1.mlp.c_proj.weight", "transformer.h.2.mlp.c_proj.weight"]
