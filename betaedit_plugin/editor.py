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
   its projector refresh every ``tau`` edits).

What differs between methods (the solver's lambdas, the initial projector, what happens after a
commit) is the method's `UpdateRule`; this module does not name any method.

If anything fails in 1-2 the layers already written are restored bit for bit and the state is
untouched. `compute` runs 1-2 and restores the model, returning an `EditStep` (MEMIT's
execute/apply split); `apply` writes either requests (1-3) or a computed step (its deltas, then 3).

Usage::

    editor = BetaEditor.from_hparams("hparams/BetaEdit/smollm2-135m.yaml")
    editor.apply([EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English")])
    editor.save_state("runs/state.safetensors")

``editor.edit(prompts=..., target_new=..., subject=...)`` is EasyEdit's ``BaseEditor.edit`` shape
(with its metrics); it lives with the EasyEdit-facing code in `betaedit_plugin.adapters.front`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .models.devices import as_device as _torch_device, resolve_device, same_device
from .errors import BetaEditError, DeviceError, HyperParamsError
from .hparams import EditHyperParams, load_hparams
from .methods import method_of
from .requests import EditRequest, as_requests, check_context_templates, naming_request
from .state import (
    FORMAT,
    EditorState,
    LayerState,
    StateSnapshot,
    editor_state_dict,
    editor_state_from_dict,
    load_state_file,
    save_state_file,
)

logger = logging.getLogger(__name__)

__all__ = ["BetaEditor", "EditStep", "NonFiniteUpdateError", "WeightsChangedError"]


class NonFiniteUpdateError(BetaEditError):
    """An update (Delta) had NaN or Inf entries; the model and the state were left as they were."""


class WeightsChangedError(BetaEditError, RuntimeError):
    """The edited weights were changed outside the editor, so its history no longer matches them."""


@dataclass(frozen=True)
class EditStep:
    """One step computed by `BetaEditor.compute` and not yet written; `BetaEditor.apply` writes it.

    Attributes:
        requests: the step's requests.
        deltas: {layer: Delta (d_v, d_k)}, nn.Linear orientation.
        keys: {layer: K (d_k, n)}, what the commit adds to the history.
        step: the editor's step count it was computed at.
        weights: {layer: W} it was computed on; `apply` refuses weights that differ.
    """

    requests: Tuple[EditRequest, ...]
    deltas: Dict[int, torch.Tensor]
    keys: Dict[int, torch.Tensor]
    step: int
    weights: Dict[int, torch.Tensor]


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
    """Sequential editor for one model and one registered method (BetaEdit, AlphaEdit, MEMIT, ...).

    Args:
        model: a causal LM (GPT-2, GPT-J, LLaMA, Qwen2/3 layouts); edited in place.
        tok: its tokenizer.
        hparams: the hyperparameters of a registered method (`BetaEditHyperParams`, ...);
            their class picks the method.
        prior_covs: {layer: C0 (d_k, d_k)} to use instead of computing statistics
            (`betaedit_plugin.covariance.stats_for_hparams`), e.g. imported ones.
        context_templates: MEMIT-style groups of templates with "{}"; default:
            generated once from the model at the first edit.
        keep_undo: keep what `undo` needs after each `apply` (references plus a copy of
            the edited weights); needed for ``sequential_edit=False`` and the EasyEdit adapter.
        weak_model: hold the model through a weak reference only (used by the EasyEdit adapter).

    The state (history, projector, solver) is built lazily at the first edit, by `prepare`, or
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
        solver_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.hparams = self._check_hparams(hparams)
        self.rule = method_of(hparams).rule(hparams)
        from .models.layout import ModelLayout

        # weak_model: the EasyEdit executor keys editors by model in a WeakKeyDictionary, so the
        # editor must not keep its own model alive.
        self._model_ref = weakref.ref(model)
        self._model_strong = None if weak_model else model
        self.tok = tok
        self.layout = ModelLayout.from_model(model, hparams)
        self.layout.check_layers(self.hparams.layers, self.hparams.v_loss_layer)
        # a model split across devices (accelerate's device_map) has one device per edited layer:
        # its keys, residuals and solver live there; inputs go to the embedding's device
        self.layer_devices: Dict[int, torch.device] = {
            l: self.layout.rewrite_device(model, l) for l in self.hparams.layers
        }
        self.device = self.layer_devices[self.hparams.layers[0]]
        if not self.hparams.model_parallel:  # one device: the one hparams.device names
            wanted = resolve_device(self.hparams.device, "hparams.device")
            for l, dev in self.layer_devices.items():
                if not same_device(wanted, dev):
                    raise DeviceError(
                        f"hparams.device={self.hparams.device!r}, but the model's layer {l} is on {dev}; move the "
                        f"model there (model.to({str(wanted)!r})), set device to {str(dev)!r}, or set "
                        "model_parallel: true for a model split across devices"
                    )
        self._solver_options = _check_solver_options(solver_options)
        # C0, H and W_0 live where the solver keeps its float64 master copies: the layer's device
        # unless solver_options' storage_device says otherwise
        storage = self._solver_options.get("storage_device")
        self._storage: Dict[int, torch.device] = {
            l: _torch_device(storage) if storage is not None else d for l, d in self.layer_devices.items()
        }
        self._prior_covs = self._check_prior_covs(prior_covs) if prior_covs is not None else None
        self._init_templates = check_context_templates(context_templates) if context_templates is not None else None
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

            from .models.devices import place_model

            if not hparams.model_parallel:
                resolve_device(hparams.device, "hparams.device")
            model, tok = load_model(hparams.model_name)
            place_model(model, hparams.device, device_map="auto" if hparams.model_parallel else None)
        return cls(model, tok, hparams, **kwargs)

    @staticmethod
    def _check_hparams(hparams) -> EditHyperParams:
        if not isinstance(hparams, EditHyperParams):
            raise TypeError(
                f"hparams: expected the hyperparameters of a registered method (BetaEditHyperParams, "
                f"AlphaEditHyperParams, MEMITHyperParams, ...), got {type(hparams).__name__}; "
                "load one with betaedit_plugin.load_hparams(path)"
            )
        method = method_of(hparams)
        if hparams.alg_name != method.easyedit_name:
            raise ValueError(
                f"alg_name={hparams.alg_name!r} does not match the hparams class {type(hparams).__name__} "
                f"({method.easyedit_name!r})"
            )
        return hparams

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
            c = c.detach().to(self._storage[l], torch.float64)
            if not bool(torch.isfinite(c).all()):
                raise ValueError(f"prior_covs[{l}] has non-finite values")
            if not torch.allclose(c, c.T, rtol=1e-6, atol=1e-8 * float(c.abs().max().clamp_min(1.0))):
                raise ValueError(f"prior_covs[{l}] is not symmetric: expected a second-moment matrix E[k k^T]")
            out[l] = c.clone()
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
        """The method's EasyEdit name: 'BetaEdit', 'BE-AlphaEdit', 'BE-MEMIT', ..."""
        return self.hparams.alg_name

    @property
    def step(self) -> int:
        """Number of edits (requests) written so far."""
        return 0 if self.state is None else self.state.step

    @property
    def context_templates(self) -> List[List[str]]:
        return self.prepare().context_templates

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
            "hparams": self.hparams.fingerprint(),
        }
        return json.loads(json.dumps(fp))

    # ================================================================ state
    def _make_solver(self, layer: int, prior_cov, basis=None, hist_cov=None):
        placement = {"compute_device": self.layer_devices[layer], **self._solver_options}
        prior_cov = prior_cov.to(self._storage[layer], torch.float64)
        if basis is not None:
            basis = basis.to(self._storage[layer])
        if hist_cov is not None:
            hist_cov = hist_cov.to(self._storage[layer])
        return self.rule.make_solver(layer, prior_cov, basis=basis, hist_cov=hist_cov, **placement)

    def prepare(self) -> EditorState:
        """The state, built at the first call: priors C0, the method's initial projector, zero history,
        context templates. Edits call it; call it first to pay these costs up front."""
        if self.state is not None:
            return self.state
        priors = self._prior_covs
        if priors is None:
            from .covariance import stats_for_hparams

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
            layers[l] = LayerState(
                layer=l,
                prior_cov=C0,
                hist_cov=torch.zeros_like(C0),
                w0=self.layout.read_weight(self.model, l).to(self._storage[l]),
                solver=self._make_solver(l, C0, basis=basis),
            )
        templates = self._init_templates
        if templates is None:
            from .models.templates import generate_context_templates

            with _edit_mode(self.model, self.tok):
                templates = generate_context_templates(
                    self.model, self.tok, self.hparams.context_template_length_params, seed=0
                )
        self.state = EditorState(method=self.method, layers=layers, context_templates=templates)
        return self.state

    def state_dict(self) -> Dict[str, Any]:
        """``{"tensors", "meta"}``: the state plus the current edited weights and the fingerprint."""
        state = self.prepare()
        weights = {l: self.layout.read_weight(self.model, l) for l in self.hparams.layers}
        return editor_state_dict(state, weights, self.fingerprint())

    def load_state_dict(self, state_dict: Mapping[str, Any], restore_weights: bool = True) -> None:
        """Load a state saved from an editor with the same model, method, layers and hparams.

        The model must hold either the saved weights (W_t) or the original ones (W_0) at every
        edited layer; with ``restore_weights`` the latter are replaced by W_t (resume from a
        fresh copy of the original model). Raises ValueError naming what differs; on error
        nothing is changed.
        """
        first = self.hparams.layers[0]
        new_state, saved = editor_state_from_dict(
            state_dict, self.fingerprint(), self.hparams.layers, self._make_solver, device=self._storage[first],
            solver_uses_history=self.rule.uses_history,
        )
        for l, s in new_state.layers.items():  # each layer's C0 and H beside its solver
            s.prior_cov, s.hist_cov = s.prior_cov.to(self._storage[l]), s.hist_cov.to(self._storage[l])
        to_write = {}
        for l, saved_w in saved.items():
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

    def load_state(self, path: Union[str, Path], restore_weights: bool = True, allow_unverified: bool = False) -> None:
        """Load a file written by `save_state` (see `load_state_dict`).

        Every tensor and metadata field is checked against its sha256 first (`load_state_file`;
        ``allow_unverified`` reads a file saved before digests existed); on any error the model
        and the editor are left as they were.
        """
        tensors, meta = load_state_file(path, allow_unverified=allow_unverified)
        self.load_state_dict({"tensors": tensors, "meta": meta}, restore_weights=restore_weights)

    def weight_deltas(self) -> Dict[int, torch.Tensor]:
        """{layer: W_t - W_0} (d_v, d_k), the cumulative update of each edited layer."""
        state = self.prepare()
        return {
            l: (w := self.layout.read_weight(self.model, l)) - s.w0.to(w.device) for l, s in state.layers.items()
        }

    # ================================================================ editing
    def check_requests(self, requests) -> List[EditRequest]:
        """The requests as a list, each checked against the model before anything changes.

        Every sequence an edit step builds (the prompt inside each context template, followed by
        ``target_new``) must fit the model's context (``n_positions`` / ``max_position_embeddings``).
        `apply` and `compute` check their batch; the runner checks every request up front.

        Raises:
            RequestError: names the item (index in ``requests``, case_id), the lengths and the limit.
        """
        from .eval.scoring import context_limit
        from .models.tokens import build_prompt, encode
        from .compute_z import target_token_ids

        reqs = as_requests(requests)
        limit = context_limit(self.model)
        if limit is None:
            return reqs
        contexts = [c for group in self.context_templates for c in group]
        for i, r in enumerate(reqs):
            with naming_request(i, r):
                target = len(target_token_ids(self.tok, r.target_new))
                prompt = max(len(encode(self.tok, build_prompt(r, c))) for c in contexts)
                if prompt + target > limit:
                    raise ValueError(
                        f"the prompt ({prompt} tokens in its longest context template) and target_new ({target} tokens) "
                        f"take {prompt + target} tokens, more than the model's context of {limit} positions; "
                        "shorten them or leave the case out"
                    )
        return reqs

    def compute(self, requests) -> EditStep:
        """Steps 1-2 for one batch of requests; the model and the state are unchanged afterwards.

        Returns:
            an `EditStep` that `apply` writes as it is (no recomputation), as long as neither the
            edited weights nor the state changed in between.
        """
        reqs = as_requests(requests)
        state = self.prepare()
        reqs = self.check_requests(reqs)
        deltas, keys, before, _ = self._run_layers(reqs, state)
        self._restore_weights(before)
        return EditStep(requests=tuple(reqs), deltas=deltas, keys=keys, step=state.step, weights=before)

    def compute_deltas(self, requests) -> Dict[int, torch.Tensor]:
        """{layer: Delta (d_v, d_k)} for one step; the model and the state are unchanged afterwards."""
        return self.compute(requests).deltas

    def compute_targets(self, requests) -> torch.Tensor:
        """Step 1 alone: z* (d_v, n) of a batch on the current weights; nothing is written.

        A run's journal records these; `apply` with ``z_star=`` writes a step from them (replay,
        fixed-target screening), and a target bank is this on the unedited model.
        """
        reqs = self.check_requests(as_requests(requests))
        state = self.prepare()
        from .compute_z import compute_zs

        with _edit_mode(self.model, self.tok):
            z_star = compute_zs(
                self.model, self.tok, reqs, self.hparams, self.layout, self.hparams.layers[-1],
                state.context_templates, check_prefix=not self._prefix_checked,
            )
        self._prefix_checked = True
        return z_star

    def apply(self, requests: Union[EditStep, Any], z_star: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """Write one step and update the history.

        Args:
            requests: a batch of requests (`EditRequest` or EasyEdit dicts), run through steps 1-3,
                or an `EditStep` from `compute`, whose deltas are written as they are.
            z_star: (d_v, n) targets of the batch to use instead of optimising them (step 1 is
                skipped: replaying a journal, fixed-target screening); keys, residuals and the
                update are computed on the current weights as always.

        Returns:
            {'step': edits so far, 'n': requests in this step,
             'delta_norm': {layer: ||Delta||_F}, 'refreshed': whether the solvers were rebuilt,
             'z_star': the step's targets (d_v, n) on the CPU, None for an `EditStep`;
             after a projector refresh, 'refresh': {layer: rank before/after, largest principal angle}}
        Raises:
            RequestError (a ValueError naming the item: index in the batch, case_id) / TypeError for
            bad requests, NonFiniteUpdateError for a NaN/Inf update,
            WeightsChangedError for an `EditStep` computed on other weights or at another step;
            in every case the weights and the state are left as they were.
        """
        state = self.prepare()
        if isinstance(requests, EditStep):
            if z_star is not None:
                raise TypeError("apply(EditStep, z_star=...): an EditStep's deltas are already computed; pass requests")
            computed = requests
            reqs = list(computed.requests)
            deltas, keys, before = computed.deltas, computed.keys, self._write_computed(computed, state)
        else:
            reqs = self.check_requests(requests)
            if z_star is not None:
                z_star = self._check_z_star(z_star, len(reqs))
            deltas, keys, before, z_star = self._run_layers(reqs, state, z_star)
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
        z_out = None if z_star is None else z_star.detach().to("cpu")
        info = {"step": state.step, "n": len(reqs), "delta_norm": norms, "refreshed": refreshed, "z_star": z_out}
        if refreshed and getattr(self.rule, "last_refresh", None):
            info["refresh"] = {str(l): v for l, v in self.rule.last_refresh.items()}  # how much each projector changed
        return info

    def _check_z_star(self, z_star: torch.Tensor, n: int) -> torch.Tensor:
        """Given targets: a finite (d_v, n) tensor for the last edited layer (ValueError naming the shape)."""
        last = self.hparams.layers[-1]
        d_v = self.layout.value_dim(self.model, last)
        if not isinstance(z_star, torch.Tensor) or tuple(z_star.shape) != (d_v, n):
            shape = tuple(z_star.shape) if isinstance(z_star, torch.Tensor) else type(z_star).__name__
            raise ValueError(f"z_star: expected a tensor of shape ({d_v}, {n}) (d_v of layer {last}, one column per "
                             f"request), got {shape}")
        if not bool(torch.isfinite(z_star).all()):
            raise ValueError("z_star: has NaN or Inf entries")
        return z_star

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

    def edit(self, prompts, target_new, subject, **kwargs):
        """EasyEdit's ``BaseEditor.edit`` shape, scored like it: returns (metrics, model).

        See `betaedit_plugin.adapters.front.edit` for the arguments and the metrics.
        """
        from .adapters.front import edit

        return edit(self, prompts=prompts, target_new=target_new, subject=subject, **kwargs)

    # ---------------------------------------------------------------- internals
    def _run_layers(self, reqs: List[EditRequest], state: EditorState, z_star: Optional[torch.Tensor] = None):
        """Steps 1-2 of the module docstring: returns (deltas, keys, weights before, z*), model edited.

        ``z_star`` given: step 1 is skipped and these targets are used.

        On any error the written layers are restored bit for bit before re-raising.
        """
        from .compute_ks import KeySweep
        from .compute_z import compute_current_z, compute_zs

        hp, layers, templates = self.hparams, self.hparams.layers, state.context_templates
        last = layers[-1]
        step_no = state.step + 1
        before: Dict[int, torch.Tensor] = {}
        deltas: Dict[int, torch.Tensor] = {}
        keys: Dict[int, torch.Tensor] = {}
        with _edit_mode(self.model, self.tok):
            try:
                if z_star is None:
                    z_star = compute_zs(
                        self.model, self.tok, reqs, hp, self.layout, last, templates, check_prefix=not self._prefix_checked
                    )
                    self._prefix_checked = True
                sweep = KeySweep(self.model, self.tok, reqs, hp, self.layout, layers, templates)
                for i, l in enumerate(layers):
                    dev = self.layer_devices[l]  # keys and residual go to the edited layer's device
                    K = sweep.keys(l).to(dev)
                    cur = compute_current_z(self.model, self.tok, reqs, hp, self.layout, last)
                    R = ((z_star.to(cur.device, cur.dtype) - cur) / (len(layers) - i)).to(dev)
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
        return deltas, keys, before, z_star

    def _write_computed(self, computed: EditStep, state: EditorState) -> Dict[int, torch.Tensor]:
        """Write an `EditStep`'s deltas onto the weights it was computed on; returns the weights before."""
        layers = self.hparams.layers
        if computed.step != state.step or sorted(computed.deltas) != layers or sorted(computed.keys) != layers:
            raise WeightsChangedError(
                f"EditStep computed at step {computed.step} for layers {sorted(computed.deltas)}, but the editor is at "
                f"step {state.step} with layers {layers}; compute it again"
            )
        before = {}
        for l in layers:
            before[l] = self.layout.read_weight(self.model, l)
            if not torch.equal(before[l], computed.weights[l].to(before[l].device, before[l].dtype)):
                raise WeightsChangedError(
                    f"layer {l}: the weights changed since this EditStep was computed; compute it again"
                )
        written = {}
        try:
            for l in layers:
                self.layout.add_delta(self.model, l, computed.deltas[l])
                written[l] = before[l]
        except BaseException:
            self._restore_weights(written)
            raise
        return before

    def _restore_weights(self, before: Mapping[int, torch.Tensor]) -> None:
        for l, w in before.items():
            self.layout.write_weight(self.model, l, w)

    def _commit(self, state: EditorState, keys: Mapping[int, torch.Tensor], n: int) -> bool:
        """Step 3: history, solver, step count, then the method's after-commit. Returns whether it rebuilt the solvers."""
        from .linalg import add_keys

        for l, K in keys.items():
            s = state.layers[l]
            K = K.to(self.layer_devices[l], torch.float64)
            s.hist_cov = add_keys(s.hist_cov, K)
            if self.rule.uses_history:
                s.solver.add_keys(K, hist_cov=s.hist_cov)  # H with K: the float32 mode recomputes from it
            s.n_keys += K.shape[1]
        state.step += n
        return bool(self.rule.after_commit(state))


SOLVER_OPTIONS = ("compute_dtype", "storage_device", "refresh_every", "inverse_form")


def _check_solver_options(options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """`IncrementalSolver` placement options; by default the per-edit tensors go to the edited layer's device."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(SOLVER_OPTIONS))
    if unknown:
        from ._suggest import did_you_mean

        raise ValueError(
            f"solver_options: unknown key(s) {unknown}.{did_you_mean(unknown[0], SOLVER_OPTIONS)}"
        )
    return options


def _non_finite(what: str, layer: int, step_no: int, reqs: Sequence[EditRequest]) -> NonFiniteUpdateError:
    return NonFiniteUpdateError(
        f"non-finite {what} at layer {layer}, step {step_no} (case_id {[r.case_id for r in reqs]}): NaN or Inf; "
        "the model and the editor state are unchanged. Check the target values (v_lr, clamp_norm_factor) "
        "and the prior covariances."
    )
