"""results/ppl_anatomy.py: which edited layer raises the perplexity, with a known change of one
layer (the others unchanged), against perplexities computed here. The script's arithmetic does not
depend on the model, so a tiny random Llama stands in for SmolLM2 (its layers 1 and 2 for SmolLM2's
4-8, windows of 64 tokens for 256): seconds instead of minutes."""

from __future__ import annotations

import json

import pytest
import torch

from support.runs import results_script

TOKENS, WINDOW = 256, 64  # the run's points: 4 windows of held-out text
EDITED, KEPT = 1, 2  # the layer changed and a later one left as it was
# a change of layer EDITED that moves the tiny model's perplexity by a few percent (seed 0: up)
NOISE_SCALE = 3.0
# splits the tiny model's key spectrum (eigenvalues 0.01-9) so that null(C0) has some directions
THRESHOLD = 0.1


def _changed(w: torch.Tensor, seed: int) -> torch.Tensor:
    return w + NOISE_SCALE * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(seed))


def _run(tmp_path, layers, recorded, tokens=TOKENS):
    """A run folder as the campaign writes it: results.json (its eval settings, a point with the
    per-layer diagnostics) and the edited weights as `replay --save` writes them."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    point = {"step": 3, "ppl": recorded}
    for l in layers:
        point.update({f"rel_leakage/L{l}": 0.01 * l, f"perturbation/L{l}": float(l)})
    # a small corpus: the key moments, not their quality, are under test
    hparams = {"mom2_dataset": "wiki_vital", "mom2_n_samples": 6, "mom2_max_length": 32, "mom2_dtype": "float32",
               "nullspace_threshold": THRESHOLD}
    (run / "results.json").write_text(json.dumps({"config": {"eval": {"ppl_tokens": tokens, "ppl_window": WINDOW, "batch_size": 16}},
                                                  "hparams": hparams, "edits_done": 3, "evals": [point]}))
    return run


def test_each_layers_share_of_the_perplexity_rise(tiny, tmp_path):
    from safetensors.torch import save_file

    from betaedit_plugin.eval.capability import heldout_token_ids, perplexity

    pa = results_script("ppl_anatomy")
    model, tok = tiny("llama")
    ids = heldout_token_ids(tok, TOKENS)
    w_edit, w_kept = (model.model.layers[l].mlp.down_proj.weight for l in (EDITED, KEPT))
    before = {EDITED: w_edit.detach().clone(), KEPT: w_kept.detach().clone()}
    edited = _changed(before[EDITED], seed=0)
    unedited = perplexity(model, ids, window=WINDOW, batch_size=4)["ppl"]
    with torch.no_grad():
        w_edit.copy_(edited)
    expected = perplexity(model, ids, window=WINDOW, batch_size=4)["ppl"]
    with torch.no_grad():
        w_edit.copy_(before[EDITED])
    assert expected > 1.05 * unedited  # the change raises the perplexity: something to attribute

    run = _run(tmp_path, (EDITED, KEPT), expected)
    weights = tmp_path / "edited.safetensors"
    save_file({f"model.layers.{EDITED}.mlp.down_proj.weight": edited,
               f"model.layers.{KEPT}.mlp.down_proj.weight": before[KEPT]}, str(weights))
    got = pa.anatomy(model, ids, run, weights)
    assert (got["step"], got["unedited"], got["edited"]) == (3, pytest.approx(unedited, rel=1e-9), pytest.approx(expected, rel=1e-9))
    assert got["layers"][EDITED]["alone"] == pytest.approx(expected, rel=1e-9)
    assert got["layers"][EDITED]["without"] == pytest.approx(unedited, rel=1e-9)
    assert got["layers"][KEPT]["alone"] == pytest.approx(unedited, rel=1e-9)  # an unchanged layer adds nothing
    assert (got["layers"][KEPT]["rel_leakage"], got["layers"][KEPT]["perturbation"]) == (0.01 * KEPT, float(KEPT))
    table = pa.markdown("run", got).split("|---|---|---|---|---|---|---|")[1]
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| ")]
    assert [(r[1].strip(), r[5].strip()) for r in rows] == [(str(EDITED), "100%"), (str(KEPT), "0%")]  # share of the rise removed
    assert all(torch.equal(model.model.layers[l].mlp.down_proj.weight, before[l]) for l in (EDITED, KEPT))

    # the keys: the edited layer's own change leaves its input as it was; the later layer reads keys that
    # moved, through a weight that did not change (no leakage either way); float64 references from the
    # collected moments
    import numpy as np

    from betaedit_plugin.covariance.collect import layer_second_moments
    from betaedit_plugin.models.layout import ModelLayout

    run = _run(tmp_path, (EDITED, KEPT), expected)
    got = pa.anatomy(model, ids, run, weights, tok=tok, stats_dir=tmp_path / "stats")
    assert any((tmp_path / "stats").iterdir())  # the unedited model's C0 went to the cache given, nothing else
    moments = {}
    for name, w in (("c0", before[EDITED]), ("ct", edited)):
        with torch.no_grad():
            w_edit.copy_(w)
        moments[name] = layer_second_moments(model, tok, ModelLayout.from_model(model), [EDITED, KEPT], corpus="wiki_vital",
                                             n_samples=6, max_length=32, progress=False, use_cache=False)
    with torch.no_grad():
        w_edit.copy_(before[EDITED])
    c0, ct = (moments[n][KEPT].numpy() for n in ("c0", "ct"))
    assert got["layers"][EDITED]["key_drift"] == 0.0 and got["layers"][KEPT]["key_drift"] == pytest.approx(
        np.linalg.norm(ct - c0) / np.linalg.norm(c0), rel=1e-9)
    assert got["layers"][KEPT]["key_drift"] > 0.01
    w, v = np.linalg.eigh(c0)
    u = v[:, w < THRESHOLD]
    assert 0 < u.shape[1] < len(w)  # the threshold leaves a null space that is neither empty nor everything
    assert got["layers"][KEPT]["null_share_c0"] == pytest.approx(np.trace(u.T @ c0 @ u) / np.trace(c0), rel=1e-6)
    assert got["layers"][KEPT]["null_share_ct"] == pytest.approx(np.trace(u.T @ ct @ u) / np.trace(ct), rel=1e-6)
    assert got["layers"][KEPT]["rel_leakage_ct"] == 0.0
    d, w0, c_e = ((edited - before[EDITED]).double().numpy(), before[EDITED].double().numpy(), moments["c0"][EDITED].numpy())
    assert got["layers"][EDITED]["rel_leakage_ct"] == pytest.approx(np.trace(d @ c_e @ d.T) / np.trace(w0 @ c_e @ w0.T), rel=1e-9)
    assert f"| {KEPT} |" in pa.markdown("run", got) and "key drift" in pa.markdown("run", got)
    assert torch.equal(w_edit, before[EDITED])

    # weights that are not the run's: refused, naming both perplexities
    run = _run(tmp_path, (EDITED, KEPT), expected * 1.1)
    with pytest.raises(SystemExit, match=r"give ppl .*, the run recorded .* not the run's weights"):
        pa.anatomy(model, ids, run, weights)
    assert torch.equal(w_edit, before[EDITED])


def test_a_runs_perplexity_ratio_on_more_held_out_text(tiny, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from betaedit_plugin.eval.capability import heldout_token_ids, perplexity
    from betaedit_plugin.eval.report import ppl_ratio

    pa = results_script("ppl_anatomy")
    if not pa.VALID_TEXT.is_file():
        pytest.skip(f"{pa.VALID_TEXT} is absent: WikiText-2's validation split comes from ../shared/data")
    texts = {"test": None, "valid": pa.VALID_TEXT}
    model, tok = tiny("llama")
    w_edit = model.model.layers[EDITED].mlp.down_proj.weight
    before = w_edit.detach().clone()
    edited_w = _changed(before, seed=3)  # moves the perplexity of both texts by 8%
    points, more = TOKENS // 2, TOKENS  # the run's points score 2 windows; --heldout scores 4
    short = heldout_token_ids(tok, points)
    assert torch.equal(heldout_token_ids(tok, more)[:points], short)  # more text begins with the runs' own
    unedited = perplexity(model, short, window=WINDOW)
    with torch.no_grad():
        w_edit.copy_(edited_w)
    edited = perplexity(model, short, window=WINDOW)
    longer = {name: perplexity(model, heldout_token_ids(tok, more, path), window=WINDOW) for name, path in texts.items()}
    with torch.no_grad():
        w_edit.copy_(before)

    run = _run(tmp_path, (EDITED,), edited["ppl"], tokens=points)
    results = json.loads((run / "results.json").read_text())
    results["evals"][0]["outcomes"] = {"ppl": edited["windows"]}
    results["evals"].insert(0, {"step": 0, "ppl": unedited["ppl"], "outcomes": {"ppl": unedited["windows"]}})
    (run / "results.json").write_text(json.dumps(results))
    weights = tmp_path / "edited.safetensors"
    save_file({f"model.layers.{EDITED}.mlp.down_proj.weight": edited_w}, str(weights))
    twin = shutil.copytree(run, tmp_path / "twin")  # the same run twice: their ratio is exactly 1

    h = pa.heldout(model, tok, [(run, weights), (twin, weights)], more, texts)
    assert h["steps"] == {"run": 3, "twin": 3} and (h["window"], h["tokens"]) == (WINDOW, more)
    assert h["recorded"]["run"] == pytest.approx(ppl_ratio(results["evals"][1], results["evals"][0]), rel=1e-12)
    for name in texts:
        got = h["texts"][name]
        assert len(got["run"]["windows"]) == more // WINDOW
        assert got["run"]["ppl"] == pytest.approx(longer[name]["ppl"], rel=1e-6)
        assert abs(got["run"]["ppl"] / got["unedited"]["ppl"] - 1) > 0.05  # a random model's: up or down
    assert torch.equal(w_edit, before)
    test = h["texts"]["test"]
    ratio = ppl_ratio({"outcomes": {"ppl": test["run"]["windows"]}}, {"outcomes": {"ppl": test["unedited"]["windows"]}})
    assert ratio[0] == pytest.approx(test["run"]["ppl"] / test["unedited"]["ppl"], rel=1e-9)
    md = pa.heldout_markdown(h)
    assert f"| run | 3 | test | {test['unedited']['ppl']:.2f} | {test['run']['ppl']:.2f} | {ratio[0]:.3f} ({ratio[1]:.3f}-{ratio[2]:.3f}) |" in md
    assert "| run / twin | 1.000 (1.000-1.000) | 1.000 (1.000-1.000) |" in md

    # measured on two days: each run alone, then paired through the files --out writes, as if measured together
    alone = {r.name: pa.heldout(model, tok, [(r, weights)], more, texts) for r in (run, twin)}
    assert pa.heldout_markdown(pa.merge_heldout(alone["run"], alone["twin"])) == md
    files = {}
    for name, h1 in alone.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(h1))
    out = tmp_path / "joined.md"
    assert pa.main(["--heldout", str(more), "--with", str(files["run"]), "--with", str(files["twin"]), "--out", str(out)]) == 0
    assert out.read_text() == md and json.loads(out.with_suffix(".json").read_text())["steps"] == {"run": 3, "twin": 3}
    with pytest.raises(SystemExit, match=r"run measured there and here; give each run once"):
        pa.merge_heldout(alone["run"], json.loads(files["run"].read_text()))
    other = json.loads(files["twin"].read_text())
    other["texts"]["valid"]["unedited"]["windows"][2][0] *= 1.01  # another model or another text
    with pytest.raises(SystemExit, match=r"unedited model's window 2 of valid has NLL .* not the same model or not the same text"):
        pa.merge_heldout(alone["run"], other)
    other = json.loads(files["twin"].read_text())
    other["tokens"] = 2 * more
    with pytest.raises(SystemExit, match=rf"tokens {2 * more}, here {more}"):
        pa.merge_heldout(alone["run"], other)
    with pytest.raises(SystemExit):  # argparse: --with joins --heldout measurements
        pa.main(["--with", str(files["run"])])
    assert pa.run_labels([tmp_path / "a" / "run", tmp_path / "b" / "run", twin]) == ["a/run", "b/run", "twin"]

    with pytest.raises(SystemExit, match=rf"--heldout {points // 2}: fewer tokens than the runs' points scored \({points}\)"):
        pa.heldout(model, tok, [(run, weights)], points // 2, texts)
    # weights that are not the run's: refused on the runs' own text, the model left as it was
    results["evals"][1]["ppl"] = edited["ppl"] * 1.1
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit, match=r"run: its edited weights give ppl .* the run recorded .* not the run's weights"):
        pa.heldout(model, tok, [(run, weights)], more, texts)
    assert torch.equal(w_edit, before)
