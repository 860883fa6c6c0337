"""Editors on tiny random models with fixed priors and templates, for the editor and adapter tests."""

from __future__ import annotations

import torch

from betaedit_plugin import AlphaEditHyperParams, BetaEditHyperParams, EditRequest, MEMITHyperParams
from betaedit_plugin.editor import BetaEditor

LAYERS = [1, 2]
TEMPLATES = [["{}"], ["The. {}", "A. {}"]]
REQS = [
    EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English", case_id=0),
    EditRequest("Michael Jordan plays the sport of", "Michael Jordan", "soccer", case_id=1),
    EditRequest("The official language of Japan is", "Japan", "English", case_id=2),
    EditRequest("Toyota was founded in", "Toyota", "Germany", case_id=3),
    EditRequest("Lionel Messi is a professional", "Lionel Messi", "singer", case_id=4),
]


def spd(d: int, seed: int) -> torch.Tensor:
    """Random SPD 'C0' with half its eigenvalues (1e-3) under the 0.02 null-space threshold."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    ev = torch.cat([torch.full((d // 2,), 1e-3, dtype=torch.float64),
                    torch.rand(d - d // 2, generator=g, dtype=torch.float64) + 0.5])
    return q @ torch.diag(ev) @ q.T


def hp_for(method: str, **over):
    common = dict(layers=LAYERS, v_num_grad_steps=4, v_loss_layer=-1)
    if method == "BetaEdit":
        return BetaEditHyperParams(**{**common, "lambda1": 5.0, "lambda2": 1.0, "tau": 2, **over})
    if method == "AlphaEdit":
        return AlphaEditHyperParams(**{**common, "L2": 1.0, **over})
    return MEMITHyperParams(**{**common, "mom2_update_weight": 5.0, **over})


def make_editor(tiny, method="BetaEdit", arch="llama", seed=0, **over) -> BetaEditor:
    """An editor of ``method`` on a fresh tiny model, with random priors and fixed templates."""
    from betaedit_plugin.models.layout import ModelLayout

    model, tok = tiny(arch, seed=seed)
    hp = hp_for(method, **over)
    d_k = ModelLayout.from_model(model).key_dim(model, LAYERS[0])
    priors = {l: spd(d_k, 100 + l) for l in hp.layers}
    return BetaEditor(model, tok, hp, prior_covs=priors, context_templates=TEMPLATES)


def params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} changed"
