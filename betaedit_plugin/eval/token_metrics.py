"""Teacher-forced token metrics in EasyEdit's format (``rewrite_acc``, ``locality``).

EasyEdit scores a decoder-only model on a (prompt, target) pair by running the
model once on ``prompt + " " + target`` and comparing, position by position,
the argmax prediction with the next target token. These functions compute the
same numbers one example at a time (no padding, so the padding side cannot
change the result), written independently of EasyEdit's code.

- `target_token_accuracy` -> float in [0, 1]: share of target tokens predicted
  (``rewrite_acc`` / ``rephrase_acc``);
- `predicted_target_tokens` -> the argmax tokens at the target positions
  (EasyEdit's ``<key>_output`` for locality);
- `token_agreement` -> share of positions where two such token lists agree
  (EasyEdit's ``<key>_acc`` for locality, post vs pre edit).
"""

from __future__ import annotations

from typing import List, Sequence

import torch

__all__ = [
    "target_token_accuracy",
    "predicted_target_tokens",
    "token_agreement",
    "prompt_target_ids",
]


def prompt_target_ids(tok, prompt: str, target: str) -> tuple[List[int], int]:
    """Token ids of ``prompt + " " + target`` and the number of prompt tokens.

    The prompt length is counted on the prompt alone (with the tokenizer's
    special tokens, e.g. a BOS), as EasyEdit does.
    """
    if not isinstance(prompt, str) or not isinstance(target, str):
        raise TypeError(f"prompt and target must be str, got {type(prompt).__name__} and {type(target).__name__}")
    full = list(tok(prompt + " " + target)["input_ids"])
    n_prompt = len(tok(prompt)["input_ids"])
    if n_prompt >= len(full):
        raise ValueError(f"target={target!r} adds no tokens after prompt={prompt!r}: cannot score it")
    return full, n_prompt


@torch.no_grad()
def predicted_target_tokens(model, tok, prompt: str, target: str, device=None) -> tuple[List[int], List[int]]:
    """(argmax predictions, reference tokens) at the target positions, teacher forced.

    Args:
        model: a causal LM returning ``.logits`` (1, seq, vocab).
        device: where to run; default: the device of the model's first parameter.
    Returns:
        two lists of equal length (the number of target tokens).
    """
    full, n_prompt = prompt_target_ids(tok, prompt, target)
    if device is None:
        device = next(model.parameters()).device
    ids = torch.tensor([full], dtype=torch.long, device=device)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    preds = logits.argmax(dim=-1)[n_prompt - 1 : len(full) - 1].tolist()
    return [int(p) for p in preds], [int(t) for t in full[n_prompt:]]


def target_token_accuracy(model, tok, prompt: str, target: str, device=None) -> float:
    """Share of the target's tokens that the model predicts after ``prompt`` (teacher forced)."""
    preds, labels = predicted_target_tokens(model, tok, prompt, target, device)
    return sum(int(p == t) for p, t in zip(preds, labels)) / len(labels)


def token_agreement(before: Sequence[int], after: Sequence[int]) -> float:
    """Share of positions where two predicted token lists agree (locality, post vs pre)."""
    if len(before) != len(after):
        raise ValueError(f"token lists differ in length ({len(before)} vs {len(after)}): score the same prompt/answer")
    if not before:
        raise ValueError("token lists are empty: nothing to compare")
    return sum(int(a == b) for a, b in zip(before, after)) / len(before)
