"""The real model through EasyEdit: SmolLM2-135M-Instruct loaded by EasyEdit's BaseEditor from a directory.

Each method is built with ``BaseEditor.from_hparams`` from the shipped SmolLM2 YAML (C0 from 200
texts x 128 tokens of the bundled corpus, cached after the first run) and edits CounterFact cases
of the bundled data; the model's own greedy answer must change to the new target.
"""

from __future__ import annotations

import pytest

from ee_support import next_token, predicted_tokens, rewrite_accs, smollm2_hparams

from betaedit_plugin.data import load_counterfact
from betaedit_plugin.eval.scoring import target_token_accuracy, token_agreement

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
    loc_before = [predicted_tokens(editor.model, editor.tok, r.locality_prompts[0], r.locality_ground_truth[0])
                  for r in reqs]
    rp_before = [target_token_accuracy(editor.model, editor.tok, r.rephrase_prompts[0], r.target_new) for r in reqs]

    metrics, model, _ = editor.edit(**edit_args(reqs), sequential_edit=True, verbose=False)

    pre, post = rewrite_accs(metrics, "pre"), rewrite_accs(metrics, "post")
    assert all(p >= 0.99 for p in post), f"{method}: rewrite_acc pre {pre}, post {post}"
    assert max(pre) < 0.5
    assert next_token(model, editor.tok, reqs[0].prompt) == " English"  # and after all edits it answers anew
    assert easyedit.executors[editor.alg_name].editor_for(model).step == len(reqs)
    # locality and rephrase metrics against this package's teacher-forced scoring of the same model:
    # before any edit for every case, after the last edit for the last case (each case is scored
    # right after its own edit, so the final model is the post-edit model of the last one only)
    for m, pre_loc, pre_rp in zip(metrics, loc_before, rp_before):
        assert [list(t) for t in m["pre"]["locality"]["neighborhood_output"]] == [pre_loc]
        post_loc = list(m["post"]["locality"]["neighborhood_output"][0])
        assert m["post"]["locality"]["neighborhood_acc"] == [pytest.approx(token_agreement(pre_loc, post_loc))]
        assert [float(a) for a in m["pre"]["rephrase_acc"]] == [pytest.approx(pre_rp)]
    last = reqs[-1]
    assert list(metrics[-1]["post"]["locality"]["neighborhood_output"][0]) == predicted_tokens(
        model, editor.tok, last.locality_prompts[0], last.locality_ground_truth[0])
    assert [float(a) for a in metrics[-1]["post"]["rephrase_acc"]] == [
        pytest.approx(target_token_accuracy(model, editor.tok, last.rephrase_prompts[0], last.target_new))]
