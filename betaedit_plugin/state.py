"""The state a sequential editor owns: per-layer history, prior, projector and solver.

One `EditorState` belongs to one `BetaEditor` (one model, one method): two
editors never share a history. The state follows the ``state_dict`` /
``load_state_dict`` pattern of MEMIT's ``SecondMoment``, and is saved as
safetensors (tensors) plus string metadata (the fingerprint, the step count,
the context templates); nothing is pickled.

Per edited layer l (`LayerState`):

- ``prior_cov`` C0 (d_k, d_k) float64: mean uncentred second moment of keys;
- ``hist_cov``  H  (d_k, d_k) float64: sum of K K^T over every edit written;
- ``w0``        W_0 (d_v, d_k): the weight before the first edit (nn.Linear
  orientation, the model's dtype), for ``weight_deltas`` and to check that a
  saved state is loaded into the right model;
- ``solver``: an `IncrementalSolver` carrying (U^T (H + lambda1 C0) U + lambda2 I)^-1
  and the projector basis U (d_k, m), or None for no projection (MEMIT);
- ``n_keys``: number of keys in H.

An editor saves `editor_state_dict`: this state plus the edited weights W_t and a fingerprint
(method, model, layers, hparams) that `editor_state_from_dict` checks before anything is loaded.

Tensors are never modified in place: every update builds new tensors
(``add_keys`` returns H + K K^T, the solver replaces or appends to its inverse,
see `Solver.snapshot` (linalg)), so a snapshot for undo
(`EditorState.snapshot`) only keeps references.

Placement: C0 and H (and W_0) live wherever the caller put them, the float64
*storage* side; the solver keeps what every edit reads (its inverse and, in
the factored form, U) on its *compute* device in its compute dtype
(`IncrementalSolver`'s ``compute_device``, ``compute_dtype``,
``storage_device``). A saved state does not depend on either: tensors are
written from the CPU, U in float64, the inverse in the precision it was carried
in, and `EditorState.from_state_dict` hands each solver H so that it can
recompute its inverse when the saved precision or form differs from its own.
`LayerState.bytes_by_device` says what sits where.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch

from .linalg import add_keys
from ._fileio import IntegrityError, UnsealedFileError, read_tensors, write_tensors

logger = logging.getLogger(__name__)

__all__ = [
    "LayerState",
    "EditorState",
    "StateSnapshot",
    "FORMAT",
    "save_state_file",
    "load_state_file",
    "editor_state_dict",
    "editor_state_from_dict",
    "fingerprint_diff",
    "tensor_bytes_by_device",
    "IntegrityError",
    "UnsealedFileError",
]

FORMAT = "betaedit-plugin/editor-state/1"


@dataclass
class LayerState:
    """History, prior, original weight and solver of one edited layer (see module docstring)."""

    layer: int
    prior_cov: torch.Tensor
    hist_cov: torch.Tensor
    w0: torch.Tensor
    solver: Any
    n_keys: int = 0

    @property
    def basis(self) -> Optional[torch.Tensor]:
        """U (d_k, m) with P = U U^T, or None when updates are not projected."""
        return self.solver.basis

    def bytes_by_device(self) -> Dict[str, int]:
        """{device: bytes} of this layer's tensors (C0, H, W_0 and the solver's), each storage counted once."""
        tensors = [self.prior_cov, self.hist_cov, self.w0]
        if hasattr(self.solver, "tensors"):
            tensors += list(self.solver.tensors())
        return tensor_bytes_by_device(tensors)

    def tensors(self, prefix: str) -> Dict[str, torch.Tensor]:
        """Flat tensors for safetensors, names prefixed with ``prefix``."""
        out = {
            f"{prefix}prior_cov": self.prior_cov,
            f"{prefix}hist_cov": self.hist_cov,
            f"{prefix}w0": self.w0,
        }
        for name, value in self.solver.state_dict().items():
            out[f"{prefix}solver.{name}"] = value
        return out


def tensor_bytes_by_device(tensors) -> Dict[str, int]:
    """{str(device): bytes} over ``tensors``, counting each underlying storage once."""
    seen, out = set(), {}
    for t in tensors:
        if t is None:
            continue
        st = t.untyped_storage()
        key = (str(t.device), st.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        out[str(t.device)] = out.get(str(t.device), 0) + st.nbytes()
    return out


@dataclass
class StateSnapshot:
    """References to everything one step changes (cheap: tensors are never mutated in place).

    ``layers``: {layer: (H, C0, n_keys, solver snapshot from `Solver.snapshot` (linalg))} (C0 changes
    only where BetaEdit's ``recollect_c0`` collects it again at a refresh).
    """

    step: int
    last_refresh: int
    layers: Dict[int, Tuple[torch.Tensor, int, Dict[str, Any]]]


@dataclass
class EditorState:
    """Everything a sequential editor carries between steps.

    Args:
        method: registry name of the method ('BetaEdit', 'BE-AlphaEdit', 'BE-MEMIT').
        layers: {layer index: LayerState}, in ascending layer order.
        step: number of edits (requests) written so far.
        last_refresh: value of ``step`` at the last projector refresh (0 = built from C0).
        context_templates: MEMIT-style template groups, generated once per editor.
    """

    method: str
    layers: Dict[int, LayerState]
    step: int = 0
    last_refresh: int = 0
    context_templates: Optional[List[List[str]]] = None

    def commit(self, keys: Mapping[int, torch.Tensor], devices: Mapping[int, torch.device], solver_takes_keys: bool,
               n: int) -> None:
        """A written step of ``n`` requests: H += K K^T per layer (K in float64 on the layer's device), the
        solver takes the keys where the method keeps a history, step += n."""
        for l, K in keys.items():
            s = self.layers[l]
            K = K.to(devices[l], torch.float64)
            s.hist_cov = add_keys(s.hist_cov, K)
            if solver_takes_keys:
                s.solver.add_keys(K, hist_cov=s.hist_cov)  # H with K: the float32 mode recomputes from it
            s.n_keys += K.shape[1]
        self.step += n

    # ------------------------------------------------------------ undo
    def snapshot(self) -> StateSnapshot:
        """What `restore` needs to return to this point (no tensor copies)."""
        return StateSnapshot(
            step=self.step,
            last_refresh=self.last_refresh,
            layers={
                l: (s.hist_cov, s.prior_cov, s.n_keys, s.solver.snapshot()) for l, s in self.layers.items()
            },
        )

    def restore(self, snap: StateSnapshot) -> None:
        """Return to a `snapshot` taken earlier on this state."""
        for l, (hist_cov, prior_cov, n_keys, solver_state) in snap.layers.items():
            s = self.layers[l]
            s.hist_cov, s.prior_cov, s.n_keys = hist_cov, prior_cov, n_keys
            s.solver.restore(solver_state)
        self.step, self.last_refresh = snap.step, snap.last_refresh

    # ------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> Dict[str, Any]:
        """``{"tensors": {name: Tensor}, "meta": {...}}``: tensors for safetensors, the rest JSON-able."""
        tensors: Dict[str, torch.Tensor] = {}
        for l, s in self.layers.items():
            tensors.update(s.tensors(f"layers.{l}."))
        meta = {
            "format": FORMAT,
            "method": self.method,
            "step": self.step,
            "last_refresh": self.last_refresh,
            "n_keys": {str(l): s.n_keys for l, s in self.layers.items()},
            "context_templates": self.context_templates,
        }
        return {"tensors": tensors, "meta": meta}

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, Any],
        layers: List[int],
        make_solver: Callable[[int, torch.Tensor], Any],
        device: Union[str, torch.device] = "cpu",
        solver_uses_history: bool = True,
    ) -> "EditorState":
        """Rebuild from `state_dict`, checking that every expected entry is present and finite.

        Args:
            state: output of `state_dict` (or of `load_state_file`).
            layers: the edited layers the caller expects.
            make_solver: ``(layer, prior_cov) -> IncrementalSolver`` with the caller's lambdas
                (and placement/precision); the saved solver tensors are then loaded into it,
                with this layer's H (see `Solver.load_state_dict` (linalg)).
            device: where the float64 C0 and H live (the solvers' storage device).
            solver_uses_history: False for a rule whose solver never takes H (AlphaEdit-NoHist):
                a solver recomputed on load (other precision or form) then gets H = 0.
        """
        tensors, meta = state.get("tensors"), state.get("meta")
        if not isinstance(tensors, Mapping) or not isinstance(meta, Mapping):
            raise ValueError("state: expected a mapping with 'tensors' and 'meta' (from EditorState.state_dict)")
        if meta.get("format") != FORMAT:
            raise ValueError(f"state: format={meta.get('format')!r}, expected {FORMAT!r}")
        built: Dict[int, LayerState] = {}
        n_keys = meta.get("n_keys") or {}
        for l in layers:
            prefix = f"layers.{l}."
            needed = [prefix + n for n in ("prior_cov", "hist_cov", "w0")]
            missing = [n for n in needed if n not in tensors]
            if missing:
                raise ValueError(f"state: missing tensors {missing} for layer {l}; was it saved for other layers?")
            for n in needed:
                if not bool(torch.isfinite(tensors[n]).all()):
                    raise ValueError(f"state: tensor {n!r} has non-finite values (corrupt file?)")
            prior = tensors[prefix + "prior_cov"].to(device, torch.float64).clone()
            hist = tensors[prefix + "hist_cov"].to(device, torch.float64).clone()
            solver = make_solver(l, prior)
            solver.load_state_dict(
                {k[len(prefix + "solver."):]: v for k, v in tensors.items() if k.startswith(prefix + "solver.")},
                hist_cov=hist if solver_uses_history else torch.zeros_like(hist),
            )
            built[l] = LayerState(
                layer=l,
                prior_cov=prior,
                hist_cov=hist,
                w0=tensors[prefix + "w0"].clone(),
                solver=solver,
                n_keys=int(n_keys.get(str(l), 0)),
            )
        templates = meta.get("context_templates")
        return cls(
            method=str(meta.get("method")),
            layers=built,
            step=int(meta.get("step", 0)),
            last_refresh=int(meta.get("last_refresh", 0)),
            context_templates=[list(g) for g in templates] if templates is not None else None,
        )


def save_state_file(path: Union[str, Path], tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write tensors + JSON metadata as one safetensors file, atomically, sealed with the sha256 of
    every tensor and every metadata field (`betaedit_plugin._fileio.write_tensors`)."""
    path = Path(path)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    write_tensors(path, flat, {k: json.dumps(v) for k, v in meta.items()})
    logger.info("saved editor state to %s (%d tensors)", path, len(flat))
    return path


def load_state_file(
    path: Union[str, Path], allow_unverified: bool = False
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a file written by `save_state_file`: (tensors on CPU, decoded metadata).

    Every tensor and metadata field (``step``, ``fingerprint``, ...) is checked against the sha256
    stored with it. ``allow_unverified`` reads a file written before digests existed (its content
    cannot be checked; save it again to add them).

    Raises:
        FileNotFoundError: no such file.
        IntegrityError: unreadable, or a tensor or field that does not match (named in the message);
            `UnsealedFileError` for a file without digests unless ``allow_unverified``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"editor state file {str(path)!r} does not exist")
    try:
        tensors, raw_meta = read_tensors(path, allow_unsealed=allow_unverified)
    except UnsealedFileError as exc:
        raise UnsealedFileError(
            path, exc.problem, kind="editor state file",
            remedy="if you trust it, load it once with load_state(..., allow_unverified=True) and save_state "
            "again to add digests",
        ) from None
    except IntegrityError as exc:
        raise IntegrityError(
            path, exc.problem, kind="editor state file",
            remedy="nothing was loaded; use an intact copy of the file (or an earlier checkpoint), or start over",
        ) from None
    try:
        meta = {k: json.loads(v) for k, v in raw_meta.items()}
    except json.JSONDecodeError as exc:
        raise IntegrityError(path, f"corrupt metadata ({exc})", kind="editor state file") from None
    return tensors, meta


# ---------------------------------------------------------------- an editor's saved state
def fingerprint_diff(saved: Any, here: Mapping[str, Any]) -> List[str]:
    """Human-readable differences between two editor fingerprints (empty list when equal)."""
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


def editor_state_dict(
    state: EditorState, weights: Mapping[int, torch.Tensor], fingerprint: Mapping[str, Any]
) -> Dict[str, Any]:
    """What an editor saves: its state, the edited weights W_t (``layers.<l>.w``) and its fingerprint.

    Every tensor is stored once: W_0 as ``layers.<l>.w0`` (the state), W_t as ``layers.<l>.w``.
    """
    sd = state.state_dict()
    for l, w in weights.items():
        sd["tensors"][f"layers.{l}.w"] = w
    sd["meta"]["fingerprint"] = dict(fingerprint)
    return sd


def editor_state_from_dict(
    state_dict: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    layers: List[int],
    make_solver: Callable[[int, torch.Tensor], Any],
    device: Union[str, torch.device] = "cpu",
    solver_uses_history: bool = True,
) -> Tuple[EditorState, Dict[int, torch.Tensor]]:
    """Check an `editor_state_dict` against an editor's fingerprint and rebuild its state.

    Returns:
        (the `EditorState`, {layer: saved W_t}); nothing is written into a model here.
    Raises:
        ValueError: malformed, or saved by an editor with another method, model, layers or hparams
            (the message lists every difference).
    """
    meta = state_dict.get("meta") if isinstance(state_dict, Mapping) else None
    tensors = state_dict.get("tensors") if isinstance(state_dict, Mapping) else None
    if not isinstance(meta, Mapping) or not isinstance(tensors, Mapping):
        raise ValueError("state_dict: expected {'tensors': ..., 'meta': ...} from BetaEditor.state_dict()")
    diff = fingerprint_diff(meta.get("fingerprint"), fingerprint)
    if diff:
        raise ValueError("saved editor state does not match this editor: " + "; ".join(diff))
    state = EditorState.from_state_dict(
        state_dict, layers, make_solver, device=device, solver_uses_history=solver_uses_history
    )
    weights = {}
    for l in layers:
        w = tensors.get(f"layers.{l}.w")
        if w is None:
            raise ValueError(f"state: missing tensor 'layers.{l}.w' (the edited weight of layer {l})")
        weights[l] = w
    return state, weights


def weights_to_restore(
    current: Mapping[int, torch.Tensor], state: EditorState, saved: Mapping[int, torch.Tensor], restore_weights: bool
) -> Dict[int, torch.Tensor]:
    """{layer: saved W_t} to write so that a model holding ``current`` weights matches a loaded state.

    Each layer must hold either the saved edited weights W_t (nothing to write) or the original
    W_0 (W_t is written, with ``restore_weights``).

    Raises:
        ValueError: a layer holds neither, or W_0 without ``restore_weights``.
    """
    to_write = {}
    for l, saved_w in saved.items():
        now = current[l]
        saved_w = saved_w.to(now.device, now.dtype)
        if torch.equal(now, saved_w):
            continue
        if torch.equal(now, state.layers[l].w0.to(now.device, now.dtype)):
            if not restore_weights:
                raise ValueError(
                    f"layer {l}: the model holds the original weights but the state is at step "
                    f"{state.step}; pass restore_weights=True to write the saved weights"
                )
            to_write[l] = saved_w
            continue
        raise ValueError(
            f"layer {l}: the model's weights match neither the saved edited weights nor the saved "
            "original weights; load the state into the model it was saved from (or a copy of it)"
        )
    return to_write


def _fingerprint(model, layout, hparams, method: str) -> dict:
    """What a saved state must match: method, model identity and shapes, layers, hparams."""
    cfg = getattr(model, "config", None)
    fp = {
        "format": FORMAT,
        "method": method,
        "model_type": layout.model_type,
        "name_or_path": str(getattr(cfg, "_name_or_path", "")),
        "layers": list(hparams.layers),
        "d_k": [layout.key_dim(model, l) for l in hparams.layers],
        "d_v": [layout.value_dim(model, l) for l in hparams.layers],
        "hparams": hparams.fingerprint(),
    }
    return json.loads(json.dumps(fp))

class StateIO:
    """`BetaEditor`'s state I/O (``fingerprint``, ``state_dict`` / ``load_state_dict``, ``save_state`` /
    ``load_state``, ``weight_deltas``), a base class of it. It reads the editor's ``model``, ``layout``,
    ``hparams``, ``method``, ``rule``, ``prepare()``, ``_make_solver``, ``_storage``, ``state`` and
    ``_restore_weights``.
    """

    def fingerprint(self) -> dict:
        """What a saved state must match: method, model identity and shapes, layers, hparams."""
        return _fingerprint(self.model, self.layout, self.hparams, self.method)

    def _weights(self) -> Dict[int, torch.Tensor]:
        return {l: self.layout.read_weight(self.model, l) for l in self.hparams.layers}

    def state_dict(self) -> Dict[str, Any]:
        """``{"tensors", "meta"}``: the state plus the current edited weights and the fingerprint."""
        return editor_state_dict(self.prepare(), self._weights(), self.fingerprint())

    def load_state_dict(self, state_dict: Mapping[str, Any], restore_weights: bool = True) -> None:
        """Load a state saved from an editor with the same model, method, layers and hparams.

        The model must hold either the saved weights (W_t) or the original ones (W_0) at every
        edited layer; with ``restore_weights`` the latter are replaced by W_t (resume from a
        fresh copy of the original model). Raises ValueError naming what differs; on error
        nothing is changed.
        """
        new_state, saved = editor_state_from_dict(
            state_dict, self.fingerprint(), self.hparams.layers, self._make_solver,
            device=self._storage[self.hparams.layers[0]], solver_uses_history=self.rule.uses_history,
        )
        for l, s in new_state.layers.items():  # each layer's C0 and H beside its solver
            s.prior_cov, s.hist_cov = s.prior_cov.to(self._storage[l]), s.hist_cov.to(self._storage[l])
        to_write = weights_to_restore(self._weights(), new_state, saved, restore_weights)
        self._restore_weights(to_write)
        if to_write:
            logger.info("wrote the saved edited weights of layers %s into the model", sorted(to_write))
        self.state = new_state

    def save_state(self, path: Union[str, Path]) -> Path:
        """Save `state_dict` as safetensors (tensors) + JSON metadata (fingerprint, step, templates)."""
        sd = self.state_dict()
        return save_state_file(path, sd["tensors"], sd["meta"])

    def load_state(self, path: Union[str, Path], restore_weights: bool = True, allow_unverified: bool = False) -> None:
        """Load a file written by `save_state` (see `load_state_dict`); every tensor and metadata field is
        checked against its sha256 first (``allow_unverified``: a file saved before digests existed)."""
        tensors, meta = load_state_file(path, allow_unverified=allow_unverified)
        self.load_state_dict({"tensors": tensors, "meta": meta}, restore_weights=restore_weights)

    def weight_deltas(self) -> Dict[int, torch.Tensor]:
        """{layer: W_t - W_0} (d_v, d_k), the cumulative update of each edited layer."""
        state = self.prepare()
        return {l: w - state.layers[l].w0.to(w.device) for l, w in self._weights().items()}
