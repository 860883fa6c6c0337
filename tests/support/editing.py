"""Editors on tiny random models with fixed priors and templates, for the editor and adapter tests.

The hyperparameters come from the method registry (`betaedit_plugin.methods.METHODS`): `hp_for`
builds any registered method's ``hparams_class`` with the tiny models' values of the fields it
has, so a newly registered method is covered by the shared tests (parametrized over
`METHOD_NAMES`) without editing them.
"""

from __future__ import annotations

import dataclasses

import torch

from betaedit_plugin import EditRequest
from betaedit_plugin.editor import BetaEditor
from betaedit_plugin.methods import METHODS, get_method

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


#: Every registered method's display name, in registration order: the shared tests' parameter.
METHOD_NAMES = [m.name for m in METHODS]

#: Fields every method has, set alike for the tiny models (4 value steps, loss at the last layer).
COMMON = dict(layers=LAYERS, v_num_grad_steps=4, v_loss_layer=-1)

#: Tiny-model values of method-specific fields, by field name; each is set only where the method's
#: hyperparameter class has that field. Weights small enough that an edit visibly changes the
#: tiny models (the YAML defaults, e.g. lambda1=3000, are sized for real models' C0).
BY_FIELD = {"lambda1": 5.0, "lambda2": 1.0, "tau": 2, "L2": 1.0}

#: ``mom2_update_weight`` is a field of every class (shared by EditHyperParams), but only some
#: methods' solvers weigh C0 by it (MEMIT: K K^T + H + w C0). Where the rule's solver settings
#: follow the field, it is set to this instead of the default 15000, which would leave the tiny
#: models' edits at almost nothing.
UPDATE_WEIGHT = 5.0


def _weighs_c0_by_update_weight(method, hp) -> bool:
    """Whether ``method``'s solver lambdas change with ``mom2_update_weight`` (probed on two values)."""
    probe = [method.rule(dataclasses.replace(hp, mom2_update_weight=w)).solver_lambdas(hp.layers[0]) for w in (1.0, 2.0)]
    return probe[0] != probe[1]


def hp_for(method: str, **over):
    """Hyperparameters of the registered ``method`` (any spelling) for the tiny models.

    `COMMON`, then the `BY_FIELD` values of the fields its class has, then `UPDATE_WEIGHT` where its
    solver uses it, then ``over``. For the shipped methods: BetaEdit lambda1=5, lambda2=1, tau=2;
    AlphaEdit and AlphaEdit-NoHist L2=1; MEMIT mom2_update_weight=5.

    Raises:
        KeyError: ``method`` is not registered.
    """
    m = get_method(method)
    names = {f.name for f in dataclasses.fields(m.hparams_class)}
    values = {**COMMON, **{k: v for k, v in BY_FIELD.items() if k in names}}
    hp = m.hparams_class(**values)
    if "mom2_update_weight" not in over and _weighs_c0_by_update_weight(m, hp):
        values["mom2_update_weight"] = UPDATE_WEIGHT
    return m.hparams_class(**{**values, **over})


#: Tiny architectures the shared tests pair with the methods, by registration index (cycled):
#: one architecture per method keeps the suite short while several are exercised.
ARCH_ROTATION = ("qwen3", "gpt2", "qwen2", "llama", "gptj")


def arch_for(method: str) -> str:
    """The tiny architecture of ``method`` in the shared tests (MEMIT qwen3, AlphaEdit gpt2,
    AlphaEdit-NoHist qwen2, BetaEdit llama for the shipped methods)."""
    index = METHOD_NAMES.index(get_method(method).name)
    return ARCH_ROTATION[index % len(ARCH_ROTATION)]


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
