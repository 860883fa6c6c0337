"""Load a local Hugging Face checkpoint directory, never touching the network."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["load_local_checkpoint", "load_local_tokenizer"]


def load_local_checkpoint(path: Union[str, Path], dtype: Optional[torch.dtype] = None):
    """``(model, tok)`` from ``path``: on CPU, in eval mode, ``pad_token`` set (eos when missing)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    model.to(torch.device("cpu"))
    model.eval()
    return model, load_local_tokenizer(path)


def load_local_tokenizer(path: Union[str, Path]):
    """The tokenizer of the checkpoint directory ``path`` (a directory with the tokenizer files alone
    will do), ``pad_token`` set (eos when missing)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
