"""Batched teacher-forced scoring of (prompt, target) pairs and greedy generation.

Every function takes the model and tokenizer explicitly, runs under ``torch.no_grad`` and packs
several sequences into one forward pass (right padding for scoring, left padding for generation),
without changing the tokenizer's settings.

This is the one scoring path: a (prompt, target) pair is tokenised by
`betaedit_plugin.models.tokens.encode_pair` (the target after a space, as in "prompt target"), the
same encoding `compute_z` optimises, for the runner's metrics and for EasyEdit's
token metrics alike (`target_token_accuracy`, `predicted_target_tokens`, `token_agreement`:
EasyEdit's ``rewrite_acc`` / ``rephrase_acc`` and locality ``<key>_output`` / ``<key>_acc``).
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from ..models.tokens import context_limit, encode_pair, model_device, pad_batch, pad_id


@dataclass(frozen=True)
class TargetScore:
    """Teacher-forced score of one target continuation.

    Attributes:
        sum_logprob: sum over the target tokens of log p(token | prefix).
        n_tokens: number of target tokens.
        argmax: the model's argmax prediction at each target position (len n_tokens).
        target_ids: the target token ids (len n_tokens).
    """

    sum_logprob: float
    n_tokens: int
    argmax: tuple
    target_ids: tuple

    @property
    def mean_logprob(self) -> float:
        return self.sum_logprob / self.n_tokens

    @property
    def token_accuracy(self) -> float:
        """Share of target positions where the argmax equals the target (EasyEdit's token accuracy)."""
        return sum(a == t for a, t in zip(self.argmax, self.target_ids)) / self.n_tokens


def _fit(prompt_ids: list, target_ids: list, limit: Optional[int]) -> list:
    """Drop tokens from the start of the prompt so that prompt + target fits in ``limit``."""
    if limit is None or len(prompt_ids) + len(target_ids) <= limit:
        return prompt_ids
    keep = limit - len(target_ids)
    if keep < 1:
        raise ValueError(f"target of {len(target_ids)} tokens does not fit in the model's context of {limit} tokens")
    return prompt_ids[-keep:]


def _right_padded(seqs: Sequence[Sequence[int]], tok, device: torch.device) -> tuple:
    batch = pad_batch(seqs, tok, device, padding_side="right")
    return batch.input_ids, batch.attention_mask


@contextlib.contextmanager
def _head_at(model: torch.nn.Module, positions: torch.Tensor) -> Iterator[bool]:
    """Make the output head see only ``positions`` (B, P) of its input, so the model's logits are
    (B, P, V) and the full-vocabulary product is paid at the scored positions only.

    Exact for any head: whatever the model does after the head (scaling, soft-capping) acts on each
    position alone. Yields False (and changes nothing) when the model has no output-embedding module.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield False
        return

    def pre_hook(module, args):
        hidden = args[0]
        index = positions.to(hidden.device)[:, :, None].expand(-1, -1, hidden.shape[-1])
        return (hidden.gather(1, index),) + tuple(args[1:])

    handle = head.register_forward_pre_hook(pre_hook)
    try:
        yield True
    finally:
        handle.remove()


@torch.no_grad()
def score_targets(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    batch_size: int = 16,
    device: Optional[torch.device] = None,
) -> list:
    """Teacher-forced scores of ``targets[i]`` after ``prompts[i]``.

    A pair longer than the model's context keeps the end of its prompt.

    Args:
        prompts, targets: equal-length sequences of strings.
        batch_size: sequences per forward pass.

    Returns:
        list of :class:`TargetScore`, one per pair. Log-probabilities are computed in float64
        from the model's logits.
    """
    if len(prompts) != len(targets):
        raise ValueError(f"got {len(prompts)} prompts but {len(targets)} targets; expected one target per prompt")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive int")
    device = device or model_device(model)
    limit = context_limit(model)
    pairs = [encode_pair(tok, p, t) for p, t in zip(prompts, targets)]
    pairs = [(_fit(p, t, limit), t) for p, t in pairs]
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start: start + batch_size]
        seqs = [p + t for p, t in chunk]
        ids, mask = _right_padded(seqs, tok, device)
        width = max(len(t) for _, t in chunk)
        # the positions that predict each target token, padded by repeating the last one
        at = torch.tensor(
            [[len(p) - 1 + min(j, len(t) - 1) for j in range(width)] for p, t in chunk], device=device
        )
        with _head_at(model, at) as gathered:
            logits = model(input_ids=ids, attention_mask=mask).logits
        if not gathered:  # no output-embedding module to hook: full logits, then the same positions
            logits = logits.gather(1, at.to(logits.device)[:, :, None].expand(-1, -1, logits.shape[-1]))
        logprobs = torch.log_softmax(logits.double(), dim=-1)  # (B, width, V)
        for row, (p_ids, t_ids) in enumerate(chunk):
            target = torch.tensor(t_ids, device=logprobs.device)
            lp = logprobs[row, : len(t_ids)]
            out.append(
                TargetScore(
                    sum_logprob=float(lp.gather(1, target[:, None]).sum()),
                    n_tokens=len(t_ids),
                    argmax=tuple(int(x) for x in lp.argmax(-1)),
                    target_ids=tuple(t_ids),
                )
            )
    return out


@torch.no_grad()
def next_token_logprobs(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    token_ids: Sequence[int],
    *,
    batch_size: int = 16,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """log p(token | prompt) for each prompt and each of ``token_ids``: a float64 tensor (n_prompts, n_tokens)."""
    device = device or model_device(model)
    limit = context_limit(model)
    seqs = [_fit(list(tok(p)["input_ids"]), [], limit) for p in prompts]
    rows = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start: start + batch_size]
        ids, mask = _right_padded(chunk, tok, device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(s) - 1 for s in chunk], device=logits.device)  # the head's device
        lp = torch.log_softmax(logits[torch.arange(len(chunk), device=logits.device), last].double(), dim=-1)
        rows.append(lp[:, list(token_ids)].cpu())
    return torch.cat(rows) if rows else torch.empty((0, len(token_ids)), dtype=torch.float64)


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    tok,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 30,
    batch_size: int = 8,
    device: Optional[torch.device] = None,
) -> list:
    """Greedy continuations (text after the prompt) of each prompt, left-padded batches."""
    device = device or model_device(model)
    fill = pad_id(tok)
    limit = context_limit(model)
    texts = []
    for start in range(0, len(prompts), batch_size):
        seqs = [_fit(list(tok(p)["input_ids"]), [0] * max_new_tokens, limit) for p in prompts[start: start + batch_size]]
        batch = pad_batch(seqs, tok, device, padding_side="left")
        width = batch.input_ids.shape[1]
        gen = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=fill,
        )
        for row in gen[:, width:]:
            texts.append(tok.decode(row.tolist(), skip_special_tokens=True))
    return texts


# ----------------------------------------------------------------------------- EasyEdit's token metrics
def predicted_target_tokens(model: torch.nn.Module, tok, prompt: str, target: str, device=None) -> Tuple[List[int], List[int]]:
    """(argmax predictions, target tokens) at the target positions of one pair, teacher forced.

    One sequence, no padding; the same tokens as `score_targets` (`encode_pair`).
    """
    if not isinstance(prompt, str) or not isinstance(target, str):
        raise TypeError(f"prompt and target must be str, got {type(prompt).__name__} and {type(target).__name__}")
    (score,) = score_targets(model, tok, [prompt], [target], batch_size=1, device=device)
    return list(score.argmax), list(score.target_ids)


def target_token_accuracy(model: torch.nn.Module, tok, prompt: str, target: str, device=None) -> float:
    """Share of the target's tokens that the model predicts after ``prompt`` (EasyEdit's ``rewrite_acc``)."""
    (score,) = score_targets(model, tok, [prompt], [target], batch_size=1, device=device)
    return score.token_accuracy


def token_agreement(before: Sequence[int], after: Sequence[int]) -> float:
    """Share of positions where two predicted token lists agree (locality, post vs pre)."""
    if len(before) != len(after):
        raise ValueError(f"token lists differ in length ({len(before)} vs {len(after)}): score the same prompt/answer")
    if not before:
        raise ValueError("token lists are empty: nothing to compare")
    return sum(int(a == b) for a, b in zip(before, after)) / len(before)
