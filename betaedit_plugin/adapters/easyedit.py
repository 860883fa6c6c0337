"""EasyEdit plugin: BetaEdit, AlphaEdit and MEMIT as methods of EasyEdit's ``BaseEditor``.

EasyEdit calls a method as ``ALG_DICT[alg_name](model, tok, requests, hparams,
copy=False, return_orig_weights=True, keep_original_weight=False, ...)`` and
expects ``(edited_model, weights_copy)`` back, ``weights_copy`` mapping
parameter names to the weights before the edit. It gives the method nowhere
to keep state, so (as EasyEdit's own ``MendRewriteExecutor`` does) the
registered callable is the bound method of an executor object,
`BetaEditExecutor`, that holds a ``weakref.WeakKeyDictionary`` from model to
`BetaEditor`: each model has its own history, which dies with the model.

In EasyEdit's non-sequential mode (``sequential_edit=False``) the host writes
``weights_copy`` back into the model after every edit. The executor notices
it at the next call (the edited weights hash back to what they were before
the last edit), rolls the editor's history back by that one step and warns.
Any other outside change to the edited weights raises `WeightsChangedError`.

`register_easyedit()` adds every registered method (`betaedit_plugin.methods`) to EasyEdit's
``ALG_DICT`` in place under its EasyEdit name ('BetaEdit', 'BE-AlphaEdit', 'BE-MEMIT', ...) and lets
``BatchEditor.is_batchable_method`` accept them (so ``BaseEditor.batch_edit`` works); calling it
again changes nothing. ``apply_<method>_to_model`` (``apply_betaedit_to_model``, ...) exists for
every registered method, with EasyEdit's calling convention.
"""

from __future__ import annotations

import copy as _copy
import json
import logging
import warnings
import weakref
from typing import Any, Callable, Dict, Optional, Tuple

from ..editor import BetaEditor, WeightsChangedError
from .undo import UndoLog
from ..methods import METHODS, EditHyperParams, Method, get_method, method_of
from ..requests import as_requests
from ..state import fingerprint_diff

logger = logging.getLogger(__name__)

__all__ = [
    "BetaEditExecutor",
    "apply_to_model",
    "apply_betaedit_to_model",
    "apply_alphaedit_to_model",
    "apply_memit_to_model",
    "register_easyedit",
    "registered_names",
    "REGISTERED_NAMES",
]


def registered_names() -> Tuple[str, ...]:
    """Names this package adds to EasyEdit's ALG_DICT: the EasyEdit name of every registered method."""
    get_method("BetaEdit")  # loads the shipped methods
    return tuple(m.easyedit_name for m in METHODS)

INSTALL_HINT = (
    "EasyEdit (the 'easyeditor' package) is not importable. Install it from its source tree, "
    "since the PyPI release is a 2023 snapshot pinned to old transformers: "
    "`git clone https://github.com/zjunlp/EasyEdit && pip install -e EasyEdit --no-deps` "
    "(then install the extra packages its import asks for), or put the clone on PYTHONPATH. "
    "Without EasyEdit, use betaedit_plugin.BetaEditor directly (same from_hparams/edit shape)."
)


class BetaEditExecutor:
    """EasyEdit-callable executor for one method; keeps one `BetaEditor` per model (weakly).

    Args:
        alg_name: a registered method in any spelling ('BetaEdit', 'BE-AlphaEdit', 'memit', ...).
        editor_kwargs: passed to every `BetaEditor` it builds (e.g. ``prior_covs``,
            ``context_templates``) unless the call gives its own.

    ``executor.apply_to_model`` has EasyEdit's signature and goes into ``ALG_DICT``.
    """

    def __init__(self, alg_name: str, **editor_kwargs: Any) -> None:
        method = get_method(alg_name)  # KeyError with "Did you mean" for unknown names
        self.alg_name = method.easyedit_name
        self.hparams_class = method.hparams_class
        self.editor_kwargs = dict(editor_kwargs)
        self._editors: "weakref.WeakKeyDictionary[Any, BetaEditor]" = weakref.WeakKeyDictionary()
        self._logs: "weakref.WeakKeyDictionary[Any, UndoLog]" = weakref.WeakKeyDictionary()  # each editor's last step

    def __repr__(self) -> str:
        return f"BetaEditExecutor({self.alg_name!r}, models={len(self._editors)})"

    # ------------------------------------------------------------ editors per model
    def editor_for(self, model) -> Optional[BetaEditor]:
        """The editor bound to ``model``, or None before its first edit."""
        return self._editors.get(model)

    def weights_status(self, model) -> str:
        """Whether ``model``'s edited weights are as its editor last wrote them: 'unchanged', 'restored'
        (back to before its last step: EasyEdit's non-sequential mode) or 'changed' (`UndoLog`)."""
        log = self._logs.get(model)
        return "unchanged" if log is None else log.weights_status()

    def reset(self, model) -> None:
        """Forget ``model``'s history (its weights are not touched)."""
        self._editors.pop(model, None)
        self._logs.pop(model, None)

    def _get_editor(self, model, tok, hparams, editor_kwargs: dict) -> BetaEditor:
        editor = self._editors.get(model)
        if editor is None:
            editor = BetaEditor(model, tok, hparams, weak_model=True, **{**self.editor_kwargs, **editor_kwargs})
            self._editors[model], self._logs[model] = editor, UndoLog(editor)
            return editor
        diff = fingerprint_diff({"hparams": editor.fingerprint()["hparams"]},
                                {"hparams": json.loads(json.dumps(hparams.fingerprint()))})
        if diff:
            raise ValueError(
                "this model already has a history under other hparams (" + "; ".join(diff) + "); "
                f"use the same hparams, or call executor.reset(model) to start a new history"
            )
        editor.tok = tok
        return editor

    # ------------------------------------------------------------ EasyEdit entry point
    def apply_to_model(
        self,
        model,
        tok,
        requests,
        hparams: EditHyperParams,
        copy: bool = False,
        return_orig_weights: bool = False,
        keep_original_weight: bool = False,
        **kwargs: Any,
    ):
        """Write ``requests`` (EasyEdit dicts or EditRequests) as one step; returns (model, weights_copy).

        Args:
            copy: edit a deep copy of the model (the copy gets a copy of the history).
            return_orig_weights: fill ``weights_copy`` {parameter name: weight before this edit}.
            keep_original_weight: accepted for EasyEdit compatibility; the history is kept per model.
            kwargs: ``prior_covs`` / ``context_templates`` for a new editor; other EasyEdit
                keywords (``train_ds``...) are ignored.
        Raises:
            TypeError / ValueError: wrong hparams class or bad requests (nothing changed).
            WeightsChangedError: the edited weights changed outside the editor since the last call.
        """
        if not isinstance(hparams, EditHyperParams) or method_of(hparams).easyedit_name != self.alg_name:
            raise TypeError(
                f"hparams: {self.alg_name} needs {self.hparams_class.__name__}, got {type(hparams).__name__}"
            )
        reqs = as_requests(requests)
        editor_kwargs = {k: kwargs.pop(k) for k in ("prior_covs", "context_templates") if k in kwargs}
        if kwargs:
            logger.debug("%s: ignoring EasyEdit arguments %s", self.alg_name, sorted(kwargs))
        if copy:
            source = self._editors.get(model)
            model = _copy.deepcopy(model)
            if source is not None:
                self._editors[model] = clone = _clone_editor(source, model, tok)
                self._logs[model] = UndoLog(clone)
        editor = self._get_editor(model, tok, hparams, editor_kwargs)
        log = self._logs[model]
        self._sync_with_weights(editor, log)
        weights_copy: Dict[str, Any] = {}
        if return_orig_weights:
            for l in hparams.layers:
                name = editor.layout.rewrite_name(l) + ".weight"
                weights_copy[name] = editor.layout.rewrite_module(model, l).weight.detach().clone()
        log.apply(reqs)
        return model, weights_copy

    def _sync_with_weights(self, editor: BetaEditor, log: UndoLog) -> None:
        status = log.weights_status()
        if status == "restored":
            log.undo(restore_weights=False)
            warnings.warn(
                f"{self.alg_name}: the edited weights were restored to before the last edit (EasyEdit's "
                f"non-sequential mode); the editor's history was rolled back by one step to step {editor.step}",
                stacklevel=3,
            )
        elif status == "changed":
            raise WeightsChangedError(
                f"{self.alg_name}: the weights of layers {editor.hparams.layers} changed outside the editor since "
                "its last edit, so its history no longer matches the model; call executor.reset(model) to start "
                "a new history from the current weights"
            )


def _clone_editor(source: BetaEditor, model, tok) -> BetaEditor:
    """A new editor for a deep copy of ``source.model``, with a copy of its state."""
    editor = BetaEditor(model, tok, source.hparams, weak_model=True)
    if source.state is not None:
        editor.load_state_dict(source.state_dict(), restore_weights=False)
    return editor


# ---------------------------------------------------------------- module-level entry points
def _registered_executor(alg_name: str) -> Optional[BetaEditExecutor]:
    """The executor `register_easyedit` put into EasyEdit's ALG_DICT, if any (no import of EasyEdit)."""
    import sys

    module = sys.modules.get("easyeditor.util.alg_dict")
    fn = getattr(module, "ALG_DICT", {}).get(alg_name) if module is not None else None
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, BetaEditExecutor) else None


def apply_to_model(alg_name: str, model, tok, requests, hparams, copy=False, return_orig_weights=False,
                   keep_original_weight=False, executor: Optional[BetaEditExecutor] = None, **kwargs):
    """EasyEdit-style entry point for the method ``alg_name``: returns (model, weights_copy).

    Uses ``executor``, else the one `register_easyedit` put into EasyEdit's ALG_DICT, else (with
    a warning: no history is kept between calls) a new one. See `BetaEditExecutor.apply_to_model`.
    """
    alg_name = get_method(alg_name).easyedit_name
    if executor is None:
        executor = _registered_executor(alg_name)
    if executor is None:
        warnings.warn(
            f"apply_*_to_model for {alg_name} without an executor: this call's history is not kept for the next "
            "call. Pass executor=BetaEditExecutor(...) or call register_easyedit() first.",
            stacklevel=3,
        )
        executor = BetaEditExecutor(alg_name)
    return executor.apply_to_model(
        model, tok, requests, hparams, copy=copy, return_orig_weights=return_orig_weights,
        keep_original_weight=keep_original_weight, **kwargs,
    )


def _apply_function(method: Method) -> Callable:
    """``apply_<method>_to_model`` with EasyEdit's signature, for one registered method."""

    def apply(model, tok, requests, hparams, copy=False, return_orig_weights=False, keep_original_weight=False,
              executor: Optional[BetaEditExecutor] = None, **kwargs):
        return apply_to_model(method.easyedit_name, model, tok, requests, hparams, copy=copy,
                              return_orig_weights=return_orig_weights, keep_original_weight=keep_original_weight,
                              executor=executor, **kwargs)

    apply.__name__ = apply.__qualname__ = _apply_name(method)
    apply.__doc__ = (f"EasyEdit-style entry point for {method.name} ({method.easyedit_name!r}): returns "
                     "(model, weights_copy). See `apply_to_model`.")
    return apply


def _apply_name(method: Method) -> str:
    return f"apply_{method.cli_name.replace('-', '_')}_to_model"


def __getattr__(name: str):
    """``REGISTERED_NAMES`` and ``apply_<method>_to_model`` of every registered method (PEP 562)."""
    if name == "REGISTERED_NAMES":
        return registered_names()
    if name.startswith("apply_") and name.endswith("_to_model"):
        get_method("BetaEdit")  # loads the shipped methods
        for method in METHODS:
            if _apply_name(method) == name:
                return _apply_function(method)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- registration
_PATCH_MARK = "_betaedit_plugin_names"


def register_easyedit() -> Dict[str, BetaEditExecutor]:
    """Add every registered method to EasyEdit under its EasyEdit name (idempotent); returns {name: executor}.

    - ``ALG_DICT`` is updated in place: the dict object in ``easyeditor.util.alg_dict``, which
      ``easyeditor.editors.editor`` imports by name (``from ..util.alg_dict import *``), so both
      see the new entries; any other module that holds a different ``ALG_DICT`` object is updated too.
    - ``BatchEditor.is_batchable_method`` is wrapped once so that it also accepts these names
      (needed by ``BaseEditor.batch_edit``); EasyEdit's own answers are unchanged.

    Raises:
        ImportError: EasyEdit is not importable (the message says how to install it).
        KeyError: ALG_DICT already maps one of the names to something that is not ours.
    """
    try:
        import easyeditor  # noqa: F401  (runs EasyEdit's own imports)
        from easyeditor.editors import batch_editor as batch_mod
        from easyeditor.editors import editor as editor_mod
        from easyeditor.util import alg_dict as alg_mod
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} (import error: {exc})") from exc

    dicts = [alg_mod.ALG_DICT]
    if getattr(editor_mod, "ALG_DICT", alg_mod.ALG_DICT) is not alg_mod.ALG_DICT:
        dicts.append(editor_mod.ALG_DICT)
    executors: Dict[str, BetaEditExecutor] = {}
    names = registered_names()
    for name in names:
        current = [d.get(name) for d in dicts]
        owner = next((getattr(fn, "__self__", None) for fn in current
                      if isinstance(getattr(fn, "__self__", None), BetaEditExecutor)), None)
        for fn in current:
            if fn is not None and getattr(fn, "__self__", None) is not owner:
                raise KeyError(f"EasyEdit's ALG_DICT already has a method called {name!r} ({fn!r}); not replacing it")
        executors[name] = owner if owner is not None else BetaEditExecutor(name)
    for d in dicts:
        for name, ex in executors.items():
            if d.get(name) is None:
                d[name] = ex.apply_to_model
    _patch_batchable(batch_mod.BatchEditor)
    logger.info("registered %s in EasyEdit's ALG_DICT", list(names))
    return executors


def _patch_batchable(batch_editor_cls) -> None:
    """Let ``BatchEditor.is_batchable_method`` accept this package's names (once)."""
    current = batch_editor_cls.is_batchable_method
    if getattr(current, _PATCH_MARK, None) is not None:
        return
    original = current

    def is_batchable_method(alg_name: str) -> bool:
        return alg_name in registered_names() or original(alg_name)

    setattr(is_batchable_method, _PATCH_MARK, True)
    is_batchable_method.__doc__ = "EasyEdit's check, extended by betaedit_plugin to accept its registered methods"
    batch_editor_cls.is_batchable_method = staticmethod(is_batchable_method)
