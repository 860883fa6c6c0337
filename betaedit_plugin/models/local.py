"""Load a local Hugging Face checkpoint directory, never touching the network."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["load_local_checkpoint"]


def load_local_checkpoint(path: Union[str, Path], dtype: Optional[torch.dtype] = None):
    """``(model, tok)`` from ``path``: on CPU, in eval mode, ``pad_token`` set (eos when missing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    model.to(torch.device("cpu"))
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
