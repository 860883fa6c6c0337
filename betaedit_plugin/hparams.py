"""Hyperparameters of the three editors, in EasyEdit's flat-YAML format.

`BetaEditHyperParams`, `AlphaEditHyperParams` and `MEMITHyperParams` are
dataclasses. When EasyEdit (``easyeditor``) is importable they subclass its
``HyperParams`` so that ``BaseEditor.from_hparams`` accepts them; otherwise a
small local base with the same ``from_json`` / ``to_dict`` surface is used.

``alg_name`` in the YAML may be the paper's name (``BetaEdit``, ``AlphaEdit``,
``MEMIT``). The loaded object carries the name this package registers in
EasyEdit's ``ALG_DICT`` (``BetaEdit``, ``BE-AlphaEdit``, ``BE-MEMIT``), so that
``BaseEditor`` dispatches to this package's editor and not to EasyEdit's own
AlphaEdit or MEMIT.

Module templates (``rewrite_module_tmp`` ...) may be left out: the model layout
(`betaedit_plugin.plumbing.layout`) supplies them from the model's config.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml

logger = logging.getLogger(__name__)

FactToken = Literal["last", "subject_first", "subject_last", "subject_first_after_last"]
FACT_TOKENS = ("last", "subject_first", "subject_last", "subject_first_after_last")


def _easyedit_base() -> type:
    """EasyEdit's HyperParams when importable, else a local stand-in."""
    if importlib.util.find_spec("easyeditor") is not None:
        try:
            from easyeditor.util.hparams import HyperParams as EasyEditHyperParams

            return EasyEditHyperParams
        except Exception as exc:  # a broken EasyEdit install must not break this package
            logger.debug("easyeditor found but not importable (%s); using the local base", exc)
    return LocalHyperParams


@dataclass
class LocalHyperParams:
    """Stand-in for ``easyeditor.util.hparams.HyperParams`` (same public methods)."""

    @classmethod
    def from_json(cls, fpath):
        with open(fpath, "r") as f:
            return cls(**json.load(f))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


HyperParamsBase = _easyedit_base()


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class EditHyperParams(HyperParamsBase):
    """Fields shared by MEMIT, AlphaEdit and BetaEdit (locate-then-edit family).

    Args mirror EasyEdit's ``AlphaEditHyperParams``; see each field's ``help``.
    Subclasses set ``registry_name`` (key in EasyEdit's ``ALG_DICT``) and
    ``accepted_alg_names`` (values of ``alg_name`` that ``from_hparams`` takes).
    """

    registry_name: ClassVar[str] = ""
    accepted_alg_names: ClassVar[tuple] = ()

    alg_name: str = _help("Algorithm; the YAML may use the paper's name, it is stored as the registry name.", default="")
    model_name: str = _help("Path or hub id of the model (EasyEdit's BaseEditor loads it from here).", default="")
    layers: list = _help("Indices of the edited layers, sorted ascending, e.g. [4, 5, 6, 7, 8].", default_factory=list)
    device: Union[int, str] = _help("Torch device: 'cpu', 'cuda:0', or an int meaning cuda:<int> (EasyEdit's convention).", default="cpu")
    layer_selection: Literal["all", "random"] = _help("EasyEdit compatibility; only 'all' is implemented.", default="all")
    fact_token: FactToken = _help("Token whose MLP input is the key: one of " + ", ".join(FACT_TOKENS) + ".", default="subject_last")

    # target value optimisation (compute_z)
    v_num_grad_steps: int = _help("Gradient steps of the target-value optimisation.", default=25)
    v_lr: float = _help("Learning rate (Adam) of the target-value optimisation.", default=0.5)
    v_loss_layer: int = _help("Layer whose output feeds the loss; -1 means the last layer.", default=-1)
    v_weight_decay: float = _help("Weight decay on the value change, relative to the original value norm.", default=0.5)
    clamp_norm_factor: float = _help("Value change is clamped to this factor times the original value norm.", default=0.75)
    kl_factor: float = _help("Weight of the KL term on '{} is a' prompts that keeps the subject's essence.", default=0.0625)
    v_early_stop_loss: float = _help("Stop the value optimisation once the NLL falls below this.", default=5e-2)
    context_template_length_params: list = _help(
        "Context templates as [[max_new_tokens, count], ...], generated once per editor.",
        default_factory=lambda: [[5, 10], [10, 10]],
    )

    # covariance statistics
    mom2_adjustment: bool = _help("Use the key second moment C0 (always true for these methods).", default=True)
    mom2_update_weight: Union[float, list] = _help(
        "MEMIT's weight w on C0 in (K K^T + H + w C0); one float or one per layer.", default=15000.0
    )
    mom2_dataset: str = _help("Corpus for C0: 'wiki_vital' (bundled) or a path to a .txt/.txt.gz file, one text a line.", default="wiki_vital")
    mom2_n_samples: int = _help("Number of corpus texts for C0.", default=1000)
    mom2_max_length: int = _help("Tokens per corpus text for C0 (longer texts are truncated).", default=256)
    mom2_dtype: str = _help("Precision of the forward pass for C0 statistics (accumulation is float64).", default="float32")
    stats_dir: Optional[str] = _help("Directory for cached statistics; default $BETAEDIT_CACHE/stats.", default=None)

    # module templates; None means: take them from the model layout
    rewrite_module_tmp: Optional[str] = _help("Edited module, e.g. 'model.layers.{}.mlp.down_proj'.", default=None)
    layer_module_tmp: Optional[str] = _help("Transformer block, e.g. 'model.layers.{}'.", default=None)
    mlp_module_tmp: Optional[str] = _help("MLP of a block, e.g. 'model.layers.{}.mlp'.", default=None)
    attn_module_tmp: Optional[str] = _help("Attention of a block, e.g. 'model.layers.{}.self_attn'.", default=None)
    ln_f_module: Optional[str] = _help("Final norm, e.g. 'model.norm'.", default=None)
    lm_head_module: Optional[str] = _help("Output head, e.g. 'lm_head'.", default=None)

    # EasyEdit bookkeeping
    max_length: int = _help("EasyEdit evaluation max length.", default=40)
    batch_size: int = _help("Edits written per step (EasyEdit's batch_edit chunk size).", default=1)
    model_parallel: bool = _help("EasyEdit compatibility; must be false.", default=False)

    # ------------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        if self.alg_name in self.accepted_alg_names:
            self.alg_name = self.registry_name
        elif self.alg_name != self.registry_name:
            raise ValueError(
                f"alg_name={self.alg_name!r} does not belong to {type(self).__name__}; "
                f"expected one of {sorted(set(self.accepted_alg_names) | {self.registry_name})}"
            )
        layers = self.layers
        if not isinstance(layers, (list, tuple)) or not layers or not all(
            isinstance(l, int) and not isinstance(l, bool) for l in layers
        ):
            raise ValueError(f"layers={layers!r}: expected a non-empty list of ints, e.g. [4, 5, 6, 7, 8]")
        if list(layers) != sorted(set(layers)) or layers[0] < 0:
            raise ValueError(f"layers={list(layers)!r}: expected distinct non-negative ints in ascending order")
        self.layers = list(layers)
        if self.fact_token not in FACT_TOKENS:
            raise ValueError(f"fact_token={self.fact_token!r}: expected one of {list(FACT_TOKENS)}")
        if self.layer_selection != "all":
            raise ValueError(f"layer_selection={self.layer_selection!r}: only 'all' is implemented")
        if self.model_parallel:
            raise ValueError("model_parallel=True: not supported; put the model on one device")
        for name in ("v_num_grad_steps", "mom2_n_samples", "mom2_max_length", "batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive int")
        for name in ("v_lr", "clamp_norm_factor"):
            self._check_float(name, positive=True)
        for name in ("v_weight_decay", "kl_factor", "v_early_stop_loss"):
            self._check_float(name, positive=False)
        if not isinstance(self.v_loss_layer, int) or self.v_loss_layer < -1:
            raise ValueError(f"v_loss_layer={self.v_loss_layer!r}: expected a layer index, or -1 for the last layer")
        if self.v_loss_layer != -1 and self.v_loss_layer < self.layers[-1]:
            raise ValueError(
                f"v_loss_layer={self.v_loss_layer}: must be at or after the last edited layer {self.layers[-1]}"
            )
        weights = self.mom2_update_weight
        if isinstance(weights, (list, tuple)):
            if len(weights) != len(self.layers):
                raise ValueError(
                    f"mom2_update_weight has {len(weights)} entries but layers has {len(self.layers)}: "
                    "give one float, or one per layer"
                )
            weights = [_as_float("mom2_update_weight", w) for w in weights]
            self.mom2_update_weight = weights
        else:
            self.mom2_update_weight = _as_float("mom2_update_weight", weights)
            weights = [self.mom2_update_weight]
        if any(w < 0 for w in weights):
            raise ValueError(f"mom2_update_weight={self.mom2_update_weight!r}: expected values >= 0")
        if self.mom2_dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise ValueError(f"mom2_dtype={self.mom2_dtype!r}: expected float32, float16, bfloat16 or float64")
        tpl = self.context_template_length_params
        if not isinstance(tpl, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, int) and x >= 0 for x in p) for p in tpl
        ):
            raise ValueError(
                f"context_template_length_params={tpl!r}: expected [[max_new_tokens, count], ...] of non-negative ints"
            )
        for name in ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp"):
            tmp = getattr(self, name)
            if tmp is not None and "{}" not in tmp:
                raise ValueError(f"{name}={tmp!r}: a module template must contain '{{}}' for the layer index")

    def _check_float(self, name: str, positive: bool) -> None:
        value = _as_float(name, getattr(self, name))
        if value < 0 or (positive and value == 0):
            raise ValueError(f"{name}={value!r}: expected a {'positive' if positive else 'non-negative'} number")
        setattr(self, name, value)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_hparams(cls, hparams_name_or_path: Union[str, Path]):
        """Read an EasyEdit-style flat YAML (``.yaml`` may be left out)."""
        path = Path(hparams_name_or_path)
        if path.suffix not in (".yaml", ".yml", ".json"):
            path = path.with_name(path.name + ".yaml")
        if not path.is_file():
            raise FileNotFoundError(f"hparams file {str(path)!r} does not exist")
        with open(path, "r") as stream:
            config = json.load(stream) if path.suffix == ".json" else yaml.safe_load(stream)
        if not isinstance(config, dict):
            raise ValueError(f"hparams file {str(path)!r} must hold a mapping of field: value")
        return cls.from_dict(config, source=str(path))

    @classmethod
    def from_dict(cls, config: dict, source: str = "<dict>"):
        config = dict(config)
        alg = config.get("alg_name")
        if alg is None:
            raise ValueError(f"{source}: missing field 'alg_name'; expected {cls.accepted_alg_names[0]!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        ignored = {"P_loc", "model_parallel_devices", "fp16"} & set(config) - known
        for name in ignored:
            warnings.warn(f"{source}: field {name!r} is accepted for EasyEdit compatibility and ignored", stacklevel=3)
            config.pop(name)
        unknown = sorted(set(config) - known)
        if unknown:
            import difflib

            hints = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
            text = ", ".join(f"{u!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for u, h in hints.items())
            raise ValueError(f"{source}: unknown field(s) {text} for {cls.__name__}")
        return cls(**config)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> dict:
        """Settings that change the editor's state; stored with saved state and compared on load."""
        skip = {"device", "max_length", "batch_size", "model_parallel", "stats_dir"}
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in skip:
                continue
            if f.name == "model_name" and not isinstance(value, str):
                value = type(value).__name__  # EasyEdit also accepts a (model, tok) pair here
            out[f.name] = _plain(value)
        return out

    def update_weight(self, layer: int) -> float:
        """``mom2_update_weight`` for one edited layer."""
        w = self.mom2_update_weight
        return float(w[self.layers.index(layer)]) if isinstance(w, list) else float(w)


def _plain(value: Any) -> Any:
    """Lists/tuples/dicts of plain values, copied (no deep copy of arbitrary objects)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _as_float(name: str, value: Any) -> float:
    """Strict float conversion (accepts '1e-1' strings that YAML 1.1 leaves as text)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a number") from None
    if not math.isfinite(out):
        raise ValueError(f"{name}={value!r}: expected a finite number")
    return out


@dataclass
class MEMITHyperParams(EditHyperParams):
    """MEMIT with history: Delta = R K^T (K K^T + H + w C0)^-1 (Meng et al., 2023, arXiv:2210.07229)."""

    registry_name: ClassVar[str] = "BE-MEMIT"
    accepted_alg_names: ClassVar[tuple] = ("MEMIT",)
    alg_name: str = _help("'MEMIT' (stored as 'BE-MEMIT', this package's ALG_DICT key).", default="BE-MEMIT")


@dataclass
class AlphaEditHyperParams(EditHyperParams):
    """AlphaEdit: null-space projected update (Fang et al., ICLR 2025, arXiv:2410.02355)."""

    registry_name: ClassVar[str] = "BE-AlphaEdit"
    accepted_alg_names: ClassVar[tuple] = ("AlphaEdit",)
    alg_name: str = _help("'AlphaEdit' (stored as 'BE-AlphaEdit', this package's ALG_DICT key).", default="BE-AlphaEdit")
    nullspace_threshold: float = _help("Eigenvalues of C0 below this span the protected null space.", default=2e-2)
    L2: float = _help("Ridge term lambda2 added to the projected normal matrix.", default=10.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_float("nullspace_threshold", positive=True)
        self._check_float("L2", positive=False)


@dataclass
class BetaEditHyperParams(EditHyperParams):
    """BetaEdit: leakage-penalised, history-aware null-space editing (IJCAI 2026).

    Delta = R K^T P ((K K^T + H + lambda1 C0) P + lambda2 I)^-1, with P refreshed
    every ``tau`` edits from S = (H / t + lambda1 C0) / (lambda1 + 1).
    """

    registry_name: ClassVar[str] = "BetaEdit"
    accepted_alg_names: ClassVar[tuple] = ("BetaEdit",)
    alg_name: str = _help("'BetaEdit'.", default="BetaEdit")
    nullspace_threshold: float = _help("Eigenvalues of the protected matrix below this span the projector.", default=2e-2)
    lambda1: float = _help("Leakage penalty: weight of C0 inside the solve and in the protected matrix S.", default=3000.0)
    lambda2: float = _help("Ridge term added to the projected normal matrix.", default=10.0)
    tau: int = _help("Refresh the projector from pre-trained plus edited keys every tau edits.", default=1000)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_float("nullspace_threshold", positive=True)
        self._check_float("lambda1", positive=False)
        self._check_float("lambda2", positive=False)
        if not isinstance(self.tau, int) or isinstance(self.tau, bool) or self.tau < 1:
            raise ValueError(f"tau={self.tau!r}: expected an int >= 1 (edits between projector refreshes)")


HPARAMS_BY_ALG = {
    cls.registry_name: cls for cls in (BetaEditHyperParams, AlphaEditHyperParams, MEMITHyperParams)
}


def hparams_class_for(alg_name: str) -> type:
    """Hyperparameter class for an ``alg_name`` (paper or registry spelling)."""
    for cls in HPARAMS_BY_ALG.values():
        if alg_name == cls.registry_name or alg_name in cls.accepted_alg_names:
            return cls
    import difflib

    names = sorted({n for c in HPARAMS_BY_ALG.values() for n in (c.registry_name, *c.accepted_alg_names)})
    hint = difflib.get_close_matches(str(alg_name), names, n=1)
    raise KeyError(
        f"Unknown alg_name {alg_name!r}." + (f" Did you mean {hint[0]!r}?" if hint else "") + f" Available: {names}"
    )


def load_hparams(path: Union[str, Path]) -> EditHyperParams:
    """Read a YAML and build the right class from its ``alg_name``."""
    with open(path, "r") as stream:
        config = yaml.safe_load(stream)
    if not isinstance(config, dict) or "alg_name" not in config:
        raise ValueError(f"hparams file {str(path)!r}: expected a mapping with an 'alg_name' field")
    return hparams_class_for(config["alg_name"]).from_dict(config, source=str(path))
