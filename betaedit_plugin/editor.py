"""`BetaEditor`: the sequential editing loop, the same for every registered method.

One editor serves one model with one method (picked from the hparams class through the method
registry, `betaedit_plugin.methods`) and owns its `EditorState`: two editors, two histories.
A step writes a batch of n >= 1 requests with MEMIT's layer loop (Meng et al., 2023):

1. z* (d_v, n): target output of the last edited block, all n optimised in one batch (`compute_zs`);
2. for each edited layer l, in ascending order:
   K (d_k, n) = the keys at l (after the earlier layers of this step were written; `KeySweep`),
   R (d_v, n) = (z* - current output of the last edited block) / (layers left, l included),
   Delta (d_v, d_k) from the layer's `IncrementalSolver`, checked finite, then written;
3. commit, once every layer is written: H += K K^T, the solver takes the keys (Woodbury) when the
   method keeps a history, step += n, then the method's `UpdateRule.after_commit` (BetaEdit:
   its projector refresh every ``tau`` edits; with ``recollect_c0`` it collects C0 again from the
   model as edited so far, `BetaEditor.current_priors`).

What differs between methods (the solver's lambdas, the initial projector, what happens after a
commit) is the method's `UpdateRule`. If anything fails in 1-2 the written layers are restored bit
for bit and the state is untouched. `compute` runs 1-2 and restores the model, returning an
`EditStep` (MEMIT's execute/apply split); `apply` writes requests (1-3) or a computed step.

Usage::

    editor = BetaEditor.from_hparams("hparams/BetaEdit/smollm2-135m.yaml")
    editor.apply([EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English")])
    editor.save_state("runs/state.safetensors")

Undo, weight digests and EasyEdit's ``edit(prompts=..., target_new=..., subject=...)`` shape live with
the adapters (`betaedit_plugin.adapters.undo`, `betaedit_plugin.adapters.front`).
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch

from .checks import EditStep, check_edit_step, check_hparams, check_prior_covs, check_z_star, non_finite, placement
from .compute_ks import KeySweep
from .compute_z import compute_current_z, compute_zs
from .covariance import stats_for_hparams
from .errors import HyperParamsError, NonFiniteUpdateError, WeightsChangedError
from .hparams import EditHyperParams, load_hparams
from .methods import method_of
from .models import load_placed_model
from .models.layout import ModelLayout
from .models.templates import generate_context_templates
from .models.tokens import check_fits_context, context_limit, edit_mode
from .requests import EditRequest, as_requests, check_context_templates
from .state import EditorState, LayerState, StateIO

logger = logging.getLogger(__name__)

__all__ = ["BetaEditor", "EditStep", "NonFiniteUpdateError", "WeightsChangedError"]


class BetaEditor(StateIO):
    """Sequential editor for one model and one registered method (BetaEdit, AlphaEdit, MEMIT, ...).

    Args:
        model, tok: a causal LM (GPT-2, GPT-J, LLaMA, Qwen2/3 layouts), edited in place, and its tokenizer.
        hparams: the hyperparameters of a registered method (`BetaEditHyperParams`, ...); their
            class picks the method.
        prior_covs: {layer: C0 (d_k, d_k)} instead of computing statistics (`covariance.stats_for_hparams`).
        context_templates: MEMIT-style groups of templates with "{}"; default: generated from the model.
        weak_model: hold the model through a weak reference only (the EasyEdit adapter keys its
            editors by model in a WeakKeyDictionary: the editor must not keep the model alive).
        solver_options: where and in what precision the solver computes (`checks.SOLVER_OPTIONS`).

    The state (history, projector, solver) is built lazily by `prepare` (at the first edit) or
    `load_state_dict`, so constructing an editor is cheap.
    """

    def __init__(
        self,
        model,
        tok,
        hparams: EditHyperParams,
        *,
        prior_covs: Optional[Mapping[int, torch.Tensor]] = None,
        context_templates: Optional[List[List[str]]] = None,
        weak_model: bool = False,
        solver_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.hparams = check_hparams(hparams)
        self.rule = method_of(hparams).rule(hparams)
        self._model_ref = weakref.ref(model)
        self._model_strong = None if weak_model else model
        self.tok = tok
        self.layout = ModelLayout.from_model(model, hparams)
        self.layout.check_layers(self.hparams.layers, self.hparams.v_loss_layer)
        self.layer_devices, self._storage, self._solver_options = placement(model, self.layout, hparams, solver_options)
        self.device = self.layer_devices[self.hparams.layers[0]]
        key_dims = {l: self.layout.key_dim(model, l) for l in self.hparams.layers}
        self._prior_covs = check_prior_covs(prior_covs, key_dims, self._storage) if prior_covs is not None else None
        self._init_templates = check_context_templates(context_templates) if context_templates is not None else None
        self.state: Optional[EditorState] = None
        self._prefix_checked = False  # compute_z's cached prefix is checked against a forward pass once

    @classmethod
    def from_hparams(cls, hparams_or_path: Union[EditHyperParams, str, Path], model=None, tok=None, **kwargs):
        """Build from a hparams object or YAML path; without a model, ``hparams.model_name`` is loaded
        (`betaedit_plugin.models.load_model`: "smollm2-135m", "tiny-<arch>" or a local directory)."""
        hparams = hparams_or_path
        if isinstance(hparams_or_path, (str, Path)):
            hparams = load_hparams(hparams_or_path)
        hparams = check_hparams(hparams)
        if (model is None) != (tok is None):
            raise ValueError("model and tok: give both or neither (neither loads hparams.model_name)")
        if model is None:
            model, tok = load_placed_model(hparams)
        return cls(model, tok, hparams, **kwargs)

    @property
    def model(self):
        """The edited model (ReferenceError if it was a weak reference and the model is gone)."""
        model = self._model_ref()
        if model is None:
            raise ReferenceError("the model of this editor no longer exists")
        return model

    @property
    def method(self) -> str:
        """The method's EasyEdit name: 'BetaEdit', 'BE-AlphaEdit', 'BE-MEMIT', ..."""
        return self.hparams.alg_name

    @property
    def step(self) -> int:
        """Number of edits (requests) written so far."""
        return 0 if self.state is None else self.state.step

    @property
    def context_templates(self) -> List[List[str]]:
        return self.prepare().context_templates

    # ================================================================ state
    def prepare(self) -> EditorState:
        """The state, built at the first call: priors C0, the method's initial projector, zero history,
        context templates. Edits call it; call it first to pay these costs up front."""
        if self.state is not None:
            return self.state
        priors = self._prior_covs
        if priors is None:
            logger.info("computing key second moments for layers %s", self.hparams.layers)
            priors = stats_for_hparams(self.model, self.tok, self.hparams, self.layout)
        layers = {}
        for l in self.hparams.layers:
            C0 = priors[l].to(self._storage[l], torch.float64)
            try:
                basis = self.rule.initial_basis(C0)
            except HyperParamsError as exc:
                raise HyperParamsError(f"{exc} (layer {l})") from None
            if basis is not None:
                logger.info("layer %d: projector rank %d of %d", l, basis.shape[1], basis.shape[0])
            w0 = self.layout.read_weight(self.model, l).to(self._storage[l])
            layers[l] = LayerState(layer=l, prior_cov=C0, hist_cov=torch.zeros_like(C0), w0=w0,
                                   solver=self._make_solver(l, C0, basis=basis))
        templates = self._init_templates
        if templates is None:
            with edit_mode(self.model, self.tok):
                templates = generate_context_templates(
                    self.model, self.tok, self.hparams.context_template_length_params, seed=0
                )
        self.state = EditorState(method=self.method, layers=layers, context_templates=templates)
        return self.state

    def current_priors(self) -> Dict[int, torch.Tensor]:
        """{layer: C0} collected from the model as it is now (the hparams' ``mom2_*`` corpus and settings,
        float64 on CPU), without the statistics cache: an edited model's statistics are used once."""
        logger.info("collecting key second moments of the edited model for layers %s", self.hparams.layers)
        return stats_for_hparams(self.model, self.tok, self.hparams, self.layout, progress=False, use_cache=False)

    def _make_solver(self, layer: int, prior_cov, basis=None, hist_cov=None):
        placement = {"compute_device": self.layer_devices[layer], **self._solver_options}
        prior_cov = prior_cov.to(self._storage[layer], torch.float64)
        basis = None if basis is None else basis.to(self._storage[layer])
        hist_cov = None if hist_cov is None else hist_cov.to(self._storage[layer])
        return self.rule.make_solver(layer, prior_cov, basis=basis, hist_cov=hist_cov, **placement)

    # ================================================================ editing
    def check_requests(self, requests) -> List[EditRequest]:
        """The requests as a list, each checked to fit the model's context in every context template
        (RequestError naming the item, the lengths and the limit)."""
        reqs = as_requests(requests)
        if context_limit(self.model) is not None:  # else there is nothing to check: no need to prepare
            check_fits_context(self.model, self.tok, reqs, [c for g in self.context_templates for c in g])
        return reqs

    def compute(self, requests) -> EditStep:
        """Steps 1-2 for one batch; the model and the state are unchanged afterwards. `apply` writes
        the returned `EditStep` as it is, as long as neither the weights nor the state changed."""
        reqs = as_requests(requests)
        state = self.prepare()
        reqs = self.check_requests(reqs)
        deltas, keys, before, _ = self._run_layers(reqs, state)
        self._restore_weights(before)
        return EditStep(requests=tuple(reqs), deltas=deltas, keys=keys, step=state.step, weights=before)

    def compute_targets(self, requests) -> torch.Tensor:
        """Step 1 alone: z* (d_v, n) of a batch on the current weights; nothing is written (a run's
        journal records these; `apply(..., z_star=)` writes a step from them)."""
        reqs = self.check_requests(as_requests(requests))
        state = self.prepare()
        with edit_mode(self.model, self.tok):
            return self._targets(reqs, state)

    def _targets(self, reqs: List[EditRequest], state: EditorState) -> torch.Tensor:
        z_star = compute_zs(self.model, self.tok, reqs, self.hparams, self.layout, self.hparams.layers[-1],
                            state.context_templates, check_prefix=not self._prefix_checked)
        self._prefix_checked = True  # whether the cached prefix reproduces the model: checked once
        return z_star

    def apply(self, requests: Union[EditStep, Any], z_star: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """Write one step and update the history: a batch of requests (`EditRequest` or EasyEdit dicts)
        through steps 1-3, or an `EditStep` from `compute` as it is. ``z_star`` (d_v, n): targets to use
        instead of optimising them (replay, fixed-target screening).

        Returns {'step', 'n', 'delta_norm': {layer: ||Delta||_F}, 'refreshed', 'z_star' (CPU; None for an
        `EditStep`)} and, after a projector refresh, 'refresh': {layer: ranks, largest principal angle}.
        Raises RequestError / TypeError (bad requests), NonFiniteUpdateError, WeightsChangedError (an
        `EditStep` computed on other weights or at another step); the weights and state are then unchanged.
        """
        state = self.prepare()
        if isinstance(requests, EditStep):
            if z_star is not None:
                raise TypeError("apply(EditStep, z_star=...): an EditStep's deltas are already computed; pass requests")
            reqs = list(requests.requests)
            deltas, keys, before = requests.deltas, requests.keys, self._write_computed(requests, state)
        else:
            reqs = self.check_requests(requests)
            if z_star is not None:
                last = self.hparams.layers[-1]
                z_star = check_z_star(z_star, self.layout.value_dim(self.model, last), len(reqs), last)
            deltas, keys, before, z_star = self._run_layers(reqs, state, z_star)
        snap = state.snapshot()
        try:  # step 3
            state.commit(keys, self.layer_devices, self.rule.uses_history, len(reqs))
            refreshed = bool(self.rule.after_commit(state, current_priors=self.current_priors))
        except BaseException:
            state.restore(snap)
            self._restore_weights(before)
            raise
        norms = {l: float(d.double().norm()) for l, d in deltas.items()}
        logger.info("step %d: wrote %d edit(s), ||Delta||_F %s", state.step, len(reqs), norms)
        z_out = None if z_star is None else z_star.detach().to("cpu")
        info = {"step": state.step, "n": len(reqs), "delta_norm": norms, "refreshed": refreshed, "z_star": z_out}
        if refreshed and getattr(self.rule, "last_refresh", None):
            info["refresh"] = {str(l): v for l, v in self.rule.last_refresh.items()}  # how much each projector changed
        return info

    # ---------------------------------------------------------------- internals
    def _run_layers(self, reqs: List[EditRequest], state: EditorState, z_star: Optional[torch.Tensor] = None):
        """Steps 1-2 (step 1 skipped when ``z_star`` is given): returns (deltas, keys, weights before, z*)
        with the model edited; on any error the written layers are restored bit for bit first."""
        hp, layers, templates = self.hparams, self.hparams.layers, state.context_templates
        last, step_no = layers[-1], state.step + 1
        before: Dict[int, torch.Tensor] = {}
        deltas: Dict[int, torch.Tensor] = {}
        keys: Dict[int, torch.Tensor] = {}
        with edit_mode(self.model, self.tok):
            try:
                if z_star is None:
                    z_star = self._targets(reqs, state)
                sweep = KeySweep(self.model, self.tok, reqs, hp, self.layout, layers, templates)
                for i, l in enumerate(layers):
                    dev = self.layer_devices[l]  # keys and residual go to the edited layer's device
                    K = sweep.keys(l).to(dev)
                    cur = compute_current_z(self.model, self.tok, reqs, hp, self.layout, last)
                    R = ((z_star.to(cur.device, cur.dtype) - cur) / (len(layers) - i)).to(dev)
                    for what, t in (("keys K", K), ("residual R (z* - current z)", R)):
                        if not bool(torch.isfinite(t).all()):
                            raise non_finite(what, l, step_no, reqs)
                    delta = state.layers[l].solver.delta(K, R)
                    if not bool(torch.isfinite(delta).all()):
                        raise non_finite("update Delta", l, step_no, reqs)
                    before[l] = self.layout.read_weight(self.model, l)
                    self.layout.add_delta(self.model, l, delta)
                    deltas[l], keys[l] = delta, K
                    sweep.advance(l)
            except BaseException:
                self._restore_weights(before)
                raise
        return deltas, keys, before, z_star

    def _write_computed(self, computed: EditStep, state: EditorState) -> Dict[int, torch.Tensor]:
        """Write an `EditStep`'s deltas onto the weights it was computed on; returns the weights before."""
        before = self._weights()
        check_edit_step(computed, state.step, self.hparams.layers, before)
        written = {}
        try:
            for l in self.hparams.layers:
                self.layout.add_delta(self.model, l, computed.deltas[l])
                written[l] = before[l]
        except BaseException:
            self._restore_weights(written)
            raise
        return before

    def _restore_weights(self, before: Mapping[int, torch.Tensor]) -> None:
        for l, w in before.items():
            self.layout.write_weight(self.model, l, w)
