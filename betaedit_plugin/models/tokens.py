"""Tokenisation for editing and scoring alike: prompts, targets, fact-token positions, padding.

One encoding of a (prompt, target) pair, `encode_pair`, is what `compute_z` optimises and what
`betaedit_plugin.eval.scoring` reads, so an edit trains on exactly the tokens its score reads.
One padding id (`pad_id`), one padding routine (`pad_batch`, `pad_aligned`), one input device
(`model_device`), one context limit (`context_limit`).

Token positions do not depend on the tokenizer's padding side.

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

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from ..requests import FACT_TOKENS, EditRequest, fill_subject, naming_request
from .devices import input_device

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


def encode_pair(tok, prompt: str, target: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` and of `` target`` after it: (prompt_ids, target_ids).

    The target gets a leading space (the usual "prompt target" join). The joint encoding is used
    when the prompt's ids are a prefix of it; otherwise the two parts are encoded separately.

    Raises:
        ValueError: the target encodes to no tokens.
    """
    text_target = target if target.startswith(" ") else " " + target
    prompt_ids = list(tok(prompt)["input_ids"])
    full = list(tok(prompt + text_target)["input_ids"])
    if len(full) > len(prompt_ids) and full[: len(prompt_ids)] == prompt_ids:
        return prompt_ids, full[len(prompt_ids):]
    target_ids = list(tok(text_target, add_special_tokens=False)["input_ids"])
    if not target_ids:
        raise ValueError(f"target={target!r} encodes to no tokens; expected a non-empty target text")
    return prompt_ids, target_ids


def pad_id(tok) -> int:
    """Padding id: the tokenizer's pad token, else its eos token, else 0 (masked out anyway)."""
    for value in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None)):
        if isinstance(value, int):
            return value
    return 0


def context_limit(model: torch.nn.Module) -> Optional[int]:
    """Longest sequence the model accepts (``n_positions`` / ``max_position_embeddings``), or None."""
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_fits_context(model, tok, requests: Sequence[EditRequest], contexts: Sequence[str]) -> None:
    """Every sequence an edit builds (the prompt in each context template, then target_new) fits the
    model's context (nothing to check for a model without a limit).

    Raises:
        RequestError: names the request (index, case_id), the lengths and the limit.
    """
    limit = context_limit(model)
    if limit is None:
        return
    for i, r in enumerate(requests):
        with naming_request(i, r):
            longest = max((encode_pair(tok, build_prompt(r, c).text, r.target_new) for c in contexts),
                          key=lambda pair: len(pair[0]) + len(pair[1]))
            prompt, target = len(longest[0]), len(longest[1])
            if prompt + target > limit:
                raise ValueError(
                    f"the prompt ({prompt} tokens in its longest context template) and target_new ({target} "
                    f"tokens) take {prompt + target} tokens, more than the model's context of {limit} positions; "
                    "shorten them or leave the case out"
                )


@contextlib.contextmanager
def edit_mode(model, tok) -> Iterator[None]:
    """Eval mode (no dropout) and right padding while editing; both restored afterwards."""
    was_training = model.training
    side = getattr(tok, "padding_side", None)
    model.eval()
    if side is not None:
        tok.padding_side = "right"
    try:
        yield
    finally:
        model.train(was_training)
        if side is not None:
            tok.padding_side = side


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
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id(tok), dtype=torch.long)
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
    ids = torch.full((len(seqs), width), pad_id(tok), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (l, seq) in enumerate(zip(left, seqs)):
        ids[row, l: l + len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, l: l + len(seq)] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return PaddedBatch(ids.to(device), mask.to(device), position_ids.to(device))


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs must go: the input embedding's device (also when the model is split
    across devices, see `betaedit_plugin.models.devices`)."""
    return input_device(model)
