"""Editing a model split by accelerate (device map with plain, CPU-offloaded and disk-offloaded
blocks) gives the edit of the same model on one device.

On this CPU-only machine every placement is CPU-side: plain blocks, blocks whose parameters are
on ``meta`` with the real weights in an offload hook's weights map (what ``dispatch_model`` does
with "cpu" entries when the main device is a GPU), and blocks read from disk. The edited layers
are offloaded, so reading W and writing Delta must reach the weights map.
"""

from __future__ import annotations

import pytest
import torch

from betaedit_plugin.editor import BetaEditor
from betaedit_plugin.adapters.undo import UndoLog
from betaedit_plugin.models.devices import module_device, place_model, stored_weight
from betaedit_plugin.models.layout import ModelLayout
from betaedit_plugin.covariance import collect, layer_second_moments
from support.editing import LAYERS, METHOD_NAMES, REQS, TEMPLATES, hp_for, spd

accelerate = pytest.importorskip("accelerate", reason="pip install 'betaedit-plugin[multi-device]'")


def split(model, offload_dir, offloaded=LAYERS, disk=(3,)):
    """Dispatch with an explicit map: blocks in ``disk`` on disk, the rest plain CPU; then the
    blocks in ``offloaded`` CPU-offloaded (parameters on meta, weights in the hook's map)."""
    layout = ModelLayout.from_model(model)
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    device_map.update({layout.layer_name(b): ("disk" if b in disk else "cpu") for b in range(layout.n_layers)})
    accelerate.dispatch_model(model, device_map=device_map, offload_dir=str(offload_dir), force_hooks=True)
    for l in offloaded:
        accelerate.cpu_offload(layout.layer_module(model, l), execution_device=torch.device("cpu"))
    return model


def logits(model, tok, text="The mother tongue of Danielle Darrieux is"):
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def editor(model, tok, method):
    hp = hp_for(method)
    d_k = ModelLayout.from_model(model).key_dim(model, LAYERS[0])
    priors = {l: spd(d_k, 100 + l) for l in hp.layers}
    return BetaEditor(model, tok, hp, prior_covs=priors, context_templates=TEMPLATES)


def test_the_split_is_real(tiny, tmp_path):
    """The edited blocks' parameters are on meta and the disk block reads from disk: a model.weight
    write would be lost, so the editing test below checks the weights-map path."""
    model, tok = tiny("llama")
    before = logits(model, tok)
    split(model, tmp_path)
    layout = ModelLayout.from_model(model)
    for l in LAYERS:
        assert layout.rewrite_module(model, l).weight.device.type == "meta"
        assert stored_weight(model, layout.rewrite_name(l)).device.type == "cpu"
        assert layout.rewrite_device(model, l) == torch.device("cpu")
    assert layout.rewrite_module(model, 3).weight.device.type == "meta"
    assert layout.rewrite_module(model, 0).weight.device.type == "cpu"
    torch.testing.assert_close(logits(model, tok), before, rtol=0, atol=0)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_edit_on_split_model_equals_edit_on_one_device(tiny, tmp_path, method):
    plain_model, tok = tiny("llama", seed=0)
    split_model, _ = tiny("llama", seed=0)
    split(split_model, tmp_path)
    ref, got = editor(plain_model, tok, method), editor(split_model, tok, method)
    ref_log, got_log = UndoLog(ref), UndoLog(got)
    for r in REQS[:2]:  # two sequential steps: the second reads weights the first wrote
        a, b = ref_log.apply([r]), got_log.apply([r])
        assert a["step"] == b["step"]
    ref_d, got_d = ref.weight_deltas(), got.weight_deltas()
    for l in LAYERS:
        assert float(ref_d[l].norm()) > 1e-3  # the edit did something
        torch.testing.assert_close(got_d[l], ref_d[l], rtol=0, atol=1e-6)
        torch.testing.assert_close(got.state.layers[l].hist_cov, ref.state.layers[l].hist_cov, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(logits(split_model, tok), logits(plain_model, tok), rtol=1e-5, atol=1e-5)
    # undo restores the offloaded weights too
    got_log.undo()
    ref_log.undo()
    torch.testing.assert_close(logits(split_model, tok), logits(plain_model, tok), rtol=1e-5, atol=1e-5)


def test_editing_a_disk_offloaded_layer_is_refused(tiny, tmp_path):
    model, tok = tiny("llama")
    split(model, tmp_path, offloaded=(), disk=(1, 2))
    ed = editor(model, tok, "MEMIT")
    w = stored_weight(model, ed.layout.rewrite_name(1)).clone()
    with pytest.raises(ValueError, match=r"offloaded to disk.*'cpu' in the device_map"):
        ed.apply([REQS[0]])
    torch.testing.assert_close(stored_weight(model, ed.layout.rewrite_name(1)), w, rtol=0, atol=0)


def test_stats_on_split_model_read_the_same_cache(tiny, tmp_path, monkeypatch):
    """C0 of a split model: same numbers and same cache key as on one device (the key hashes the
    real, offloaded weights, not the meta placeholders)."""
    plain, tok = tiny("llama")
    layout = ModelLayout.from_model(plain)
    kw = dict(corpus="wiki_vital", n_samples=12, max_length=32, batch_size=4, progress=False)
    ref = layer_second_moments(plain, tok, layout, LAYERS, cache_dir=tmp_path / "c", **kw)
    model, _ = tiny("llama")
    split(model, tmp_path / "off")
    fresh = layer_second_moments(model, tok, layout, LAYERS, use_cache=False, **kw)
    monkeypatch.setattr(collect, "_one_pass", lambda *a, **k: pytest.fail("recomputed: cache key differs"))
    cached = layer_second_moments(model, tok, layout, LAYERS, cache_dir=tmp_path / "c", **kw)
    for l in LAYERS:
        torch.testing.assert_close(fresh[l], ref[l], rtol=1e-10, atol=0)
        torch.testing.assert_close(cached[l], ref[l], rtol=0, atol=0)


def test_module_device_follows_the_hook_not_the_meta_weight(tiny, tmp_path):
    """The execution device comes from accelerate's hook (here a fake cuda:1 one: no GPU needed to
    read it) and is inherited by submodules; a plain module reports its weight's device."""
    model, _ = tiny("llama")
    layout = ModelLayout.from_model(model)
    assert module_device(model, layout.rewrite_name(1)) == torch.device("cpu")
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    add_hook_to_module(layout.layer_module(model, 1), AlignDevicesHook(execution_device=1))
    assert module_device(model, layout.rewrite_name(1)) == torch.device("cuda:1")
    assert module_device(model, layout.rewrite_name(0)) == torch.device("cpu")


def test_place_model_rejects_disk_and_unknown_strategies(tiny):
    model, _ = tiny("llama")
    with pytest.raises(ValueError, match="device_map='everywhere'"):
        place_model(model, device_map="everywhere")
    with pytest.raises(ValueError, match="on 'disk'"):
        place_model(model, device_map={"": "disk"})


# ---------------------------------------------------------------------------- runner and EasyEdit hparams
def _run_cfg(**model):
    return {
        "method": {"name": "betaedit", "alg": "BetaEdit"},
        "model": {"name": "tiny-llama", "path": "tiny-llama", "hparams_file": "smollm2-135m", **model},
        "data": {"name": "counterfact", "split": "edit", "path": None},
        "num_edits": 3,
    }


def test_runner_accepts_model_parallel_and_device_map_without_changing_the_run_identity():
    from betaedit_plugin.runner.config import ConfigError, config_hash, run_identity, validate_config

    plain = validate_config(_run_cfg())
    split_cfg = validate_config(_run_cfg(model_parallel=True))
    assert split_cfg["model"]["model_parallel"] is True  # the runner loads it with device_map="auto"
    assert validate_config(_run_cfg(device_map={"": "cpu"}))["model"]["device_map"] == {"": "cpu"}
    assert config_hash(run_identity(plain)) == config_hash(run_identity(split_cfg))  # resumable either way
    on_gpu = {**plain, "hparams": {**(plain.get("hparams") or {}), "device": "cuda"}}
    assert config_hash(run_identity(plain)) == config_hash(run_identity(on_gpu))  # journaled on a GPU, resumed here
    other = {**plain, "hparams": {**(plain.get("hparams") or {}), "lambda1": 3.0}}
    assert config_hash(run_identity(plain)) != config_hash(run_identity(other))
    with pytest.raises(ConfigError, match=r"model.device_map='everywhere'.*'auto'"):
        validate_config(_run_cfg(device_map="everywhere"))


def test_easyedit_hparams_with_model_parallel_load_a_dispatched_model(tmp_path):
    """EasyEdit's hparams say ``model_parallel: true``; from_hparams loads the model through
    accelerate's device_map='auto' (on this CPU-only machine: all on 'cpu') and edits it."""
    from betaedit_plugin import BetaEditHyperParams

    hp = BetaEditHyperParams(**{**vars(hp_for("BetaEdit")), "model_name": "tiny-llama", "model_parallel": True})
    from betaedit_plugin.models.tiny import build_tiny

    model_probe, _ = build_tiny("llama")
    d_k = ModelLayout.from_model(model_probe).key_dim(model_probe, LAYERS[0])
    ed = BetaEditor.from_hparams(hp, prior_covs={l: spd(d_k, 100 + l) for l in LAYERS}, context_templates=TEMPLATES)
    assert getattr(ed.model, "hf_device_map", None) == {"": "cpu"}
    assert ed.apply([REQS[0]])["step"] == 1
