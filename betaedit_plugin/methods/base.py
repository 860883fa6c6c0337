"""What every method shares: the hyperparameter base classes and the update-rule interface.

- `HyperParams`: this package's base, with the public surface of EasyEdit's ``HyperParams``
  (``from_json``, ``to_dict``) and ``from_hparams``. It does not subclass EasyEdit's class:
  EasyEdit's ``BaseEditor`` reads attributes (``alg_name``, ``model_name``, ``device``,
  ``model_parallel``, ``batch_size``, ``max_length``), which `EditHyperParams` has, and never
  checks the class, so this package imports no EasyEdit.
- `EditHyperParams`: the fields of the locate-then-edit family (MEMIT, AlphaEdit, BetaEdit) in
  EasyEdit's flat-YAML format, checked in ``__post_init__``. A method's class adds its own.
- `UpdateRule`: what makes one method different from another once keys K and residuals R are known:
  the per-layer `IncrementalSolver` (its lambdas and initial basis), whether each edit's keys
  enter it, and what happens after a step is committed.

Module templates (``rewrite_module_tmp`` ...) may be left out: the model layout
(`betaedit_plugin.models.layout`) supplies them from the model's config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, Literal, Optional, Tuple, Union

from .._suggest import did_you_mean
from ..errors import HyperParamsError
from ..requests import FACT_TOKENS, FactToken

__all__ = [
    "HyperParams",
    "EditHyperParams",
    "UpdateRule",
    "read_hparams_file",
    "checked_nullspace",
    "EASYEDIT_IGNORED_FIELDS",
    "PLACEMENT_FIELDS",
]

#: Fields of EasyEdit's YAMLs that these methods accept and ignore (with a warning).
EASYEDIT_IGNORED_FIELDS = ("P_loc", "model_parallel_devices", "fp16")

#: Fields that say where an edit computes, not what it writes: no part of a run's identity or of a
#: saved state's fingerprint, never a screening's swept setting.
PLACEMENT_FIELDS = ("device", "model_parallel")

#: Fields added after editor states were saved, with the value that writes edits as before: left out of
#: a saved state's fingerprint at that value, so that checkpoints written before them still load.
ADDED_FIELDS = {"recollect_c0": False}


def _help(text: str, runner: bool = True, **kw) -> Any:
    """A dataclass field with ``help`` metadata; ``runner=False``: not a ``hparams.X=`` override of the runner."""
    return field(metadata={"help": text, "runner": runner}, **kw)


def read_hparams_file(path: Union[str, Path]) -> Tuple[Dict[str, Any], Path]:
    """(mapping, path) of a flat YAML or JSON hyperparameter file (``.yaml`` may be left out).

    Raises:
        FileNotFoundError: no such file. ValueError: it does not hold a mapping.
    """
    import yaml

    path = Path(path)
    if path.suffix not in (".yaml", ".yml", ".json"):
        path = path.with_name(path.name + ".yaml")
    if not path.is_file():
        raise FileNotFoundError(f"hparams file {str(path)!r} does not exist")
    with open(path, "r") as stream:
        config = json.load(stream) if path.suffix == ".json" else yaml.safe_load(stream)
    if not isinstance(config, dict):
        raise HyperParamsError(f"hparams file {str(path)!r} must hold a mapping of field: value")
    return config, path


@dataclass
class HyperParams:
    """Base of the hyperparameter classes: EasyEdit's ``HyperParams`` surface, without EasyEdit."""

    @classmethod
    def from_json(cls, fpath):
        with open(fpath, "r") as f:
            return cls.from_dict(json.load(f), source=str(fpath))

    @classmethod
    def from_hparams(cls, hparams_name_or_path: Union[str, Path]):
        """Read an EasyEdit-style flat YAML (``.yaml`` may be left out)."""
        config, path = read_hparams_file(hparams_name_or_path)
        return cls.from_dict(config, source=str(path))

    @classmethod
    def from_dict(cls, config: dict, source: str = "<dict>"):
        return cls(**config)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class EditHyperParams(HyperParams):
    """Fields shared by the locate-then-edit methods (MEMIT, AlphaEdit, BetaEdit).

    Args mirror EasyEdit's ``AlphaEditHyperParams``; see each field's ``help``. A method's
    subclass adds its own fields and checks (``__post_init__`` calling ``super().__post_init__()``)
    and is registered with its `UpdateRule` (`betaedit_plugin.methods.register_method`).
    """

    #: the `Method` this class was registered with (set by ``register_method``; not a field)
    _method: ClassVar[Any] = None

    alg_name: str = _help(
        "The method, in any spelling of its registered names ('BetaEdit', 'AlphaEdit', 'MEMIT', ...); "
        "stored as its EasyEdit name ('BetaEdit', 'BE-AlphaEdit', 'BE-MEMIT'). Default: this class's method.",
        default="", runner=False,
    )
    model_name: str = _help("Path or hub id of the model (EasyEdit's BaseEditor loads it from here).", default="", runner=False)
    layers: list = _help("Indices of the edited layers, sorted ascending, e.g. [4, 5, 6, 7, 8].", default_factory=list)
    device: Union[int, str] = _help("Torch device: 'cpu', 'cuda:0', or an int meaning cuda:<int> (EasyEdit's convention).", default="cpu")
    layer_selection: Literal["all", "random"] = _help("EasyEdit compatibility; only 'all' is implemented.", default="all", runner=False)
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
    mom2_adjustment: bool = _help(
        "EasyEdit's switch for using C0; these methods always use it, so only true is accepted.",
        default=True, runner=False,
    )
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
    max_length: int = _help("EasyEdit evaluation max length.", default=40, runner=False)
    batch_size: int = _help("Edits written per step (EasyEdit's batch_edit chunk size).", default=1, runner=False)
    model_parallel: bool = _help(
        "The model is split across devices (EasyEdit then loads it with device_map='auto'; "
        "BetaEditor.from_hparams does the same through accelerate); the editor follows each layer's device.",
        default=False, runner=False,
    )

    # ------------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        self._check_alg_name()
        layers = self.layers
        if not isinstance(layers, (list, tuple)) or not layers or not all(
            isinstance(l, int) and not isinstance(l, bool) for l in layers
        ):
            raise HyperParamsError(f"layers={layers!r}: expected a non-empty list of ints, e.g. [4, 5, 6, 7, 8]")
        if list(layers) != sorted(set(layers)) or layers[0] < 0:
            raise HyperParamsError(f"layers={list(layers)!r}: expected distinct non-negative ints in ascending order")
        self.layers = list(layers)
        if self.fact_token not in FACT_TOKENS:
            raise HyperParamsError(f"fact_token={self.fact_token!r}: expected one of {list(FACT_TOKENS)}")
        if self.mom2_adjustment is not True:
            raise HyperParamsError(
                f"mom2_adjustment={self.mom2_adjustment!r}: MEMIT, AlphaEdit and BetaEdit here always use the key "
                "second moment C0 (set mom2_update_weight to weigh it); remove the field or set it to true"
            )
        if self.layer_selection != "all":
            raise HyperParamsError(f"layer_selection={self.layer_selection!r}: only 'all' is implemented")
        for name in ("v_num_grad_steps", "mom2_n_samples", "mom2_max_length", "batch_size", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise HyperParamsError(f"{name}={value!r}: expected a positive int")
        for name in ("v_lr", "clamp_norm_factor"):
            self._check_float(name, positive=True)
        for name in ("v_weight_decay", "kl_factor", "v_early_stop_loss"):
            self._check_float(name, positive=False)
        if not isinstance(self.v_loss_layer, int) or self.v_loss_layer < -1:
            raise HyperParamsError(f"v_loss_layer={self.v_loss_layer!r}: expected a layer index, or -1 for the last layer")
        if self.v_loss_layer != -1 and self.v_loss_layer < self.layers[-1]:
            raise HyperParamsError(
                f"v_loss_layer={self.v_loss_layer}: must be at or after the last edited layer {self.layers[-1]}"
            )
        weights = self.mom2_update_weight
        if isinstance(weights, (list, tuple)):
            if len(weights) != len(self.layers):
                raise HyperParamsError(
                    f"mom2_update_weight has {len(weights)} entries but layers has {len(self.layers)}: "
                    "give one float, or one per layer"
                )
            weights = [_as_float("mom2_update_weight", w) for w in weights]
            self.mom2_update_weight = weights
        else:
            self.mom2_update_weight = _as_float("mom2_update_weight", weights)
            weights = [self.mom2_update_weight]
        if any(w < 0 for w in weights):
            raise HyperParamsError(f"mom2_update_weight={self.mom2_update_weight!r}: expected values >= 0")
        if self.mom2_dtype not in ("float32", "float16", "bfloat16", "float64"):
            raise HyperParamsError(f"mom2_dtype={self.mom2_dtype!r}: expected float32, float16, bfloat16 or float64")
        tpl = self.context_template_length_params
        if not isinstance(tpl, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(x, int) and x >= 0 for x in p) for p in tpl
        ):
            raise HyperParamsError(
                f"context_template_length_params={tpl!r}: expected [[max_new_tokens, count], ...] of non-negative ints"
            )
        for name in ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp"):
            tmp = getattr(self, name)
            if tmp is not None and "{}" not in tmp:
                raise HyperParamsError(f"{name}={tmp!r}: a module template must contain '{{}}' for the layer index")

    def _check_float(self, name: str, positive: bool) -> None:
        value = _as_float(name, getattr(self, name))
        if value < 0 or (positive and value == 0):
            raise HyperParamsError(f"{name}={value!r}: expected a {'positive' if positive else 'non-negative'} number")
        setattr(self, name, value)

    def _check_alg_name(self) -> None:
        """Any spelling of this class's method names is stored as the method's EasyEdit name."""
        method = _method_of_class(type(self))
        if not self.alg_name:
            self.alg_name = method.easyedit_name
            return
        if _spelling(self.alg_name) not in {_spelling(n) for n in method.names}:
            raise HyperParamsError(
                f"alg_name={self.alg_name!r} is not {method.name}." + did_you_mean(self.alg_name, method.names, available=False)
                + f" {type(self).__name__} takes {list(method.names)}; for another method use its class, or "
                "betaedit_plugin.load_hparams(path), which picks the class from alg_name"
            )
        self.alg_name = method.easyedit_name

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, config: dict, source: str = "<dict>"):
        """Build from a flat mapping; EasyEdit-only fields are dropped with a warning, unknown ones named."""
        config = dict(config)
        known = [f.name for f in dataclasses.fields(cls)]
        for name in sorted(set(EASYEDIT_IGNORED_FIELDS) & set(config) - set(known)):
            warnings.warn(f"{source}: field {name!r} is accepted for EasyEdit compatibility and ignored", stacklevel=3)
            config.pop(name)
        unknown = sorted(set(config) - set(known))
        if unknown:
            text = ", ".join(f"{u!r}" + did_you_mean(u, known, available=False) for u in unknown)
            raise HyperParamsError(f"{source}: unknown field(s) {text} for {cls.__name__}")
        return cls(**config)

    def fingerprint(self) -> dict:
        """Settings that change the editor's state; stored with saved state and compared on load.
        A field added after states were saved (`ADDED_FIELDS`) is left out at its neutral value, so
        that those states still load."""
        skip = {*PLACEMENT_FIELDS, "max_length", "batch_size", "stats_dir"}
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in skip or (f.name in ADDED_FIELDS and value == ADDED_FIELDS[f.name]):
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
        raise HyperParamsError(f"{name}={value!r}: expected a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise HyperParamsError(f"{name}={value!r}: expected a number") from None
    if not math.isfinite(out):
        raise HyperParamsError(f"{name}={value!r}: expected a finite number")
    return out


def _spelling(name: object) -> str:
    """A name without case, '-', '_' and spaces (how the registry matches names)."""
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


def _method_of_class(cls: type):
    """The `Method` that `register_method` attached to ``cls`` or its nearest registered base."""
    for klass in cls.__mro__:
        method = klass.__dict__.get("_method")
        if method is not None:
            return method
    raise TypeError(
        f"{cls.__name__} belongs to no registered method; a new method registers its hyperparameter class "
        "with betaedit_plugin.methods.register_method"
    )


def checked_nullspace(cov, threshold: float, what: str):
    """U (d_k, m) of `betaedit_plugin.linalg.nullspace_basis`, for a ``nullspace_threshold`` that works.

    Args:
        cov: the protected matrix (d_k, d_k): C0, or BetaEdit's S.
        what: names ``cov`` in the messages, e.g. "C0 of layer 4".
    Raises:
        HyperParamsError: no eigenvalue is below the threshold, so the null space is empty and no
            update can be written.
    Warns:
        when every eigenvalue is below it: no direction is protected, the projection does nothing.
    """
    from ..linalg.nullspace import nullspace_split  # torch on first use: `import betaedit_plugin` stays light

    basis, eigvals = nullspace_split(cov, threshold)
    d_k, m = basis.shape
    if m == 0:
        low = float(eigvals[0])
        raise HyperParamsError(
            f"nullspace_threshold={threshold!r}: no eigenvalue of {what} is below it (the smallest is {low:.3g}), "
            f"so the null space is empty and no edit can be written; set nullspace_threshold above {low:.3g}"
        )
    if m == d_k:
        high = float(eigvals[-1])
        warnings.warn(
            f"nullspace_threshold={threshold!r}: every eigenvalue of {what} is below it (the largest is {high:.3g}), "
            f"so 0 of {d_k} directions are protected and the projection does nothing; set it below {high:.3g} "
            "to protect pre-trained knowledge",
            stacklevel=2,
        )
    return basis


class UpdateRule:
    """How one method writes an edit, given the editor's per-layer state.

    The editor (`betaedit_plugin.editor.BetaEditor`) owns the loop that is the same for every
    method: z*, keys K and residuals R per layer, Delta from the layer's solver, writing,
    rollback, and the commit (H += K K^T). A rule is built once per editor,
    ``rule_class(hparams)``, and says what differs:

    - `solver_lambdas`: (lambda1, lambda2) of the layer's `IncrementalSolver`, which carries
      (U^T (H + lambda1 C0) U + lambda2 I)^-1;
    - `initial_basis`: U of the projector P = U U^T at the start (None: no projection);
    - ``uses_history``: whether each edit's keys enter the solver (H in the normal matrix);
    - `after_commit`: what happens once a step is written (BetaEdit: the projector refresh).

    `make_solver` is the one place a solver is built (new state, loaded state, refresh).
    """

    #: Each committed edit's K K^T enters the solver (sequential editing with history).
    uses_history: bool = True

    def __init__(self, hparams: EditHyperParams) -> None:
        self.hparams = hparams

    def solver_lambdas(self, layer: int) -> Tuple[float, float]:
        """(lambda1, lambda2) of the solver of ``layer``."""
        raise NotImplementedError(f"{type(self).__name__}.solver_lambdas")

    def initial_basis(self, prior_cov):
        """U (d_k, m) of the projector at the start, from C0 (d_k, d_k); None for no projection."""
        return None

    def make_solver(self, layer: int, prior_cov, basis=None, hist_cov=None, **placement):
        """The `IncrementalSolver` of ``layer`` for C0, a basis U (None: U = I) and a history H.

        ``placement``: `IncrementalSolver`'s keyword options for where and in what precision the
        per-edit tensors live (compute_device, compute_dtype, storage_device, refresh_every,
        inverse_form); the editor passes them (``BetaEditor(solver_options=...)``).
        """
        from ..linalg import IncrementalSolver  # torch on first use: `import betaedit_plugin` stays light

        lambda1, lambda2 = self.solver_lambdas(layer)
        return IncrementalSolver(
            prior_cov, basis=basis, hist_cov=hist_cov, lambda1=lambda1, lambda2=lambda2, **placement
        )

    def after_commit(self, state, current_priors=None) -> bool:
        """Called with the `EditorState` once a step is committed (``state.step`` counts it).

        ``current_priors``: a callable returning {layer: C0} collected from the model as it is now
        (BetaEdit's ``recollect_c0``); a rule calls it only when it needs it (a statistics pass).

        Returns:
            whether the solvers were rebuilt (reported as ``refreshed`` by ``BetaEditor.apply``).
        """
        return False
