"""The real model through EasyEdit: SmolLM2-135M-Instruct loaded by EasyEdit's BaseEditor from a directory.

Each method is built with ``BaseEditor.from_hparams`` from the shipped SmolLM2 YAML (C0 from 200
texts x 128 tokens of the bundled corpus, cached after the first run) and edits CounterFact cases
of the bundled data; the model's own greedy answer must change to the new target.
"""

from __future__ import annotations

import numpy as np
import pytest

from ee_support import next_token, rewrite_accs, smollm2_hparams

from betaedit_plugin.data import load_counterfact
from betaedit_plugin.eval.scoring import predicted_target_tokens, target_token_accuracy, token_agreement

pytestmark = pytest.mark.slow


def edit_args(reqs) -> dict:
    return dict(
        prompts=[r.prompt for r in reqs], subject=[r.subject for r in reqs], target_new=[r.target_new for r in reqs],
        ground_truth=[r.ground_truth for r in reqs], rephrase_prompts=[r.rephrase_prompts[0] for r in reqs],
        locality_inputs={"neighborhood": {"prompt": [r.locality_prompts[0] for r in reqs],
                                          "ground_truth": [r.locality_ground_truth[0] for r in reqs]}},
    )


@pytest.mark.parametrize("method, case_ids", [("BetaEdit", (0, 4, 6)), ("AlphaEdit", (0,)), ("MEMIT", (0,))])
def test_smollm2_counterfact_edits_through_base_editor(easyedit, smollm2_dir, method, case_ids):
    reqs = [r for r in load_counterfact("edit", n=10) if r.case_id in case_ids]
    editor = easyedit.BaseEditor.from_hparams(smollm2_hparams(method, smollm2_dir))
    assert type(editor.model).__name__ == "LlamaForCausalLM" and editor.model.config.num_hidden_layers == 30
    assert next_token(editor.model, editor.tok, reqs[0].prompt) == " French"  # it knows the fact

    metrics, model, _ = editor.edit(**edit_args(reqs), sequential_edit=True, verbose=False)

    pre, post = rewrite_accs(metrics, "pre"), rewrite_accs(metrics, "post")
    assert all(p >= 0.99 for p in post), f"{method}: rewrite_acc pre {pre}, post {post}"
    assert max(pre) < 0.5
    assert next_token(model, editor.tok, reqs[0].prompt) == " English"  # and after all edits it answers anew
    assert easyedit.executors[editor.alg_name].editor_for(model).step == len(reqs)
    # EasyEdit scores each request right after its own edit: the last one on the final model, which this
    # package's scoring reads the same way (the locality tokens before the edit are EasyEdit's own)
    last, req = metrics[-1], reqs[-1]
    assert last["post"]["rewrite_acc"] == [pytest.approx(target_token_accuracy(model, editor.tok, req.prompt, req.target_new))]
    assert last["post"]["rephrase_acc"] == [
        pytest.approx(target_token_accuracy(model, editor.tok, req.rephrase_prompts[0], req.target_new))]
    post_tokens = predicted_target_tokens(model, editor.tok, req.locality_prompts[0], req.locality_ground_truth[0])[0]
    pre_tokens = np.asarray(last["pre"]["locality"]["neighborhood_output"][0]).reshape(-1).tolist()
    assert last["post"]["locality"]["neighborhood_acc"] == [pytest.approx(token_agreement(pre_tokens, post_tokens))]
