"""On the real SmolLM2-135M: patching z* at the last edited layer flips CounterFact answers.

Uses the tuned hparams of ``hparams/BetaEdit/smollm2-135m.yaml`` with two fixed
context templates instead of the generated ones (the generated set has 21; a
smaller set keeps this test short on 2 CPU cores).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest
import torch

from betaedit_plugin.hparams import load_hparams
from betaedit_plugin.models.hooks import Trace, first_tensor, replace_first_tensor
from betaedit_plugin.compute_ks import compute_ks
from betaedit_plugin.models.layout import ModelLayout
from betaedit_plugin.models.tokens import build_prompt, encode_pair, fact_token_index, pad_batch
from betaedit_plugin.compute_z import compute_current_z, optimise_value
from betaedit_plugin.requests import EditRequest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HPARAMS = ROOT / "hparams" / "BetaEdit" / "smollm2-135m.yaml"
DATA = [
    ROOT / "betaedit_plugin" / "resources" / "counterfact" / "counterfact-edit.json.gz",
    ROOT.parent / "shared" / "data" / "counterfact" / "counterfact-edit.json.gz",
]
CTX = [["{}"], ["The following is a fact. {}"]]
CASE_IDS = (0, 5, 13)  # Danielle Darrieux -> English, Thomas Joannes Stieltjes -> English, Ferrari F40 -> Microsoft


def _cases() -> list[EditRequest]:
    path = next((p for p in DATA if p.is_file()), None)
    if path is None:
        pytest.skip(f"CounterFact data not found at {[str(p) for p in DATA]}")
    with gzip.open(path, "rt") as f:
        records = {r["case_id"]: r for r in json.load(f)}
    return [EditRequest.from_easyedit(records[i]) for i in CASE_IDS]


def mean_logprob(model, tok, layout, hp, request, target, z=None, layer=None) -> float:
    """Mean per-token log P(target | prompt), optionally with block ``layer``'s output set to z at the fact token."""
    prompt = build_prompt(request)
    ids, tgt = encode_pair(tok, prompt.text, target)
    idx = fact_token_index(tok, prompt, hp.fact_token, len(ids))
    batch = pad_batch([ids + tgt[:-1]], tok, torch.device("cpu"))

    def put_z(out, name):
        h = first_tensor(out).clone()
        h[0, batch.padded_index(0, idx)] = z
        return replace_first_tensor(out, h)

    with torch.no_grad():
        if z is None:
            logits = model(**batch.model_kwargs()).logits
        else:
            with Trace(model, layout.layer_name(layer), edit_output=put_z):
                logits = model(**batch.model_kwargs()).logits
    logp = torch.log_softmax(logits[0], -1)
    cols = [batch.padded_index(0, len(ids) - 1 + j) for j in range(len(tgt))]
    return float(torch.stack([logp[c, t] for c, t in zip(cols, tgt)]).mean())


def test_z_star_flips_counterfact_answers(smollm2):
    model, tok = smollm2
    hp = load_hparams(HPARAMS)
    layout = ModelLayout.from_model(model, hp)
    layer = hp.layers[-1]
    before_w = layout.read_weight(model, layer)
    for request in _cases():
        res = optimise_value(model, tok, request, hp, layout, layer, CTX)
        new0 = mean_logprob(model, tok, layout, hp, request, request.target_new)
        true0 = mean_logprob(model, tok, layout, hp, request, request.ground_truth)
        new1 = mean_logprob(model, tok, layout, hp, request, request.target_new, res.z, layer)
        true1 = mean_logprob(model, tok, layout, hp, request, request.ground_truth, res.z, layer)
        assert new0 < true0, f"case {request.case_id}: the unedited model should prefer the true answer"
        assert new1 > true1, (
            f"case {request.case_id}: after patching z*, log P(new)={new1:.2f} <= log P(true)={true1:.2f} "
            f"(nll {res.nll[0]:.2f} -> {res.nll[-1]:.2f} in {res.steps} steps)"
        )
        assert res.delta.norm() <= hp.clamp_norm_factor * res.z_init.norm() * (1 + 1e-5)
    torch.testing.assert_close(layout.read_weight(model, layer), before_w, rtol=0, atol=0)


def test_smollm2_keys_and_current_values_shapes(smollm2):
    model, tok = smollm2
    hp = load_hparams(HPARAMS)
    layout = ModelLayout.from_model(model, hp)
    reqs = _cases()
    keys = compute_ks(model, tok, reqs, hp, layout, hp.layers[0], CTX)
    assert keys.shape == (1536, len(reqs)) and torch.isfinite(keys).all()
    cur = compute_current_z(model, tok, reqs, hp, layout, hp.layers[-1])
    assert cur.shape == (576, len(reqs)) and torch.isfinite(cur).all()
    hp_left = dataclasses.replace(hp)
    tok.padding_side, side = "left", tok.padding_side
    try:
        keys_left = compute_ks(model, tok, reqs, hp_left, layout, hp.layers[0], CTX)
    finally:
        tok.padding_side = side
    torch.testing.assert_close(keys_left, keys, rtol=1e-4, atol=1e-4)
