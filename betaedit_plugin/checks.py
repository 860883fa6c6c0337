"""The arguments of `BetaEditor`, checked before anything changes: hparams, priors, placement and solver
options, given targets, and a computed `EditStep` (MEMIT's compute/apply split) before it is written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch

from ._suggest import did_you_mean
from .errors import NonFiniteUpdateError, WeightsChangedError
from .hparams import EditHyperParams
from .methods import method_of
from .models.devices import as_device, check_edit_devices
from .requests import EditRequest

__all__ = ["EditStep", "SOLVER_OPTIONS", "placement", "check_edit_step", "check_hparams", "check_prior_covs", "check_solver_options", "check_z_star", "non_finite"]

#: `IncrementalSolver` options an editor passes through (where and in what precision it computes).
SOLVER_OPTIONS = ("compute_dtype", "storage_device", "refresh_every", "inverse_form")


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



def check_hparams(hparams) -> EditHyperParams:
    """The hyperparameters of a registered method, with an ``alg_name`` that matches their class."""
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


def check_prior_covs(
    prior_covs: Mapping[int, torch.Tensor], key_dims: Mapping[int, int], storage: Mapping[int, torch.device]
) -> Dict[int, torch.Tensor]:
    """{layer: C0} for exactly the layers of ``key_dims`` ({layer: d_k}): symmetric, finite, float64 on
    each layer's ``storage`` device (copies)."""
    if not isinstance(prior_covs, Mapping):
        raise TypeError(f"prior_covs: expected a dict {{layer: Tensor (d_k, d_k)}}, got {type(prior_covs).__name__}")
    want, have = set(key_dims), set(int(k) for k in prior_covs)
    if want != have:
        raise ValueError(
            f"prior_covs has layers {sorted(have)} but hparams.layers is {sorted(want)}: give one C0 per edited layer"
        )
    out = {}
    for l, d_k in key_dims.items():
        c = prior_covs[l] if l in prior_covs else prior_covs[str(l)]
        if not isinstance(c, torch.Tensor) or tuple(c.shape) != (d_k, d_k):
            shape = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
            raise ValueError(f"prior_covs[{l}]: shape {shape}, expected ({d_k}, {d_k}) (d_k of layer {l})")
        c = c.detach().to(storage[l], torch.float64)
        if not bool(torch.isfinite(c).all()):
            raise ValueError(f"prior_covs[{l}] has non-finite values")
        if not torch.allclose(c, c.T, rtol=1e-6, atol=1e-8 * float(c.abs().max().clamp_min(1.0))):
            raise ValueError(f"prior_covs[{l}] is not symmetric: expected a second-moment matrix E[k k^T]")
        out[l] = c.clone()
    return out


def check_solver_options(options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """`IncrementalSolver` placement options; by default the per-edit tensors go to the edited layer's device."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(SOLVER_OPTIONS))
    if unknown:
        raise ValueError(f"solver_options: unknown key(s) {unknown}.{did_you_mean(unknown[0], SOLVER_OPTIONS)}")
    return options


def check_z_star(z_star: torch.Tensor, d_v: int, n: int, layer: int) -> torch.Tensor:
    """Given targets: a finite (d_v, n) tensor for the last edited ``layer`` (ValueError naming the shape)."""
    if not isinstance(z_star, torch.Tensor) or tuple(z_star.shape) != (d_v, n):
        shape = tuple(z_star.shape) if isinstance(z_star, torch.Tensor) else type(z_star).__name__
        raise ValueError(f"z_star: expected a tensor of shape ({d_v}, {n}) (d_v of layer {layer}, one column per "
                         f"request), got {shape}")
    if not bool(torch.isfinite(z_star).all()):
        raise ValueError("z_star: has NaN or Inf entries")
    return z_star


def non_finite(what: str, layer: int, step_no: int, reqs: Sequence[EditRequest]) -> NonFiniteUpdateError:
    return NonFiniteUpdateError(
        f"non-finite {what} at layer {layer}, step {step_no} (case_id {[r.case_id for r in reqs]}): NaN or Inf; "
        "the model and the editor state are unchanged. Check the target values (v_lr, clamp_norm_factor) "
        "and the prior covariances."
    )


def placement(model, layout, hparams, solver_options) -> tuple[dict, dict, dict]:
    """(layer devices, storage devices, solver options), each device {layer: torch.device}.

    A model split across devices (accelerate's device_map) has one device per edited layer: its keys,
    residuals and solver live there (inputs go to the embedding's device). C0, H and W_0 live where
    the solver keeps its float64 master copies: the layer's device unless ``storage_device`` says
    otherwise. On one device (not ``model_parallel``) it must be the one ``hparams.device`` names.
    """
    layer_devices = {l: layout.rewrite_device(model, l) for l in hparams.layers}
    check_edit_devices(layer_devices, hparams.device, hparams.model_parallel)
    options = check_solver_options(solver_options)
    storage = options.get("storage_device")
    storage_devices = {l: as_device(storage) if storage is not None else d for l, d in layer_devices.items()}
    return layer_devices, storage_devices, options


def check_edit_step(computed, step: int, layers: Sequence[int], weights: Mapping[int, torch.Tensor]) -> None:
    """An `EditStep` may be written only at the step and onto the ``weights`` it was computed on.

    Raises:
        WeightsChangedError: names the step or the layer, and says to compute it again.
    """
    layers = list(layers)
    if computed.step != step or sorted(computed.deltas) != layers or sorted(computed.keys) != layers:
        raise WeightsChangedError(
            f"EditStep computed at step {computed.step} for layers {sorted(computed.deltas)}, but the editor is at "
            f"step {step} with layers {layers}; compute it again"
        )
    for l in layers:
        w = weights[l]
        if not torch.equal(w, computed.weights[l].to(w.device, w.dtype)):
            raise WeightsChangedError(f"layer {l}: the weights changed since this EditStep was computed; compute it again")
