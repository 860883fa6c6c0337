"""Keys: the input of the rewrite module (MLP output projection) at the fact token.

For each request the key is averaged over context templates the way MEMIT
does it: first the mean within each template group, then the mean of the
group means.

``compute_ks`` runs the model from the embeddings for one layer. ``KeySweep`` serves
the editor's layer loop (keys of layer l after layers < l were written) at a fraction
of the cost: the prompts are cut after their fact token (the model is causal, so later
tokens cannot change the key), the blocks below the first edited layer run once per
step, and each edited block then runs on the stored input of its layer: once for its
keys and once more, after its weights were written, to give the next layer its input.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch

from .requests import EditRequest, as_requests, check_context_templates
from .models.hooks import BlockRecorder, Trace, first_tensor
from .models.layout import ModelLayout
from .models.tokens import build_prompt, encode, fact_token_index, model_device, pad_batch

logger = logging.getLogger(__name__)

KEY_BATCH_SIZE = 32


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
        at = tr.input.device  # the rewrite module's device (a split model's layers differ)
        cols = torch.tensor([batch.padded_index(r, i) for r, i in enumerate(idx)], device=at)
        out.append(tr.input[torch.arange(len(chunk), device=at), cols])
    return torch.cat(out, 0)


def _template_rows(tok, requests, groups, fact_token: str, cut: bool) -> tuple[list, list]:
    """Token ids of every (request, template) prompt (``cut``: through its fact token) and that token's index."""
    seqs, indices = [], []
    for r in requests:
        for group in groups:
            for ctx in group:
                prompt = build_prompt(r, ctx)
                ids = encode(tok, prompt)
                idx = fact_token_index(tok, prompt, fact_token, len(ids))
                seqs.append(ids[: idx + 1] if cut else ids)
                indices.append(idx)
    return seqs, indices


def _template_mean(rows: torch.Tensor, n_requests: int, groups: list) -> torch.Tensor:
    """(n * n_ctx, d_k) rows -> (d_k, n): mean within each template group, then over groups."""
    sizes = [len(g) for g in groups]
    per_request = rows.reshape(n_requests, sum(sizes), -1)
    group_means = torch.stack([part.mean(1) for part in per_request.split(sizes, dim=1)], 0)  # (groups, n, d_k)
    return group_means.mean(0).t().contiguous()


class KeySweep:
    """Keys of every edited layer for one editing step, layer after layer.

    Usage (the editor's loop)::

        sweep = KeySweep(model, tok, requests, hparams, layout, layers, templates)
        for l in layers:
            K = sweep.keys(l)          # == compute_ks(..., l, ...) on the current weights
            ...write Delta into layer l...
            sweep.advance(l)           # the next layer's input, with layer l's new weights

    Construction runs the model once up to the last edited block, recording the input of the
    first edited block and the arguments every edited block receives (masks, rotary
    embeddings, ...), so the blocks are later called exactly as the model calls them.
    """

    def __init__(self, model, tok, requests, hparams, layout: ModelLayout, layers: Sequence[int], context_templates):
        self.layers = [layout.check_layer(l) for l in layers]
        self.requests = as_requests(requests, allow_dicts=False)
        self.groups = check_context_templates(context_templates)
        self.model, self.layout = model, layout
        seqs, indices = _template_rows(tok, self.requests, self.groups, hparams.fact_token, cut=True)
        batch = pad_batch(seqs, tok, model_device(model))
        device = batch.input_ids.device
        self._at = (
            torch.arange(len(seqs), device=device),
            torch.tensor([batch.padded_index(r, i) for r, i in enumerate(indices)], device=device),
        )
        self._calls: dict = {}
        self._next = 0  # position in self.layers of the next keys() call
        self._hidden, self._first_keys = self._record(batch)

    @torch.no_grad()
    def _record(self, batch) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        first, last = self.layers[0], self.layers[-1]
        blocks = {b: self.layout.layer_module(self.model, b) for b in range(first, last + 1)}
        with BlockRecorder(blocks, stop=last) as rec, \
                Trace(self.model, self.layout.rewrite_name(first), retain_input=True, retain_output=False) as tr:
            self.model(**batch.model_kwargs())
        self._calls = rec.calls
        if tr.input is None:  # first == last: the pre-hook stopped the pass before the block ran
            return rec.calls[first].hidden, None
        return rec.calls[first].hidden, self._pick(tr.input)

    def _pick(self, t: torch.Tensor) -> torch.Tensor:
        """The fact-token rows of ``t`` (B, T, d), indexed on ``t``'s device (each layer's own on a split model)."""
        rows, cols = self._at
        return t[rows.to(t.device), cols.to(t.device)]

    @torch.no_grad()
    def _run_block(self, layer: int, capture_keys: bool):
        block = self.layout.layer_module(self.model, layer)
        with Trace(self.model, self.layout.rewrite_name(layer), retain_input=capture_keys, retain_output=False) as tr:
            out = self._calls[layer](block, self._hidden)
        return first_tensor(out), (self._pick(tr.input) if capture_keys else None)

    def keys(self, layer: int) -> torch.Tensor:
        """Keys (d_k, n) of ``layer`` on the model's current weights (layers in ascending order)."""
        if self._next >= len(self.layers) or self.layers[self._next] != layer:
            expected = self.layers[self._next] if self._next < len(self.layers) else None
            raise RuntimeError(f"KeySweep.keys({layer}): layers go in order {self.layers}; expected {expected}")
        if self._next == 0 and self._first_keys is not None:
            rows = self._first_keys
        else:
            _, rows = self._run_block(layer, capture_keys=True)
        self._next += 1
        return _template_mean(rows, len(self.requests), self.groups)

    def advance(self, layer: int) -> None:
        """Run block ``layer`` (now written) to give the next edited layer its input."""
        if self._next == 0 or self.layers[self._next - 1] != layer:
            raise RuntimeError(f"KeySweep.advance({layer}): call keys({layer}) first")
        if self._next >= len(self.layers):
            return  # the last edited layer: nothing reads its output here
        for b in range(layer, self.layers[self._next]):  # blocks between edited layers too
            self._hidden, _ = self._run_block(b, capture_keys=False)


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
    requests = as_requests(requests, allow_dicts=False)
    groups = check_context_templates(context_templates)
    seqs, indices = _template_rows(tok, requests, groups, hparams.fact_token, cut=False)
    rows = rewrite_inputs_at(model, tok, layout, layer, seqs, indices)  # (n * n_ctx, d_k)
    return _template_mean(rows, len(requests), groups)
