"""Keys: the input of the rewrite module (MLP output projection) at the fact token.

For each request the key is averaged over context templates the way MEMIT
does it: first the mean within each template group, then the mean of the
group means.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from ..requests import EditRequest
from .hooks import Trace
from .layout import ModelLayout
from .tokens import build_prompt, encode, fact_token_index, model_device, pad_batch

logger = logging.getLogger(__name__)

KEY_BATCH_SIZE = 32


def check_requests(requests: Sequence[EditRequest]) -> list[EditRequest]:
    """``requests`` as a non-empty list of EditRequest (TypeError / ValueError otherwise)."""
    if isinstance(requests, EditRequest):
        requests = [requests]
    requests = list(requests)
    if not requests:
        raise ValueError("requests=[]: expected at least one EditRequest")
    for i, r in enumerate(requests):
        if not isinstance(r, EditRequest):
            raise TypeError(
                f"requests[{i}] is a {type(r).__name__}: expected EditRequest "
                "(use EditRequest.from_easyedit(dict) for EasyEdit request dicts)"
            )
    return requests


def check_context_templates(context_templates) -> list[list[str]]:
    """Validate ``[[template, ...], ...]`` where every template holds "{}"."""
    if not isinstance(context_templates, (list, tuple)) or not context_templates:
        raise ValueError(
            f"context_templates={context_templates!r}: expected a non-empty list of groups, e.g. [['{{}}']]"
        )
    groups = []
    for g in context_templates:
        if not isinstance(g, (list, tuple)) or not g or not all(isinstance(t, str) and "{}" in t for t in g):
            raise ValueError(
                f"context_templates group {g!r}: expected a non-empty list of strings that each contain '{{}}'"
            )
        groups.append(list(g))
    return groups


@torch.no_grad()
def rewrite_inputs_at(
    model: torch.nn.Module, tok, layout: ModelLayout, layer: int, seqs: list[list[int]], indices: list[int]
) -> torch.Tensor:
    """Input of the rewrite module of ``layer`` at unpadded token ``indices[i]`` of ``seqs[i]``: (len(seqs), d_k)."""
    device = model_device(model)
    out = []
    for lo in range(0, len(seqs), KEY_BATCH_SIZE):
        chunk, idx = seqs[lo: lo + KEY_BATCH_SIZE], indices[lo: lo + KEY_BATCH_SIZE]
        batch = pad_batch(chunk, tok, device)
        with Trace(model, layout.rewrite_name(layer), retain_input=True, retain_output=False, stop=True) as tr:
            model(**batch.model_kwargs())
        cols = torch.tensor([batch.padded_index(r, i) for r, i in enumerate(idx)], device=device)
        out.append(tr.input[torch.arange(len(chunk), device=device), cols])
    return torch.cat(out, 0)


def compute_ks(
    model: torch.nn.Module,
    tok,
    requests: Sequence[EditRequest],
    hparams,
    layout: ModelLayout,
    layer: int,
    context_templates: list[list[str]],
) -> torch.Tensor:
    """Keys (d_k, n) of ``requests`` at ``layer``, at ``hparams.fact_token``, averaged over templates.

    Raises:
        ValueError: bad layer, empty requests, malformed templates, or a subject
            whose tokens cannot be found. Nothing is run before the checks pass.
    """
    layout.check_layer(layer)
    requests = check_requests(requests)
    groups = check_context_templates(context_templates)
    seqs, indices = [], []
    for r in requests:
        for group in groups:
            for ctx in group:
                prompt = build_prompt(r, ctx)
                ids = encode(tok, prompt)
                seqs.append(ids)
                indices.append(fact_token_index(tok, prompt, hparams.fact_token, len(ids)))
    rows = rewrite_inputs_at(model, tok, layout, layer, seqs, indices)  # (n * n_ctx, d_k)
    sizes = [len(g) for g in groups]
    per_request = rows.reshape(len(requests), sum(sizes), -1)
    group_means = torch.stack([part.mean(1) for part in per_request.split(sizes, dim=1)], 0)  # (groups, n, d_k)
    return group_means.mean(0).t().contiguous()
