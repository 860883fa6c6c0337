"""MEMIT-style context templates: short model-generated prefixes put before the prompt.

``generate_context_templates`` returns ``[["{}"], [g_1 + ". {}", ...], ...]``: the
first group is the bare prompt, each further group holds ``count`` texts of
``n_new`` sampled tokens, started from a few seed words. Sampling is top-k with
a private ``torch.Generator`` seeded by ``seed``, so the result is a pure
function of (model, tokenizer, length_params, seed). Callers cache it (the
editor keeps it per model); this module keeps no state.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from .kv_cache import cache_kwargs, returned_cache
from .tokens import model_device, pad_batch

logger = logging.getLogger(__name__)

SEED_WORDS = ("The", "Therefore", "Because", "I", "You")


def _check_length_params(length_params) -> list[tuple[int, int]]:
    out = []
    if not isinstance(length_params, (list, tuple)):
        raise ValueError(f"context_template_length_params={length_params!r}: expected [[n_new_tokens, count], ...]")
    for item in length_params:
        if (
            not isinstance(item, (list, tuple)) or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in item)
        ):
            raise ValueError(
                f"context_template_length_params={length_params!r}: entry {item!r} must be [n_new_tokens, count] "
                "with non-negative ints"
            )
        out.append((int(item[0]), int(item[1])))
    return out


@torch.no_grad()
def sample_continuations(
    model: torch.nn.Module, tok, starts: Sequence[str], n_new: int, generator: torch.Generator, top_k: int = 5
) -> list[str]:
    """Continue each text of ``starts`` by ``n_new`` top-k sampled tokens (KV cache); returns the full texts."""
    device = model_device(model)
    seqs = [list(tok(s)["input_ids"]) for s in starts]
    batch = pad_batch(seqs, tok, device, padding_side="left")
    mask, positions = batch.attention_mask, batch.position_ids
    out = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    for step in range(n_new):
        logits = out.logits[:, -1, :].float()
        top = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
        probs = torch.softmax(top.values, dim=-1).cpu()
        choice = torch.multinomial(probs, 1, generator=generator).flatten()
        picked = top.indices.cpu().gather(1, choice[:, None]).flatten()
        seqs = [s + [int(t)] for s, t in zip(seqs, picked)]
        if step == n_new - 1:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(
            input_ids=picked[:, None].to(device), attention_mask=mask, position_ids=positions,
            **cache_kwargs(model, returned_cache(out)),
        )
    return [tok.decode(seq, skip_special_tokens=True) for seq in seqs]


def generate_context_templates(model: torch.nn.Module, tok, length_params, seed: int = 0) -> list[list[str]]:
    """Context templates ``[["{}"], group_1, ...]``, one group per ``[n_new_tokens, count]``.

    Each group holds ``count`` templates ``"<generated text>. {}"``: ``max(1, count // 5)``
    samples per seed word (MEMIT's seed words), cut to ``count``. Braces in generated
    text are removed so ``"{}"`` stays the only placeholder. Groups with ``count == 0``
    are skipped; ``n_new_tokens == 0`` gives the bare seed words.
    """
    params = _check_length_params(length_params)
    generator = torch.Generator().manual_seed(int(seed))
    groups: list[list[str]] = [["{}"]]
    was_training = model.training
    model.eval()
    try:
        for n_new, count in params:
            if count == 0:
                continue
            per_seed = max(1, count // len(SEED_WORDS))
            starts = [w for w in SEED_WORDS for _ in range(per_seed)][:count]
            texts = sample_continuations(model, tok, starts, n_new, generator) if n_new > 0 else list(starts)
            groups.append([t.replace("{", " ").replace("}", " ").strip() + ". {}" for t in texts])
    finally:
        model.train(was_training)
    logger.debug("context templates: %s", groups)
    return groups
