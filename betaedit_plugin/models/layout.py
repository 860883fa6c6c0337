"""Where the edited weights live in each supported architecture.

Architecture facts are data: ``ARCHITECTURES`` maps ``config.model_type`` to
module templates (``"{}"`` stands for the layer index) and to the config field
that holds the number of layers. Hyperparameters may override any template.
Weight orientation is read from the module TYPE: ``transformers``' ``Conv1D``
(GPT-2) stores ``(d_in, d_out)``, ``nn.Linear`` stores ``(d_out, d_in)``.
Every method here takes and returns deltas and weights in the ``nn.Linear``
orientation ``(d_v, d_k)`` = (out, in).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

import torch
from torch import nn

from .._suggest import did_you_mean
from .devices import module_device, stored_weight
from .hooks import get_module

logger = logging.getLogger(__name__)

_LLAMA_LIKE = {
    "rewrite_module_tmp": "model.layers.{}.mlp.down_proj",
    "layer_module_tmp": "model.layers.{}",
    "mlp_module_tmp": "model.layers.{}.mlp",
    "attn_module_tmp": "model.layers.{}.self_attn",
    "ln_f_module": "model.norm",
    "lm_head_module": "lm_head",
    "n_layers_field": "num_hidden_layers",
}

#: model_type -> module templates and the config field holding the layer count.
ARCHITECTURES: Mapping[str, Mapping[str, str]] = {
    "gpt2": {
        "rewrite_module_tmp": "transformer.h.{}.mlp.c_proj",
        "layer_module_tmp": "transformer.h.{}",
        "mlp_module_tmp": "transformer.h.{}.mlp",
        "attn_module_tmp": "transformer.h.{}.attn",
        "ln_f_module": "transformer.ln_f",
        "lm_head_module": "lm_head",
        "n_layers_field": "n_layer",
    },
    "gptj": {
        "rewrite_module_tmp": "transformer.h.{}.mlp.fc_out",
        "layer_module_tmp": "transformer.h.{}",
        "mlp_module_tmp": "transformer.h.{}.mlp",
        "attn_module_tmp": "transformer.h.{}.attn",
        "ln_f_module": "transformer.ln_f",
        "lm_head_module": "lm_head",
        "n_layers_field": "n_layer",
    },
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
}

TEMPLATE_FIELDS = ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp")
MODULE_FIELDS = ("ln_f_module", "lm_head_module")


def _conv1d_type() -> Optional[type]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers always ships it
        return None
    return Conv1D


def weight_is_transposed(module: nn.Module) -> bool:
    """True for GPT-2's ``Conv1D`` (weight stored (in, out)), False for ``nn.Linear``.

    Raises:
        TypeError: any other module type (its weight orientation is unknown).
    """
    conv1d = _conv1d_type()
    if conv1d is not None and isinstance(module, conv1d):
        return True
    if isinstance(module, nn.Linear):
        return False
    raise TypeError(
        f"rewrite module of type {type(module).__name__} is not supported: expected torch.nn.Linear or "
        "transformers' Conv1D; point rewrite_module_tmp at the MLP output projection"
    )


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if not isinstance(model_type, str):
        raise TypeError(
            f"{type(model).__name__} has no config.model_type: pass a transformers PreTrainedModel"
        )
    return model_type


@dataclass(frozen=True)
class ModelLayout:
    """Module templates of one model plus orientation-aware weight access.

    Fields hold templates with ``"{}"`` for the layer index (``rewrite_module_tmp``
    ...) or plain module names (``ln_f_module``, ``lm_head_module``).
    """

    model_type: str
    n_layers: int
    rewrite_module_tmp: str
    layer_module_tmp: str
    mlp_module_tmp: str
    attn_module_tmp: str
    ln_f_module: str
    lm_head_module: str

    # ------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, hparams: Any = None) -> "ModelLayout":
        """Layout for ``model`` from ``config.model_type``; non-None hparams templates win.

        Raises:
            KeyError: unknown model_type and the hparams do not give every template.
            LookupError: a template names no module of the model.
            TypeError: the rewrite module is neither nn.Linear nor Conv1D.
        """
        model_type = _model_type(model)
        overrides = {}
        for name in TEMPLATE_FIELDS + MODULE_FIELDS:
            value = getattr(hparams, name, None) if hparams is not None else None
            if value is not None:
                overrides[name] = value
        defaults = ARCHITECTURES.get(model_type)
        if defaults is None and len(overrides) < len(TEMPLATE_FIELDS + MODULE_FIELDS):
            missing = [n for n in TEMPLATE_FIELDS + MODULE_FIELDS if n not in overrides]
            raise KeyError(
                f"Unknown model_type {model_type!r}." + did_you_mean(model_type, sorted(ARCHITECTURES))
                + f". Or set {missing} in the hparams."
            )
        fields = {n: overrides.get(n, (defaults or {}).get(n)) for n in TEMPLATE_FIELDS + MODULE_FIELDS}
        for name in TEMPLATE_FIELDS:
            if "{}" not in fields[name]:
                raise ValueError(f"{name}={fields[name]!r}: a module template must contain '{{}}' for the layer index")
        n_layers = _n_layers(model, (defaults or {}).get("n_layers_field"))
        layout = cls(model_type=model_type, n_layers=n_layers, **fields)
        layout._validate(model)
        return layout

    def _validate(self, model: nn.Module) -> None:
        for layer in sorted({0, self.n_layers - 1}):
            for name in TEMPLATE_FIELDS:
                get_module(model, getattr(self, name).format(layer))
        self.ln_f(model)
        self.lm_head(model)
        weight_is_transposed(self.rewrite_module(model, 0))

    # ------------------------------------------------------------ module access
    def check_layer(self, layer: int) -> int:
        """``layer`` as an int in [0, n_layers); ValueError otherwise."""
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(
                f"layer={layer!r}: expected an int in [0, {self.n_layers - 1}] for this {self.model_type} model "
                f"with {self.n_layers} layers; fix 'layers' / 'v_loss_layer' in the hparams"
            )
        return layer

    def check_layers(self, layers: Any, v_loss_layer: Optional[int] = None) -> List[int]:
        """``layers`` (one int or a list) as a list of distinct layer indices of this model.

        With ``v_loss_layer``, that is checked too (-1 means the last layer). This is the one
        check of edited layers against a model; the hparams check order and sign without one.

        Raises:
            ValueError: naming the field, the value and the model's range.
        """
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = [layers]
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"layers={layers!r}: expected a non-empty list of layer indices, e.g. [4, 5, 6, 7, 8]")
        out: List[int] = []
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
                raise ValueError(
                    f"layers={list(layers)!r}: layer {layer!r} is out of range for this {self.model_type} model "
                    f"with {self.n_layers} layers; use indices in [0, {self.n_layers - 1}] (fix 'layers' in the hparams)"
                )
            if layer in out:
                raise ValueError(f"layers={list(layers)!r}: layer {layer} is listed twice; list each layer once")
            out.append(layer)
        if v_loss_layer is not None and v_loss_layer != -1 and not 0 <= v_loss_layer < self.n_layers:
            raise ValueError(
                f"v_loss_layer={v_loss_layer}: the model has {self.n_layers} layers; use {self.n_layers - 1} or -1 (last layer)"
            )
        return out

    def rewrite_name(self, layer: int) -> str:
        return self.rewrite_module_tmp.format(self.check_layer(layer))

    def layer_name(self, layer: int) -> str:
        return self.layer_module_tmp.format(self.check_layer(layer))

    def mlp_name(self, layer: int) -> str:
        return self.mlp_module_tmp.format(self.check_layer(layer))

    def attn_name(self, layer: int) -> str:
        return self.attn_module_tmp.format(self.check_layer(layer))

    def rewrite_module(self, model: nn.Module, layer: int) -> nn.Module:
        return get_module(model, self.rewrite_name(layer))

    def layer_module(self, model: nn.Module, layer: int) -> nn.Module:
        return get_module(model, self.layer_name(layer))

    def ln_f(self, model: nn.Module) -> nn.Module:
        return get_module(model, self.ln_f_module)

    def lm_head(self, model: nn.Module) -> nn.Module:
        """Output head; with tied embeddings it shares its weight with the input embedding."""
        try:
            return get_module(model, self.lm_head_module)
        except LookupError:
            head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            if head is None:
                raise
            logger.debug("lm_head %r not found; using model.get_output_embeddings()", self.lm_head_module)
            return head

    def tied_embeddings(self, model: nn.Module) -> bool:
        """True when the output head shares its weight with the input embedding."""
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        return emb is not None and self.lm_head(model).weight is emb.weight

    # ------------------------------------------------------------ devices
    def rewrite_device(self, model: nn.Module, layer: int) -> torch.device:
        """Where the rewrite module of ``layer`` computes: its keys and residuals belong there."""
        return module_device(model, self.rewrite_name(layer))

    def layer_device(self, model: nn.Module, layer: int) -> torch.device:
        """Where block ``layer`` computes (its output, e.g. z*, is there)."""
        return module_device(model, self.layer_name(layer))

    # ------------------------------------------------------------ weights
    def read_weight(self, model: nn.Module, layer: int) -> torch.Tensor:
        """A clone of the rewrite weight of ``layer``, shape (d_v, d_k).

        With an accelerate-offloaded layer it is read from the offload hook's weights map
        (``module.weight`` is ``meta`` there), so the clone is on the device that map keeps.
        """
        module = self.rewrite_module(model, layer)
        w = stored_weight(model, self.rewrite_name(layer)).detach()
        return (w.t() if weight_is_transposed(module) else w).clone()

    def key_dim(self, model: nn.Module, layer: int) -> int:
        """d_k: input width of the rewrite module."""
        module = self.rewrite_module(model, layer)
        return module.weight.shape[0] if weight_is_transposed(module) else module.weight.shape[1]

    def value_dim(self, model: nn.Module, layer: int) -> int:
        """d_v: output width of the rewrite module (the residual width)."""
        module = self.rewrite_module(model, layer)
        return module.weight.shape[1] if weight_is_transposed(module) else module.weight.shape[0]

    def _checked(self, model: nn.Module, layer: int, tensor: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate a (d_v, d_k) tensor; return the real weight and the tensor in its orientation, dtype, device."""
        module = self.rewrite_module(model, layer)
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{what} for layer {layer}: expected a torch.Tensor, got {type(tensor).__name__}")
        expected = (self.value_dim(model, layer), self.key_dim(model, layer))
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{what} for layer {layer} has shape {tuple(tensor.shape)}; expected (d_v, d_k) = {expected} "
                "(nn.Linear orientation, out x in)"
            )
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{what} for layer {layer} holds NaN or inf values; nothing was written")
        w = stored_weight(model, self.rewrite_name(layer), for_write=True)
        tensor = tensor.detach().to(device=w.device, dtype=w.dtype)
        return w, (tensor.t() if weight_is_transposed(module) else tensor)

    def add_delta(self, model: nn.Module, layer: int, delta: torch.Tensor) -> None:
        """W += delta in place (delta (d_v, d_k), cast to the weight's dtype and device; an
        offloaded layer's weights-map entry is what is written)."""
        w, stored = self._checked(model, layer, delta, "delta")
        with torch.no_grad():
            w.add_(stored)

    def write_weight(self, model: nn.Module, layer: int, weight: torch.Tensor) -> None:
        """W = weight in place (weight (d_v, d_k))."""
        w, stored = self._checked(model, layer, weight, "weight")
        with torch.no_grad():
            w.copy_(stored)


def _n_layers(model: nn.Module, field: Optional[str]) -> int:
    config = model.config
    for name in ([field] if field else []) + ["num_hidden_layers", "n_layer", "num_layers"]:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise KeyError(f"{type(config).__name__} has none of num_hidden_layers / n_layer / num_layers")
