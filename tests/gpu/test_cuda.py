"""On a CUDA device (``pytest -m gpu``; skipped without one): the fast value path and a whole edit
give what they give on the CPU. scripts/gpu_check.sh runs these on the offline GPU machines."""

from __future__ import annotations

import pytest
import torch

import betaedit_plugin.compute_z as values
from betaedit_plugin import BetaEditHyperParams, edit
from betaedit_plugin.models.layout import ModelLayout
from betaedit_plugin.requests import EditRequest

pytestmark = pytest.mark.gpu

CTX = [["{}"], ["The cat. {}", "Because I said so. {}"]]
REQ = EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", "French")
TINY_EDIT = dict(layers=[1, 2], v_loss_layer=-1, fact_token="last", v_num_grad_steps=20, v_lr=0.5,
                 clamp_norm_factor=10.0, v_weight_decay=0.0, kl_factor=0.0, lambda1=1.0, lambda2=0.1,
                 nullspace_threshold=0.3, mom2_n_samples=50, mom2_max_length=32,
                 context_template_length_params=[[5, 2]])


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
def test_value_optimisation_on_cuda_takes_the_cached_prefix_and_matches_cpu(tiny, arch, monkeypatch):
    model, tok = tiny(arch)
    layout = ModelLayout.from_model(model)
    hp = BetaEditHyperParams(layers=[1, 2], v_num_grad_steps=8, v_lr=0.2, clamp_norm_factor=4.0)
    on_cpu = values.optimise_value(model, tok, REQ, hp, layout, 1, CTX)

    def fallback(*args, **kwargs):
        raise AssertionError("the whole-sequence fallback was taken on CUDA")

    monkeypatch.setattr(values, "run_frozen_prefix", fallback)
    on_cuda = values.optimise_value(model.to("cuda"), tok, REQ, hp, layout, 1, CTX)
    assert on_cuda.z.device.type == "cuda"
    torch.testing.assert_close(on_cuda.z.cpu(), on_cpu.z, rtol=1e-3, atol=1e-3)


def test_betaedit_edits_tiny_llama_on_cuda(tmp_path, monkeypatch):
    from betaedit_plugin import BetaEditor

    monkeypatch.setenv("BETAEDIT_CACHE", str(tmp_path / "cache"))
    hp = BetaEditHyperParams(model_name="tiny-llama", device="cuda", **TINY_EDIT)
    editor = BetaEditor.from_hparams(hp)
    metrics, model = edit(editor, prompts=[REQ.prompt], target_new=["German"], subject=[REQ.subject])
    assert next(model.parameters()).device.type == "cuda"
    assert (metrics[0]["pre"]["rewrite_acc"][0], metrics[0]["post"]["rewrite_acc"][0]) == (0.0, 1.0)
