"""Token positions that do not depend on the tokenizer's padding side.

Texts are built as ``context_prefix + prompt_prefix + subject + prompt_suffix``
so the subject's character span is known exactly; its tokens are the ones
whose character offsets overlap that span (fast tokenizers), or are found from
the token counts of the text before and through the subject (slow tokenizers).
Batches are padded by hand on ``tok.padding_side`` and every position is
mapped through the attention mask, so left and right padding give the same
token, and ``position_ids`` are computed from the mask so that rotary and
learned position embeddings see the same positions either way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..requests import FACT_TOKENS, EditRequest, fill_subject

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptText:
    """A prompt string plus the character span ``[start, end)`` of its subject."""

    text: str
    subject_start: int
    subject_end: int


def split_template(template: str, subject: str) -> tuple[str, str]:
    """(prefix, suffix) around the first "{}" of ``template``; later "{}" are filled with ``subject``."""
    if "{}" not in template:
        raise ValueError(f"template={template!r}: expected '{{}}' in place of the subject")
    prefix, suffix = template.split("{}", 1)
    return prefix, fill_subject(suffix, subject)


def build_prompt(request: EditRequest, context: str = "{}", template: Optional[str] = None) -> PromptText:
    """``context`` (a "{}" template, e.g. "Therefore, it is. {}") wrapped around the request's prompt.

    ``template`` replaces the request's own template (e.g. "{} is a" for the KL prompt).
    """
    ctx_prefix, ctx_suffix = split_template(context, "{}")
    prefix, suffix = split_template(template if template is not None else request.template, request.subject)
    head = ctx_prefix + prefix
    text = head + request.subject + suffix + ctx_suffix
    return PromptText(text, len(head), len(head) + len(request.subject))


def encode(tok, prompt: PromptText) -> list[int]:
    """Token ids of ``prompt.text`` (with the tokenizer's special tokens, e.g. a BOS)."""
    return list(tok(prompt.text)["input_ids"])


def subject_token_range(tok, prompt: PromptText) -> tuple[int, int]:
    """Token indices ``[first, last]`` (inclusive, unpadded) covering the subject's characters.

    Raises:
        ValueError: no token covers the subject (e.g. truncated, or an empty subject).
    """
    start, end = prompt.subject_start, prompt.subject_end
    if getattr(tok, "is_fast", False):
        offsets = tok(prompt.text, return_offsets_mapping=True)["offset_mapping"]
        hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    else:
        # a space before the subject usually merges into its first token (" Danielle"):
        # count the text before the subject with its trailing spaces only when the
        # tokens of that text are a prefix of the full text's tokens
        full = list(tok(prompt.text)["input_ids"])
        head = list(tok(prompt.text[:start])["input_ids"]) if start > 0 else []
        if head and full[: len(head)] == head:
            before = len(head)
        else:
            stripped = prompt.text[:start].rstrip(" ")
            before = len(tok(stripped)["input_ids"]) if stripped else _n_special_prefix(tok)
        through = len(tok(prompt.text[:end])["input_ids"])
        hits = list(range(before, through))
    if not hits:
        raise ValueError(
            f"subject={prompt.text[start:end]!r}: no token of {prompt.text!r} covers it; "
            "check that the subject occurs in the prompt and is not truncated"
        )
    return hits[0], hits[-1]


def _n_special_prefix(tok) -> int:
    return len(tok("")["input_ids"])


def fact_token_index(tok, prompt: PromptText, fact_token: str, n_tokens: Optional[int] = None) -> int:
    """Unpadded index of the fact token of ``prompt`` (see ``FACT_TOKENS``).

    ``last``: the last token of the prompt; ``subject_first`` / ``subject_last``: the
    subject's first / last token; ``subject_first_after_last``: the token right after
    the subject (the last prompt token when the subject ends the prompt).
    """
    if fact_token not in FACT_TOKENS:
        raise ValueError(f"fact_token={fact_token!r}: expected one of {list(FACT_TOKENS)}")
    n = n_tokens if n_tokens is not None else len(encode(tok, prompt))
    if fact_token == "last":
        return n - 1
    first, last = subject_token_range(tok, prompt)
    if fact_token == "subject_first":
        return first
    if fact_token == "subject_last":
        return last
    return min(last + 1, n - 1)


@dataclass
class PaddedBatch:
    """input_ids / attention_mask / position_ids, all (B, T) long tensors."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def model_kwargs(self) -> dict:
        return dict(
            input_ids=self.input_ids, attention_mask=self.attention_mask,
            position_ids=self.position_ids, use_cache=False,
        )

    def padded_index(self, row: int, index: int) -> int:
        """Column of the ``index``-th real token of ``row`` (negative ``index`` counts from the end)."""
        cols = self.attention_mask[row].nonzero().flatten()
        return int(cols[index])


def pad_batch(
    seqs: Sequence[Sequence[int]], tok, device: torch.device, padding_side: Optional[str] = None
) -> PaddedBatch:
    """Pad token id lists on ``padding_side`` (default ``tok.padding_side``)."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_batch: expected a non-empty list of non-empty token sequences")
    side = padding_side or getattr(tok, "padding_side", "right") or "right"
    if side not in ("left", "right"):
        raise ValueError(f"padding_side={side!r}: expected 'left' or 'right'")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, cols] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, cols] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return PaddedBatch(ids.to(device), mask.to(device), position_ids.to(device))


def pad_aligned(seqs: Sequence[Sequence[int]], anchors: Sequence[int], tok, device: torch.device) -> PaddedBatch:
    """Pad so that token ``anchors[i]`` of every row lands in the same column (left and right padding).

    The common column is ``max(anchors)``; ``position_ids`` still count real tokens only.
    """
    if len(seqs) != len(anchors) or not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pad_aligned: expected non-empty sequences and one anchor per sequence")
    col = max(anchors)
    left = [col - a for a in anchors]
    width = max(l + len(s) for l, s in zip(left, seqs))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (l, seq) in enumerate(zip(left, seqs)):
        ids[row, l: l + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, l: l + len(seq)] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return PaddedBatch(ids.to(device), mask.to(device), position_ids.to(device))


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs must go: the input embedding's device (also when the model is split
    across devices, see `betaedit_plugin.models.devices`)."""
    from .devices import input_device

    return input_device(model)
