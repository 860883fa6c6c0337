"""Forward hooks as context managers that always remove themselves.

``Trace`` records (and optionally edits) the input or output of one named
module during a forward pass; ``TraceDict`` does the same for several modules;
``StopForward`` cuts the forward pass short after a module has run, which the
context managers swallow when they raised it (``stop=True``).

Usage::

    with Trace(model, "model.layers.3.mlp.down_proj", retain_input=True, stop=True) as tr:
        model(**batch)                     # stops right after down_proj of layer 3
    keys = tr.input                        # (batch, seq, d_k)

    def add(out, name):                    # replace a block's output
        return out + delta
    with Trace(model, "model.layers.5", edit_output=add):
        logits = model(**batch).logits

``BlockRecorder`` records how a run of transformer blocks is called (the hidden input, the other
arguments, the keyword arguments) so that they can be called again on new hidden states: what
`compute_ks` and `compute_z` replay instead of whole forward passes.

Hooks are removed in ``__exit__``, also when the forward pass raises.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

import torch
from torch import nn

from .._suggest import did_you_mean

logger = logging.getLogger(__name__)

EditFn = Callable[[Any, str], Any]


class StopForward(Exception):
    """Raised by a hook to end a forward pass early; ``Trace(stop=True)`` swallows it."""


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (a dotted path as in ``model.named_modules()``).

    Raises:
        LookupError: no such module; the message lists the closest module names.
    """
    if not isinstance(name, str):
        raise TypeError(f"module name={name!r}: expected a dotted path string such as 'model.layers.0.mlp'")
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    tail = name.rsplit(".", 1)[-1]
    same_tail = [n for n in modules if n.endswith("." + tail)]  # when no name is close enough
    raise LookupError(
        f"module {name!r} not found in {type(model).__name__}."
        + did_you_mean(name, list(modules), n=5, cutoff=0.5, available=False, fallback=same_tail)
        + " Check the module template (rewrite_module_tmp, layer_module_tmp, ...) in the hparams."
    )


def first_tensor(value: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (tensor, or first item of a tuple/ModelOutput)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"expected a tensor or a tuple starting with a tensor, got {type(value).__name__}")


def replace_first_tensor(value: Any, new: torch.Tensor) -> Any:
    """``value`` with its hidden-state tensor replaced by ``new`` (same container type)."""
    if isinstance(value, torch.Tensor):
        return new
    return (new,) + tuple(value[1:])


class _Hooks:
    """A ``with`` block holding hooks: ``_register`` adds them, ``close`` removes them (also when
    registering or the forward pass fails); a `StopForward` ends the block quietly when ``_stops``."""

    def _register(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def _stops(self) -> bool:
        return bool(self.stop)

    def __enter__(self):
        try:
            self._register()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return self._stops and exc_type is not None and issubclass(exc_type, StopForward)


class Trace(_Hooks):
    """Hook one module for the duration of a ``with`` block.

    Args:
        model: the model holding the module.
        name: dotted module name.
        retain_input: keep the first positional input in ``.input``.
        retain_output: keep the output in ``.output`` (the raw output: tensor or tuple).
        edit_output: ``fn(output, name) -> new_output`` called on the output; its
            return value replaces the module's output.
        stop: raise ``StopForward`` after the module has run (and was recorded);
            the ``with`` block swallows it.
        clone: clone retained tensors (safe against later in-place changes).
        detach: detach retained tensors from the autograd graph.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        retain_input: bool = False,
        retain_output: bool = True,
        edit_output: Optional[EditFn] = None,
        stop: bool = False,
        clone: bool = False,
        detach: bool = False,
    ) -> None:
        self.module = get_module(model, name)
        self.name = name
        self.retain_input = retain_input
        self.retain_output = retain_output
        self.edit_output = edit_output
        self.stop = stop
        self.clone = clone
        self.detach = detach
        self.input: Optional[torch.Tensor] = None
        self.output: Any = None
        self._handle = None

    def _keep(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if self.detach:
                value = value.detach()
            if self.clone:
                value = value.clone()
        return value

    def _hook(self, module: nn.Module, inputs: tuple, output: Any) -> Any:
        if self.retain_input:
            self.input = self._keep(inputs[0] if inputs else None)
        if self.edit_output is not None:
            output = self.edit_output(output, self.name)
        if self.retain_output:
            self.output = self._keep(output)
        if self.stop:
            raise StopForward(self.name)
        return output

    def _register(self) -> None:
        self._handle = self.module.register_forward_hook(self._hook)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@dataclass
class BlockCall:
    """How a block was called: ``hidden`` (its hidden-state input), the other positional ``args``,
    the other ``kwargs``, and whether the hidden states came as the ``hidden_states`` keyword."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    as_kwarg: bool

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> Any:
        """Call ``block`` again as recorded, on ``hidden`` instead."""
        if self.as_kwarg:
            return block(hidden_states=hidden, **self.kwargs)
        return block(hidden, *self.args, **self.kwargs)


class BlockRecorder(_Hooks):
    """Pre-hooks on ``blocks`` ({index: module}) recording each one's first call as a `BlockCall`.

    With ``stop`` (an index in ``blocks``) the forward pass ends before that block runs (its call is
    recorded); the ``with`` block swallows the `StopForward`. ``calls`` is in call order.
    """

    def __init__(self, blocks: Mapping[int, nn.Module], stop: Optional[int] = None) -> None:
        if stop is not None and stop not in blocks:
            raise ValueError(f"stop={stop}: not one of the recorded blocks {sorted(blocks)}")
        self.blocks = dict(blocks)
        self.stop = stop
        self.calls: Dict[int, BlockCall] = {}
        self._handles: list = []

    def _hook(self, index: int):
        def pre_hook(module, args, kwargs):
            if index not in self.calls:
                if args:
                    self.calls[index] = BlockCall(args[0], tuple(args[1:]), dict(kwargs), False)
                else:
                    rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
                    self.calls[index] = BlockCall(kwargs["hidden_states"], (), rest, True)
            if index == self.stop:
                raise StopForward(f"block {index}")

        return pre_hook

    @property
    def _stops(self) -> bool:
        return self.stop is not None

    def _register(self) -> None:
        for index, block in self.blocks.items():
            self._handles.append(block.register_forward_pre_hook(self._hook(index), with_kwargs=True))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class TraceDict(_Hooks, OrderedDict):
    """``Trace`` on several modules at once: ``td[name].input`` / ``td[name].output``.

    ``stop=True`` stops after the LAST name in ``names`` has run. ``edit_output``
    is applied to every traced module (it receives the module name).
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        retain_input: bool = False,
        retain_output: bool = True,
        edit_output: Optional[EditFn] = None,
        stop: bool = False,
        clone: bool = False,
        detach: bool = False,
    ) -> None:
        super().__init__()
        names = list(names)
        if not names:
            raise ValueError("names=[]: TraceDict needs at least one module name")
        for name in names:  # resolve every name before registering anything
            get_module(model, name)
        self.stop = stop
        for i, name in enumerate(names):
            self[name] = Trace(
                model, name, retain_input=retain_input, retain_output=retain_output,
                edit_output=edit_output, stop=stop and i == len(names) - 1, clone=clone, detach=detach,
            )

    def _register(self) -> None:
        for trace in self.values():
            trace.__enter__()

    def close(self) -> None:
        for trace in self.values():
            trace.close()


def hook_count(module: nn.Module) -> int:
    """Number of forward (pre-)hooks registered on ``module`` and its children (for tests)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())
