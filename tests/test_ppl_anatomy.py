"""results/ppl_anatomy.py: which edited layer raises the perplexity, on SmolLM2 with a known change
of one layer (the others unchanged), against perplexities computed here."""

from __future__ import annotations

import json

import pytest
import torch

from support.runs import results_script

pytestmark = pytest.mark.slow


def _run(tmp_path, layers, recorded):
    """A run folder as the campaign writes it: results.json (its eval settings, a point with the
    per-layer diagnostics) and the edited weights as `replay --save` writes them."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    point = {"step": 3, "ppl": recorded}
    for l in layers:
        point.update({f"rel_leakage/L{l}": 0.01 * l, f"perturbation/L{l}": float(l)})
    hparams = {"mom2_dataset": "wiki_vital", "mom2_n_samples": 6, "mom2_max_length": 32, "mom2_dtype": "float32",
               "nullspace_threshold": 0.02}  # a small corpus: the key moments, not their quality, are under test
    (run / "results.json").write_text(json.dumps({"config": {"eval": {"ppl_tokens": 512, "ppl_window": 256, "batch_size": 16}},
                                                  "hparams": hparams, "edits_done": 3, "evals": [point]}))
    return run


def test_each_layers_share_of_the_perplexity_rise(smollm2, tmp_path):
    from safetensors.torch import save_file

    from betaedit_plugin.eval.capability import heldout_token_ids, perplexity

    pa = results_script("ppl_anatomy")
    model, tok = smollm2
    ids = heldout_token_ids(tok, 512)
    w4, w6 = (model.model.layers[l].mlp.down_proj.weight for l in (4, 6))
    before = {4: w4.detach().clone(), 6: w6.detach().clone()}
    edited4 = before[4] + before[4].std() * torch.randn(before[4].shape, generator=torch.Generator().manual_seed(0))
    unedited = perplexity(model, ids, window=256, batch_size=4)["ppl"]
    with torch.no_grad():
        w4.copy_(edited4)
    expected = perplexity(model, ids, window=256, batch_size=4)["ppl"]
    with torch.no_grad():
        w4.copy_(before[4])
    assert expected > 1.05 * unedited  # the change raises the perplexity: something to attribute

    run = _run(tmp_path, (4, 6), expected)
    weights = tmp_path / "edited.safetensors"
    save_file({"model.layers.4.mlp.down_proj.weight": edited4, "model.layers.6.mlp.down_proj.weight": before[6]}, str(weights))
    got = pa.anatomy(model, ids, run, weights)
    assert (got["step"], got["unedited"], got["edited"]) == (3, pytest.approx(unedited, rel=1e-9), pytest.approx(expected, rel=1e-9))
    assert got["layers"][4]["alone"] == pytest.approx(expected, rel=1e-9)
    assert got["layers"][4]["without"] == pytest.approx(unedited, rel=1e-9)
    assert got["layers"][6]["alone"] == pytest.approx(unedited, rel=1e-9)  # an unchanged layer adds nothing
    assert (got["layers"][6]["rel_leakage"], got["layers"][6]["perturbation"]) == (0.06, 6.0)
    rows = [line.split("|") for line in pa.markdown("run", got).splitlines() if line.startswith("| 4 ") or line.startswith("| 6 ")]
    assert [r[5].strip() for r in rows] == ["100%", "0%"]  # the share of the rise each layer's change removes
    assert all(torch.equal(m.mlp.down_proj.weight, before[l]) for l, m in ((4, model.model.layers[4]), (6, model.model.layers[6])))

    # the keys: layer 4's own change leaves its input as it was; layer 6 reads keys that moved, through
    # a weight that did not change (no leakage either way); float64 references from the collected moments
    import numpy as np

    from betaedit_plugin.covariance.collect import layer_second_moments
    from betaedit_plugin.models.layout import ModelLayout

    run = _run(tmp_path, (4, 6), expected)
    got = pa.anatomy(model, ids, run, weights, tok=tok, stats_dir=tmp_path / "stats")
    assert any((tmp_path / "stats").iterdir())  # the unedited model's C0 went to the cache given, nothing else
    moments = {}
    for name, w in (("c0", before[4]), ("ct", edited4)):
        with torch.no_grad():
            w4.copy_(w)
        moments[name] = layer_second_moments(model, tok, ModelLayout.from_model(model), [4, 6], corpus="wiki_vital",
                                             n_samples=6, max_length=32, progress=False, use_cache=False)
    with torch.no_grad():
        w4.copy_(before[4])
    c0, ct = (moments[n][6].numpy() for n in ("c0", "ct"))
    assert got["layers"][4]["key_drift"] == 0.0 and got["layers"][6]["key_drift"] == pytest.approx(
        np.linalg.norm(ct - c0) / np.linalg.norm(c0), rel=1e-9)
    assert got["layers"][6]["key_drift"] > 0.01
    w, v = np.linalg.eigh(c0)
    u = v[:, w < 0.02]
    assert got["layers"][6]["null_share_ct"] == pytest.approx(np.trace(u.T @ ct @ u) / np.trace(ct), rel=1e-6)
    assert got["layers"][6]["rel_leakage_ct"] == 0.0
    d, w0, c4 = ((edited4 - before[4]).double().numpy(), before[4].double().numpy(), moments["c0"][4].numpy())
    assert got["layers"][4]["rel_leakage_ct"] == pytest.approx(np.trace(d @ c4 @ d.T) / np.trace(w0 @ c4 @ w0.T), rel=1e-9)
    assert "| 6 |" in pa.markdown("run", got) and "key drift" in pa.markdown("run", got)
    assert torch.equal(w4, before[4])

    # weights that are not the run's: refused, naming both perplexities
    run = _run(tmp_path, (4, 6), expected * 1.1)
    with pytest.raises(SystemExit, match=r"give ppl .*, the run recorded .* not the run's weights"):
        pa.anatomy(model, ids, run, weights)
    assert torch.equal(w4, before[4])
