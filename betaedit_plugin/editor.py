"""`BetaEditor`: BetaEdit, AlphaEdit and MEMIT as stateful sequential editors.

One editor serves one model with one method (picked from the hparams class) and
owns its `EditorState`: two editors, two histories. A step writes a batch of
n >= 1 requests with MEMIT's layer loop (Meng et al., 2023):

1. z* (d_v, n): target output of the last edited block, all n optimised in one batch (`compute_zs`);
2. for each edited layer l, in ascending order:
   K (d_k, n) = the keys at l (after the earlier layers of this step were written; `KeySweep`),
   R (d_v, n) = (z* - current output of the last edited block) / (layers left, l included),
   Delta (d_v, d_k) from the layer's `IncrementalSolver`, checked finite, then written;
3. once every layer is written: H += K K^T and the solver takes the keys (Woodbury),
   step += n, and BetaEdit recomputes its projector every ``tau`` edits from
   S = (H / t + lambda1 C0) / (lambda1 + 1).

If anything fails in 1-2 the layers already written are restored bit for bit and
the state is untouched. `compute_deltas` runs 1-2 and restores the model
(MEMIT's execute/apply split); `apply` commits.

Usage::

    editor = BetaEditor.from_hparams("hparams/BetaEdit/smollm2-135m.yaml")
    metrics, model = editor.edit(prompts=["The mother tongue of Danielle Darrieux is"],
                                 target_new=["English"], subject=["Danielle Darrieux"])
    editor.save_state("runs/state.safetensors")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import weakref
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch

from .hparams import (
    AlphaEditHyperParams,
    BetaEditHyperParams,
    EditHyperParams,
    MEMITHyperParams,
    hparams_class_for,
    load_hparams,
)
from .requests import EditRequest
from .state import FORMAT, EditorState, LayerState, StateSnapshot, load_state_file, save_state_file

logger = logging.getLogger(__name__)

__all__ = ["BetaEditor", "NonFiniteUpdateError", "WeightsChangedError", "as_requests"]


class NonFiniteUpdateError(ValueError):
    """An update (Delta) had NaN or Inf entries; the model and the state were left as they were."""


class WeightsChangedError(RuntimeError):
    """The edited weights were changed outside the editor, so its history no longer matches them."""


def as_requests(requests: Any) -> List[EditRequest]:
    """Normalise one request or a sequence of `EditRequest` / EasyEdit dicts into a list of EditRequest.

    Raises:
        TypeError: an item is neither an EditRequest nor a mapping.
        ValueError: the sequence is empty, or a request is invalid (subject missing, empty target...).
    """
    if isinstance(requests, (EditRequest, Mapping)):
        requests = [requests]
    if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
        raise TypeError(f"requests: expected a list of EditRequest or EasyEdit dicts, got {type(requests).__name__}")
    if len(requests) == 0:
        raise ValueError("requests=[]: expected at least one edit request")
    out = []
    for i, r in enumerate(requests):
        if isinstance(r, EditRequest):
            out.append(r)
        elif isinstance(r, Mapping):
            out.append(EditRequest.from_easyedit(r))
        else:
            raise TypeError(f"requests[{i}]: expected EditRequest or dict, got {type(r).__name__}")
    return out


def _solver_lambdas(hparams: EditHyperParams, layer: int) -> tuple[float, float]:
    """(lambda1, lambda2) of the IncrementalSolver for one method and layer."""
    if isinstance(hparams, BetaEditHyperParams):
        return float(hparams.lambda1), float(hparams.lambda2)
    if isinstance(hparams, AlphaEditHyperParams):
        return 0.0, float(hparams.L2)
    return hparams.update_weight(layer), 0.0


def _digest(w: torch.Tensor) -> str:
    """Exact content hash of a tensor (bytes, shape, dtype)."""
    t = w.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _edit_mode(model, tok) -> Iterator[None]:
    """Eval mode (no dropout) and right padding while editing; both restored afterwards."""
    was_training = model.training
    side = getattr(tok, "padding_side", None)
    model.eval()
    if side is not None:
        tok.padding_side = "right"
    try:
        yield
    finally:
        model.train(was_training)
        if side is not None:
            tok.padding_side = side


class BetaEditor:
    """Sequential editor for one model and one method (BetaEdit, AlphaEdit or MEMIT).

    Args:
        model: a causal LM (GPT-2, GPT-J, LLaMA, Qwen2/3 layouts); edited in place.
        tok: its tokenizer.
        hparams: `BetaEditHyperParams`, `AlphaEditHyperParams` or `MEMITHyperParams`;
            the class picks the method.
        prior_covs: {layer: C0 (d_k, d_k)} to use instead of computing statistics
            (`betaedit_plugin.plumbing.stats.stats_for_hparams`), e.g. imported ones.
        context_templates: MEMIT-style groups of templates with "{}"; default:
            generated once from the model at the first edit.
        keep_undo: keep what `undo` needs after each `apply` (references plus a copy of
            the edited weights); needed for ``sequential_edit=False`` and the EasyEdit adapter.
        weak_model: hold the model through a weak reference only (used by the EasyEdit adapter).

    The state (history, projector, solver) is built lazily at the first edit or
    on `load_state_dict`, so constructing an editor is cheap.
    """

    def __init__(
        self,
        model,
        tok,
        hparams: EditHyperParams,
        *,
        prior_covs: Optional[Mapping[int, torch.Tensor]] = None,
        context_templates: Optional[List[List[str]]] = None,
        keep_undo: bool = True,
        weak_model: bool = False,
    ) -> None:
        self.hparams = self._check_hparams(hparams)
        from .plumbing.layout import ModelLayout

        # weak_model: the EasyEdit executor keys editors by model in a WeakKeyDictionary, so the
        # editor must not keep its own model alive.
        self._model_ref = weakref.ref(model)
        self._model_strong = None if weak_model else model
        self.tok = tok
        self.layout = ModelLayout.from_model(model, hparams)
        self._check_layers()
        self.device = self.layout.rewrite_module(model, self.hparams.layers[0]).weight.device
        self._prior_covs = self._check_prior_covs(prior_covs) if prior_covs is not None else None
        self._init_templates = self._check_templates(context_templates) if context_templates is not None else None
        self.keep_undo = bool(keep_undo)
        self.state: Optional[EditorState] = None
        self._undo: Optional[tuple[StateSnapshot, Dict[int, torch.Tensor]]] = None
        self._digests: Optional[dict] = None  # {'before': {l: sha}, 'after': {l: sha}} of the last apply
        self._prefix_checked = False  # compute_z's cached prefix is checked against a forward pass once

    # ================================================================ construction
    @classmethod
    def from_hparams(cls, hparams_or_path: Union[EditHyperParams, str, Path], model=None, tok=None, **kwargs):
        """Build from a hparams object or YAML path; loads ``hparams.model_name`` when no model is given.

        ``model_name`` may be "smollm2-135m", "tiny-<arch>" or a local Hugging Face directory
        (see `betaedit_plugin.models.load_model`); nothing is downloaded.
        """
        hparams = hparams_or_path
        if isinstance(hparams_or_path, (str, Path)):
            hparams = load_hparams(hparams_or_path)
        hparams = cls._check_hparams(hparams)
        if (model is None) != (tok is None):
            raise ValueError("model and tok: give both or neither (neither loads hparams.model_name)")
        if model is None:
            from .models import load_model

            model, tok = load_model(hparams.model_name)
            model.to(_torch_device(hparams.device))
        return cls(model, tok, hparams, **kwargs)

    @staticmethod
    def _check_hparams(hparams) -> EditHyperParams:
        if not isinstance(hparams, EditHyperParams):
            raise TypeError(
                f"hparams: expected BetaEditHyperParams, AlphaEditHyperParams or MEMITHyperParams, "
                f"got {type(hparams).__name__}; load one with betaedit_plugin.load_hparams(path)"
            )
        cls = hparams_class_for(hparams.alg_name)  # KeyError with "Did you mean" for unknown names
        if not isinstance(hparams, cls):
            raise ValueError(f"alg_name={hparams.alg_name!r} does not match the hparams class {type(hparams).__name__}")
        return hparams

    def _check_layers(self) -> None:
        n = self.layout.n_layers
        bad = [l for l in self.hparams.layers if l >= n]
        if bad:
            raise ValueError(
                f"layers={self.hparams.layers}: layer(s) {bad} do not exist; the model has {n} layers (0..{n - 1})"
            )
        if self.hparams.v_loss_layer >= n:
            raise ValueError(
                f"v_loss_layer={self.hparams.v_loss_layer}: the model has {n} layers; use {n - 1} or -1 (last layer)"
            )

    def _check_prior_covs(self, prior_covs: Mapping[int, torch.Tensor]) -> Dict[int, torch.Tensor]:
        if not isinstance(prior_covs, Mapping):
            raise TypeError(f"prior_covs: expected a dict {{layer: Tensor (d_k, d_k)}}, got {type(prior_covs).__name__}")
        want, have = set(self.hparams.layers), set(int(k) for k in prior_covs)
        if want != have:
            raise ValueError(
                f"prior_covs has layers {sorted(have)} but hparams.layers is {sorted(want)}: give one C0 per edited layer"
            )
        out = {}
        for l in self.hparams.layers:
            c = prior_covs[l] if l in prior_covs else prior_covs[str(l)]
            d_k = self.layout.key_dim(self.model, l)
            if not isinstance(c, torch.Tensor) or tuple(c.shape) != (d_k, d_k):
                shape = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
                raise ValueError(f"prior_covs[{l}]: shape {shape}, expected ({d_k}, {d_k}) (d_k of layer {l})")
            c = c.detach().to(self.device, torch.float64)
            if not bool(torch.isfinite(c).all()):
                raise ValueError(f"prior_covs[{l}] has non-finite values")
            if not torch.allclose(c, c.T, rtol=1e-6, atol=1e-8 * float(c.abs().max().clamp_min(1.0))):
                raise ValueError(f"prior_covs[{l}] is not symmetric: expected a second-moment matrix E[k k^T]")
            out[l] = c.clone()
        return out

    @staticmethod
    def _check_templates(templates) -> List[List[str]]:
        if not isinstance(templates, (list, tuple)) or not templates:
            raise ValueError("context_templates: expected a non-empty list of lists of strings with '{}'")
        out = []
        for i, group in enumerate(templates):
            if isinstance(group, str) or not isinstance(group, (list, tuple)) or not group:
                raise ValueError(f"context_templates[{i}]={group!r}: expected a non-empty list of strings")
            for t in group:
                if not isinstance(t, str) or "{}" not in t:
                    raise ValueError(f"context_templates[{i}] holds {t!r}: every template needs '{{}}'")
            out.append(list(group))
        return out

    # ================================================================ properties
    @property
    def model(self):
        """The edited model (ReferenceError if it was a weak reference and the model is gone)."""
        model = self._model_ref()
        if model is None:
            raise ReferenceError("the model of this editor no longer exists")
        return model

    @property
    def method(self) -> str:
        """Registry name: 'BetaEdit', 'BE-AlphaEdit' or 'BE-MEMIT'."""
        return self.hparams.alg_name

    @property
    def step(self) -> int:
        """Number of edits (requests) written so far."""
        return 0 if self.state is None else self.state.step

    @property
    def context_templates(self) -> List[List[str]]:
        return self._ensure_state().context_templates

    def fingerprint(self) -> dict:
        """What a saved state must match: method, model identity and shapes, layers, hparams."""
        cfg = getattr(self.model, "config", None)
        fp = {
            "format": FORMAT,
            "method": self.method,
            "model_type": self.layout.model_type,
            "name_or_path": str(getattr(cfg, "_name_or_path", "")),
            "layers": list(self.hparams.layers),
            "d_k": [self.layout.key_dim(self.model, l) for l in self.hparams.layers],
            "d_v": [self.layout.value_dim(self.model, l) for l in self.hparams.layers],
            "hparams": _hparams_fingerprint(self.hparams),
        }
        return json.loads(json.dumps(fp))

    # ================================================================ state
    def _make_solver(self, layer: int, prior_cov: torch.Tensor, basis=None, hist_cov=None):
        from .linalg import IncrementalSolver

        lambda1, lambda2 = _solver_lambdas(self.hparams, layer)
        return IncrementalSolver(prior_cov, basis=basis, hist_cov=hist_cov, lambda1=lambda1, lambda2=lambda2)

    def _initial_basis(self, prior_cov: torch.Tensor) -> Optional[torch.Tensor]:
        if isinstance(self.hparams, MEMITHyperParams):
            return None
        from .linalg import nullspace_basis

        return nullspace_basis(prior_cov, self.hparams.nullspace_threshold)

    def _ensure_state(self) -> EditorState:
        """Build the state at the first use: priors, projector from C0, zero history, templates."""
        if self.state is not None:
            return self.state
        priors = self._prior_covs
        if priors is None:
            from .plumbing.stats import stats_for_hparams

            logger.info("computing key second moments for layers %s", self.hparams.layers)
            priors = {
                l: c.to(self.device, torch.float64)
                for l, c in stats_for_hparams(self.model, self.tok, self.hparams, self.layout).items()
            }
        layers = {}
        for l in self.hparams.layers:
            C0 = priors[l]
            basis = self._initial_basis(C0)
            if basis is not None:
                logger.info("layer %d: projector rank %d of %d", l, basis.shape[1], basis.shape[0])
            layers[l] = LayerState(
                layer=l,
                prior_cov=C0,
                hist_cov=torch.zeros_like(C0),
                w0=self.layout.read_weight(self.model, l),
                solver=self._make_solver(l, C0, basis=basis),
            )
        templates = self._init_templates
        if templates is None:
            from .plumbing.templates import generate_context_templates

            with _edit_mode(self.model, self.tok):
                templates = generate_context_templates(
                    self.model, self.tok, self.hparams.context_template_length_params, seed=0
                )
        self.state = EditorState(method=self.method, layers=layers, context_templates=templates)
        return self.state

    def state_dict(self) -> Dict[str, Any]:
        """``{"tensors", "meta"}``: the state plus the current edited weights and the fingerprint."""
        state = self._ensure_state()
        sd = state.state_dict()
        for l in self.hparams.layers:
            sd["tensors"][f"layers.{l}.w"] = self.layout.read_weight(self.model, l)
        sd["meta"]["fingerprint"] = self.fingerprint()
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any], restore_weights: bool = True) -> None:
        """Load a state saved from an editor with the same model, method, layers and hparams.

        The model must hold either the saved weights (W_t) or the original ones (W_0) at every
        edited layer; with ``restore_weights`` the latter are replaced by W_t (resume from a
        fresh copy of the original model). Raises ValueError naming what differs; on error
        nothing is changed.
        """
        meta = state_dict.get("meta") if isinstance(state_dict, Mapping) else None
        tensors = state_dict.get("tensors") if isinstance(state_dict, Mapping) else None
        if not isinstance(meta, Mapping) or not isinstance(tensors, Mapping):
            raise ValueError("state_dict: expected {'tensors': ..., 'meta': ...} from BetaEditor.state_dict()")
        diff = _fingerprint_diff(meta.get("fingerprint"), self.fingerprint())
        if diff:
            raise ValueError("saved editor state does not match this editor: " + "; ".join(diff))
        new_state = EditorState.from_state_dict(
            state_dict, self.hparams.layers, lambda l, c0: self._make_solver(l, c0), device=self.device
        )
        to_write = {}
        for l in self.hparams.layers:
            saved_w = tensors.get(f"layers.{l}.w")
            if saved_w is None:
                raise ValueError(f"state: missing tensor 'layers.{l}.w' (the edited weight of layer {l})")
            current = self.layout.read_weight(self.model, l)
            saved_w = saved_w.to(current.device, current.dtype)
            if torch.equal(current, saved_w):
                continue
            if torch.equal(current, new_state.layers[l].w0.to(current.device, current.dtype)):
                if not restore_weights:
                    raise ValueError(
                        f"layer {l}: the model holds the original weights but the state is at step "
                        f"{new_state.step}; pass restore_weights=True to write the saved weights"
                    )
                to_write[l] = saved_w
                continue
            raise ValueError(
                f"layer {l}: the model's weights match neither the saved edited weights nor the saved "
                "original weights; load the state into the model it was saved from (or a copy of it)"
            )
        for l, w in to_write.items():
            self.layout.write_weight(self.model, l, w)
        if to_write:
            logger.info("wrote the saved edited weights of layers %s into the model", sorted(to_write))
        self.state = new_state
        self._undo, self._digests = None, None

    def save_state(self, path: Union[str, Path]) -> Path:
        """Save `state_dict` as safetensors (tensors) + JSON metadata (fingerprint, step, templates)."""
        sd = self.state_dict()
        return save_state_file(path, sd["tensors"], sd["meta"])

    def load_state(self, path: Union[str, Path], restore_weights: bool = True) -> None:
        """Load a file written by `save_state` (see `load_state_dict`)."""
        tensors, meta = load_state_file(path)
        self.load_state_dict({"tensors": tensors, "meta": meta}, restore_weights=restore_weights)

    def weight_deltas(self) -> Dict[int, torch.Tensor]:
        """{layer: W_t - W_0} (d_v, d_k), the cumulative update of each edited layer."""
        state = self._ensure_state()
        return {
            l: self.layout.read_weight(self.model, l) - s.w0.to(self.device) for l, s in state.layers.items()
        }

    # ================================================================ editing
    def compute_deltas(self, requests) -> Dict[int, torch.Tensor]:
        """{layer: Delta (d_v, d_k)} for one step; the model and the state are unchanged afterwards."""
        reqs = as_requests(requests)
        state = self._ensure_state()
        deltas, _, before = self._run_layers(reqs, state)
        self._restore_weights(before)
        return deltas

    def apply(self, requests) -> Dict[str, Any]:
        """Write one step (a batch of requests) and update the history.

        Returns:
            {'step': edits so far, 'n': requests in this step,
             'delta_norm': {layer: ||Delta||_F}, 'refreshed': whether the projector was recomputed}
        Raises:
            ValueError / TypeError for bad requests, NonFiniteUpdateError for a NaN/Inf update;
            in every case the weights and the state are left as they were.
        """
        reqs = as_requests(requests)
        state = self._ensure_state()
        deltas, keys, before = self._run_layers(reqs, state)
        snap = state.snapshot()
        try:
            refreshed = self._commit(state, keys, len(reqs))
        except BaseException:
            state.restore(snap)
            self._restore_weights(before)
            raise
        self._undo = (snap, before) if self.keep_undo else None
        # content hashes for `weights_status` (the EasyEdit adapter's restore check): only with
        # keep_undo, since hashing every edited weight costs as much as a solver step
        self._digests = None
        if self.keep_undo:
            self._digests = {
                "before": {l: _digest(w) for l, w in before.items()},
                "after": {l: _digest(self.layout.read_weight(self.model, l)) for l in before},
            }
        norms = {l: float(d.double().norm()) for l, d in deltas.items()}
        logger.info("step %d: wrote %d edit(s), ||Delta||_F %s", state.step, len(reqs), norms)
        return {"step": state.step, "n": len(reqs), "delta_norm": norms, "refreshed": refreshed}

    def undo(self, restore_weights: bool = True) -> None:
        """Return to the state (and, with ``restore_weights``, the weights) before the last `apply`."""
        if self._undo is None:
            raise RuntimeError("nothing to undo: no apply() since the editor was built or last undone (keep_undo=True?)")
        snap, before = self._undo
        if restore_weights:
            self._restore_weights(before)
        self.state.restore(snap)
        self._undo, self._digests = None, None

    def weights_status(self) -> str:
        """'unchanged' (as last written, or never edited), 'restored' (back to before the last apply) or 'changed'."""
        if self._digests is None:
            return "unchanged"
        now = {l: _digest(self.layout.read_weight(self.model, l)) for l in self._digests["after"]}
        if now == self._digests["after"]:
            return "unchanged"
        if now == self._digests["before"]:
            return "restored"
        return "changed"

    # ---------------------------------------------------------------- internals
    def _run_layers(self, reqs: List[EditRequest], state: EditorState):
        """Steps 1-2 of the module docstring: returns (deltas, keys, weights before), model edited.

        On any error the written layers are restored bit for bit before re-raising.
        """
        from .plumbing.keys import KeySweep
        from .plumbing.values import compute_current_z, compute_zs

        hp, layers, templates = self.hparams, self.hparams.layers, state.context_templates
        last = layers[-1]
        step_no = state.step + 1
        before: Dict[int, torch.Tensor] = {}
        deltas: Dict[int, torch.Tensor] = {}
        keys: Dict[int, torch.Tensor] = {}
        with _edit_mode(self.model, self.tok):
            try:
                z_star = compute_zs(
                    self.model, self.tok, reqs, hp, self.layout, last, templates, check_prefix=not self._prefix_checked
                )
                self._prefix_checked = True
                sweep = KeySweep(self.model, self.tok, reqs, hp, self.layout, layers, templates)
                for i, l in enumerate(layers):
                    K = sweep.keys(l)
                    cur = compute_current_z(self.model, self.tok, reqs, hp, self.layout, last)
                    R = (z_star.to(cur.device, cur.dtype) - cur) / (len(layers) - i)
                    for what, t in (("keys K", K), ("residual R (z* - current z)", R)):
                        if not bool(torch.isfinite(t).all()):
                            raise _non_finite(what, l, step_no, reqs)
                    delta = state.layers[l].solver.delta(K, R)
                    if not bool(torch.isfinite(delta).all()):
                        raise _non_finite("update Delta", l, step_no, reqs)
                    before[l] = self.layout.read_weight(self.model, l)
                    self.layout.add_delta(self.model, l, delta)
                    deltas[l], keys[l] = delta, K
                    sweep.advance(l)
            except BaseException:
                self._restore_weights(before)
                raise
        return deltas, keys, before

    def _restore_weights(self, before: Mapping[int, torch.Tensor]) -> None:
        for l, w in before.items():
            self.layout.write_weight(self.model, l, w)

    def _commit(self, state: EditorState, keys: Mapping[int, torch.Tensor], n: int) -> bool:
        """Step 3: history, solver, step count, projector refresh. Returns whether it refreshed."""
        from .linalg import add_keys

        for l, K in keys.items():
            s = state.layers[l]
            K = K.to(self.device, torch.float64)
            s.hist_cov = add_keys(s.hist_cov, K)
            s.solver.add_keys(K)
            s.n_keys += K.shape[1]
        state.step += n
        hp = self.hparams
        if isinstance(hp, BetaEditHyperParams) and state.step - state.last_refresh >= hp.tau:
            self._refresh(state)
            return True
        return False

    def _refresh(self, state: EditorState) -> None:
        """BetaEdit: P from S = (H / t + lambda1 C0) / (lambda1 + 1), solver recomputed from scratch."""
        from .linalg import nullspace_basis, protected_cov

        hp = self.hparams
        for l, s in state.layers.items():
            S = protected_cov(s.hist_cov, state.step, s.prior_cov, hp.lambda1)
            basis = nullspace_basis(S, hp.nullspace_threshold)
            s.solver.refresh(basis, s.hist_cov)
            logger.info("step %d, layer %d: projector refreshed, rank %d", state.step, l, basis.shape[1])
        state.last_refresh = state.step

    # ================================================================ EasyEdit-shaped front end
    def edit(
        self,
        prompts: Union[str, List[str]],
        target_new: Union[str, List[str]],
        subject: Union[str, List[str]],
        ground_truth: Optional[Union[str, List[str]]] = None,
        rephrase_prompts: Optional[Union[str, List[str]]] = None,
        locality_inputs: Optional[Dict[str, Dict[str, Any]]] = None,
        sequential_edit: bool = True,
        **kwargs,
    ):
        """Edit like EasyEdit's ``BaseEditor.edit`` and score like it: returns (metrics, model).

        Args:
            prompts, target_new, subject: one string each, or lists of equal length.
            ground_truth, rephrase_prompts: optional, same length.
            locality_inputs: {key: {'prompt': [...], 'ground_truth': [...]}} one entry per request.
            sequential_edit: True keeps every edit; False restores the weights and the state
                after each step (EasyEdit's non-sequential mode).
        Returns:
            metrics: one dict per request {'case_id', 'requested_rewrite', 'pre': {...}, 'post': {...}}
            with 'rewrite_acc', 'rephrase_acc' (lists of one float) and 'locality'
            {'<key>_output': tokens, and after the edit '<key>_acc': [agreement with pre]}.
        """
        if kwargs:
            logger.debug("edit(): ignoring EasyEdit-only arguments %s", sorted(kwargs))
        records, reqs = _build_records(prompts, target_new, subject, ground_truth, rephrase_prompts, locality_inputs)
        if not sequential_edit and not self.keep_undo:
            raise ValueError("sequential_edit=False needs keep_undo=True (the editor restores after each step)")
        metrics = [
            {"case_id": i, "requested_rewrite": rec, "pre": self._score(rec)} for i, rec in enumerate(records)
        ]
        bs = self.hparams.batch_size
        for start in range(0, len(reqs), bs):
            idx = list(range(start, min(start + bs, len(reqs))))
            info = self.apply([reqs[i] for i in idx])
            for i in idx:
                post = self._score(records[i])
                for key, pre_tokens in metrics[i]["pre"]["locality"].items():
                    loc = key[: -len("_output")]
                    post["locality"][f"{loc}_acc"] = [
                        _agreement(a, b) for a, b in zip(pre_tokens, post["locality"][key])
                    ]
                metrics[i].update({"post": post, "step": info["step"]})
            if not sequential_edit:
                self.undo(restore_weights=True)
        return metrics, self.model

    def _score(self, rec: dict) -> dict:
        from .eval.token_metrics import predicted_target_tokens, target_token_accuracy

        out: Dict[str, Any] = {
            "rewrite_acc": [target_token_accuracy(self.model, self.tok, rec["prompt"], rec["target_new"], self.device)]
        }
        if rec.get("rephrase_prompt"):
            out["rephrase_acc"] = [
                target_token_accuracy(self.model, self.tok, rec["rephrase_prompt"], rec["target_new"], self.device)
            ]
        out["locality"], out["portability"] = {}, {}
        for key, item in rec.get("locality", {}).items():
            preds, _ = predicted_target_tokens(self.model, self.tok, item["prompt"], item["ground_truth"], self.device)
            out["locality"][f"{key}_output"] = [preds]
        return out


# ==================================================================== helpers
def _torch_device(device) -> torch.device:
    """EasyEdit's convention: an int means cuda:<int>."""
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device(f"cuda:{device}")
    return torch.device(device)


def _agreement(a: Sequence[int], b: Sequence[int]) -> float:
    from .eval.token_metrics import token_agreement

    return token_agreement(a, b)


def _as_list(name: str, value, n: int) -> list:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}: expected a string or a list of strings, got {type(value).__name__}")
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries but prompts has {n}: give one per prompt")
    return list(value)


def _build_records(prompts, target_new, subject, ground_truth, rephrase_prompts, locality_inputs):
    """EasyEdit-style request dicts plus validated EditRequests (all checks before any edit)."""
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts={prompts!r}: expected a non-empty string or list of strings")
    n = len(prompts)
    target_new = _as_list("target_new", target_new, n)
    subject = _as_list("subject", subject, n)
    ground_truth = _as_list("ground_truth", ground_truth, n) if ground_truth is not None else [None] * n
    rephrase = _as_list("rephrase_prompts", rephrase_prompts, n) if rephrase_prompts is not None else [None] * n
    records = []
    for i in range(n):
        rec = {"prompt": prompts[i], "subject": subject[i], "target_new": target_new[i],
               "ground_truth": ground_truth[i], "locality": {}}
        if rephrase[i] is not None:
            rec["rephrase_prompt"] = rephrase[i]
        records.append(rec)
    for key, item in (locality_inputs or {}).items():
        if not isinstance(item, Mapping) or "prompt" not in item or "ground_truth" not in item:
            raise ValueError(f"locality_inputs[{key!r}]: expected {{'prompt': [...], 'ground_truth': [...]}}")
        lp = _as_list(f"locality_inputs[{key!r}]['prompt']", item["prompt"], n)
        lg = _as_list(f"locality_inputs[{key!r}]['ground_truth']", item["ground_truth"], n)
        for i in range(n):
            if lp[i] is not None:
                gt = lg[i][0] if isinstance(lg[i], (list, tuple)) else lg[i]
                records[i]["locality"][key] = {"prompt": lp[i], "ground_truth": gt}
    reqs = []
    for i, rec in enumerate(records):
        try:
            reqs.append(EditRequest.from_easyedit({**rec, "case_id": i}))
        except ValueError as exc:
            raise ValueError(f"request {i}: {exc}") from None
    return records, reqs


def _hparams_fingerprint(hparams: EditHyperParams) -> dict:
    """``hparams.fingerprint()``, JSON-normalised (lists, not tuples)."""
    return json.loads(json.dumps(hparams.fingerprint()))


def _non_finite(what: str, layer: int, step_no: int, reqs: Sequence[EditRequest]) -> NonFiniteUpdateError:
    return NonFiniteUpdateError(
        f"non-finite {what} at layer {layer}, step {step_no} (case_id {[r.case_id for r in reqs]}): NaN or Inf; "
        "the model and the editor state are unchanged. Check the target values (v_lr, clamp_norm_factor) "
        "and the prior covariances."
    )


def _fingerprint_diff(saved: Any, here: dict) -> List[str]:
    """Human-readable differences between two fingerprints (empty list when equal)."""
    if not isinstance(saved, Mapping):
        return ["the saved state has no fingerprint (not written by BetaEditor.save_state?)"]
    out = []
    for key in sorted(set(saved) | set(here)):
        a, b = saved.get(key), here.get(key)
        if key == "hparams" and isinstance(a, Mapping) and isinstance(b, Mapping):
            for hk in sorted(set(a) | set(b)):
                if a.get(hk) != b.get(hk):
                    out.append(f"hparams.{hk}: saved {a.get(hk)!r}, here {b.get(hk)!r}")
        elif a != b:
            out.append(f"{key}: saved {a!r}, here {b!r}")
    return out
