"""The real model through EasyEdit: SmolLM2-135M-Instruct loaded by EasyEdit's BaseEditor from a directory.

Each method is built with ``BaseEditor.from_hparams`` from the shipped SmolLM2 YAML (C0 from 200
texts x 128 tokens of the bundled corpus, cached after the first run) and edits CounterFact cases
of the bundled data; the model's own greedy answer must change to the new target.
"""

from __future__ import annotations

import pytest

from ee_support import next_token, rewrite_accs, smollm2_hparams

from betaedit_plugin.data import load_counterfact

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
    for m in metrics:
        assert 0.0 <= m["post"]["locality"]["neighborhood_acc"][0] <= 1.0
        assert 0.0 <= m["post"]["rephrase_acc"][0] <= 1.0
