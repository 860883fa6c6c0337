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


def test_a_runs_perplexity_ratio_on_more_held_out_text(smollm2, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from betaedit_plugin.eval.capability import heldout_token_ids, perplexity
    from betaedit_plugin.eval.report import ppl_ratio

    pa = results_script("ppl_anatomy")
    if not pa.VALID_TEXT.is_file():
        pytest.skip(f"{pa.VALID_TEXT} is absent: WikiText-2's validation split comes from ../shared/data")
    texts = {"test": None, "valid": pa.VALID_TEXT}
    model, tok = smollm2
    w4 = model.model.layers[4].mlp.down_proj.weight
    before = w4.detach().clone()
    edited4 = before + before.std() * torch.randn(before.shape, generator=torch.Generator().manual_seed(1))
    short = heldout_token_ids(tok, 512)
    assert torch.equal(heldout_token_ids(tok, 1024)[:512], short)  # more text begins with the runs' own
    unedited = perplexity(model, short, window=256)
    with torch.no_grad():
        w4.copy_(edited4)
    edited = perplexity(model, short, window=256)
    longer = {name: perplexity(model, heldout_token_ids(tok, 1024, path), window=256) for name, path in texts.items()}
    with torch.no_grad():
        w4.copy_(before)

    run = _run(tmp_path, (4,), edited["ppl"])
    results = json.loads((run / "results.json").read_text())
    results["evals"][0]["outcomes"] = {"ppl": edited["windows"]}
    results["evals"].insert(0, {"step": 0, "ppl": unedited["ppl"], "outcomes": {"ppl": unedited["windows"]}})
    (run / "results.json").write_text(json.dumps(results))
    weights = tmp_path / "edited.safetensors"
    save_file({"model.layers.4.mlp.down_proj.weight": edited4}, str(weights))
    twin = shutil.copytree(run, tmp_path / "twin")  # the same run twice: their ratio is exactly 1

    h = pa.heldout(model, tok, [(run, weights), (twin, weights)], 1024, texts)
    assert h["steps"] == {"run": 3, "twin": 3} and (h["window"], h["tokens"]) == (256, 1024)
    assert h["recorded"]["run"] == pytest.approx(ppl_ratio(results["evals"][1], results["evals"][0]), rel=1e-12)
    for name in texts:
        got = h["texts"][name]
        assert len(got["run"]["windows"]) == 4
        assert got["run"]["ppl"] == pytest.approx(longer[name]["ppl"], rel=1e-6)
        assert got["unedited"]["ppl"] > 0 and got["run"]["ppl"] > 1.02 * got["unedited"]["ppl"]
    assert torch.equal(w4, before)
    test = h["texts"]["test"]
    ratio = ppl_ratio({"outcomes": {"ppl": test["run"]["windows"]}}, {"outcomes": {"ppl": test["unedited"]["windows"]}})
    assert ratio[0] == pytest.approx(test["run"]["ppl"] / test["unedited"]["ppl"], rel=1e-9)
    md = pa.heldout_markdown(h)
    assert f"| run | 3 | test | {test['unedited']['ppl']:.2f} | {test['run']['ppl']:.2f} | {ratio[0]:.3f} ({ratio[1]:.3f}-{ratio[2]:.3f}) |" in md
    assert "| run / twin | 1.000 (1.000-1.000) | 1.000 (1.000-1.000) |" in md

    # measured on two days: each run alone, then paired through the files --out writes, as if measured together
    alone = {r.name: pa.heldout(model, tok, [(r, weights)], 1024, texts) for r in (run, twin)}
    assert pa.heldout_markdown(pa.merge_heldout(alone["run"], alone["twin"])) == md
    files = {}
    for name, h1 in alone.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(h1))
    out = tmp_path / "joined.md"
    assert pa.main(["--heldout", "1024", "--with", str(files["run"]), "--with", str(files["twin"]), "--out", str(out)]) == 0
    assert out.read_text() == md and json.loads(out.with_suffix(".json").read_text())["steps"] == {"run": 3, "twin": 3}
    with pytest.raises(SystemExit, match=r"run measured there and here; give each run once"):
        pa.merge_heldout(alone["run"], json.loads(files["run"].read_text()))
    other = json.loads(files["twin"].read_text())
    other["texts"]["valid"]["unedited"]["windows"][2][0] *= 1.01  # another model or another text
    with pytest.raises(SystemExit, match=r"unedited model's window 2 of valid has NLL .* not the same model or not the same text"):
        pa.merge_heldout(alone["run"], other)
    other = json.loads(files["twin"].read_text())
    other["tokens"] = 2048
    with pytest.raises(SystemExit, match=r"tokens 2048, here 1024"):
        pa.merge_heldout(alone["run"], other)
    with pytest.raises(SystemExit):  # argparse: --with joins --heldout measurements
        pa.main(["--with", str(files["run"])])
    assert pa.run_labels([tmp_path / "a" / "run", tmp_path / "b" / "run", twin]) == ["a/run", "b/run", "twin"]

    with pytest.raises(SystemExit, match=r"--heldout 256: fewer tokens than the runs' points scored \(512\)"):
        pa.heldout(model, tok, [(run, weights)], 256, texts)
    # weights that are not the run's: refused on the runs' own text, the model left as it was
    results["evals"][1]["ppl"] = edited["ppl"] * 1.1
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit, match=r"run: its edited weights give ppl .* the run recorded .* not the run's weights"):
        pa.heldout(model, tok, [(run, weights)], 1024, texts)
    assert torch.equal(w4, before)
