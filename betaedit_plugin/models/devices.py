"""Where a module computes and where its weight really lives, for models split across devices.

A model loaded with ``device_map`` (accelerate's ``dispatch_model``, ``device_map="auto"`` in
``from_pretrained``) has blocks on different GPUs, and may have blocks offloaded to CPU RAM or
disk. Accelerate attaches an ``AlignDevicesHook`` (``module._hf_hook``) to such modules: it moves
the inputs to the hook's ``execution_device`` and, for an offloaded module, loads the weights
from the hook's ``weights_map`` before the forward pass and puts ``meta`` tensors back after it.
So ``module.weight.device`` is not where the module computes (it may be ``meta``), and editing
``module.weight`` would write into a placeholder.

Here a module's device is its hook's execution device, else the device of its own tensors; a
weight is read from and written to the ``weights_map`` entry when an offloading hook holds it.
Nothing here imports accelerate: the hooks are read through their attributes.

Usage::

    dev = module_device(model, "model.layers.4.mlp.down_proj")   # cuda:1, cpu, ...
    w = stored_weight(model, "model.layers.4.mlp.down_proj")      # the real tensor, never meta
"""

from __future__ import annotations

from typing import Any, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import DeviceError
from .hooks import get_module

__all__ = ["as_device", "resolve_device", "same_device", "check_edit_devices", "module_device", "input_device", "output_device", "stored_weight", "place_model"]


def as_device(value: Union[int, str, torch.device]) -> torch.device:
    """EasyEdit's and accelerate's convention: an int (or a string of digits) means cuda:<int>."""
    if isinstance(value, int) and not isinstance(value, bool):
        return torch.device(f"cuda:{value}")
    if isinstance(value, str) and value.strip().isdigit():
        return torch.device(f"cuda:{int(value)}")
    return torch.device(value)


def resolve_device(device: Any, key: str = "device") -> torch.device:
    """``device`` as a `torch.device` that this machine has.

    Raises:
        DeviceError: not a device name, CUDA (or MPS) requested where it is not available, or a
            CUDA index beyond the devices present; the message names ``key`` and the value.
    """
    try:
        dev = as_device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DeviceError(f"{key}={device!r}: not a torch device; use 'cpu', 'cuda', 'cuda:<n>' or an int n") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{key}={device!r}: CUDA is not available on this machine; set {key} to 'cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"{key}={device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; pick one of them")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{key}={device!r}: MPS is not available on this machine; set {key} to 'cpu'")
    return dev


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same; "cuda" without an index is the current CUDA device."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    index = [torch.cuda.current_device() if d.index is None else d.index for d in (a, b)]
    return index[0] == index[1]


def check_edit_devices(layer_devices: Mapping[int, torch.device], device: Any, model_parallel: bool) -> None:
    """On one device (not ``model_parallel``) every edited layer must be on the one ``device`` names.

    Raises:
        DeviceError: names ``hparams.device``, the layer and where it is, and the fixes.
    """
    if model_parallel:  # split across devices: each layer computes where it is
        return
    wanted = resolve_device(device, "hparams.device")
    for l, dev in layer_devices.items():
        if not same_device(wanted, dev):
            raise DeviceError(
                f"hparams.device={device!r}, but the model's layer {l} is on {dev}; move the "
                f"model there (model.to({str(wanted)!r})), set device to {str(dev)!r}, or set "
                "model_parallel: true for a model split across devices"
            )


def _hooks(module: nn.Module) -> List[object]:
    """Accelerate hooks on ``module`` (a ``SequentialHook`` is unpacked), in order."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", [hook]))


def _ancestry(model: nn.Module, name: str) -> Iterator[Tuple[nn.Module, str]]:
    """(module, name of ``name`` relative to it) for ``name`` itself, then each parent up to ``model``."""
    parts = name.split(".") if name else []
    for cut in range(len(parts), -1, -1):
        prefix, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
        yield (get_module(model, prefix) if prefix else model), rest


def module_device(model: nn.Module, name: str) -> torch.device:
    """The device the module ``name`` of ``model`` computes on.

    The execution device of the nearest accelerate hook (on the module or a parent), else the
    device of the module's first tensor that is not on ``meta``, else the model's first one.

    Raises:
        LookupError: no module ``name``.
        ValueError: every tensor is on ``meta`` and no hook says where it runs.
    """
    module = get_module(model, name) if name else model
    for owner, _ in _ancestry(model, name):
        for hook in _hooks(owner):
            dev = getattr(hook, "execution_device", None)
            if dev is not None:
                return as_device(dev)
    for scope in (module, model):
        for t in list(scope.parameters()) + list(scope.buffers()):
            if t.device.type != "meta":
                return t.device
    raise ValueError(
        f"module {name!r}: its tensors are on 'meta' and no accelerate hook gives its execution device; "
        "load the weights (from_pretrained without low_cpu_mem_usage tricks) or dispatch the model with a device_map"
    )


def _name_of(model: nn.Module, module: Optional[nn.Module]) -> Optional[str]:
    if module is None:
        return None
    for name, m in model.named_modules():
        if m is module:
            return name
    return None


def input_device(model: nn.Module) -> torch.device:
    """Where the model's input ids must go: the input embedding's device."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    name = _name_of(model, emb)
    return module_device(model, name) if name is not None else module_device(model, "")


def output_device(model: nn.Module) -> torch.device:
    """Where the logits come out: the output head's device."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    name = _name_of(model, head)
    return module_device(model, name) if name is not None else module_device(model, "")


def stored_weight(model: nn.Module, name: str, *, for_write: bool = False) -> torch.Tensor:
    """The tensor that holds the real ``weight`` of module ``name``, in its storage orientation.

    With an offloading accelerate hook (on the module or a parent) that is the hook's
    ``weights_map`` entry, whatever ``module.weight`` holds (``meta`` between forward passes);
    otherwise ``module.weight`` itself. In-place changes to the returned tensor are what the
    next forward pass uses.

    Raises:
        ValueError: (``for_write``) the weights map hands out a fresh copy at every read (disk
            offload), so an in-place edit would be lost; or the weight is on ``meta`` and no
            hook holds it.
    """
    module = get_module(model, name)
    for owner, rel in _ancestry(model, name):
        for hook in _hooks(owner):
            wmap = getattr(hook, "weights_map", None)
            if not getattr(hook, "offload", False) or wmap is None:
                continue
            key = f"{rel}.weight" if rel else "weight"
            try:
                tensor = wmap[key]
            except KeyError:
                continue
            if for_write and wmap[key].data_ptr() != tensor.data_ptr():
                raise ValueError(
                    f"module {name!r} is offloaded to disk: accelerate reads a fresh copy of its weight at every "
                    "forward pass, so an edit written into it would be lost; map this layer to a GPU or to 'cpu' "
                    "in the device_map (edited layers must be held in memory)"
                )
            return tensor
    weight = module.weight
    if weight.device.type == "meta":
        raise ValueError(
            f"module {name!r}: its weight is on 'meta' and no accelerate offload hook holds the real one; "
            "load the model's weights before editing"
        )
    return weight


def place_model(model: nn.Module, device: Union[int, str, torch.device] = "cpu", device_map=None) -> nn.Module:
    """Put ``model`` on one device, or split it with accelerate following ``device_map``.

    Args:
        device: the device when ``device_map`` is None (an int means cuda:<int>).
        device_map: None; ``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``
            (accelerate computes the split over the visible GPUs, then CPU RAM); or a dict
            ``{module name: device}`` (devices: GPU index, ``"cpu"``, ``"disk"`` is not allowed).

    Raises:
        ImportError: a device_map without accelerate installed (``pip install betaedit-plugin[multi-device]``).
        ValueError: an unknown device_map string or a ``"disk"`` placement.
    """
    if device_map is None:
        return model.to(as_device(device))
    try:
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import get_balanced_memory
    except ImportError:
        raise ImportError(
            f"device_map={device_map!r} needs accelerate: pip install 'betaedit-plugin[multi-device]' "
            "(or pip install accelerate)"
        ) from None
    if isinstance(device_map, str):
        strategies = ("auto", "balanced", "balanced_low_0", "sequential")
        if device_map not in strategies:
            raise ValueError(f"device_map={device_map!r}: expected one of {list(strategies)} or a dict {{module: device}}")
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        max_memory = None
        if device_map != "sequential":
            max_memory = get_balanced_memory(
                model, no_split_module_classes=no_split, low_zero=device_map == "balanced_low_0"
            )
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split)
    device_map = dict(device_map)
    if "disk" in device_map.values():
        raise ValueError(
            f"device_map places {[k for k, v in device_map.items() if v == 'disk']} on 'disk': edits written into "
            "disk-offloaded weights would be lost; give those modules a GPU or 'cpu'"
        )
    return dispatch_model(model, device_map=device_map)
