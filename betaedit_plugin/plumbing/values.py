"""Target values z*: the residual-stream vector at the fact token that makes the model say target_new.

``compute_z`` runs the MEMIT / AlphaEdit value optimisation: a vector ``delta``
is added to the output of block ``layer`` (the last edited layer) at the fact
token of every rewriting prompt (context template + prompt + target tokens
teacher-forced) and of a KL prompt ("{subject} is a"), and Adam minimises

    loss = mean_prompts NLL(target_new)                      (averaged over target tokens)
         + kl_factor * KL(p_0 || p_delta) on the KL prompt's last token
         + v_weight_decay * ||delta|| / ||z_0||^2

with ``||delta||`` clamped to ``clamp_norm_factor * ||z_0||`` after each step, and an
early stop once the NLL is below ``v_early_stop_loss``. It returns ``z* = z_0 + delta``.

Faster than the reference loop, with the same result: the frozen part is run
once per edit. The prompts are padded so that every fact token sits in one
column c. Nothing before column c depends on delta, so one pass over columns
< c fills a key/value cache, and a second pass over columns >= c records the
output of block ``layer`` and the exact arguments every later block receives
(attention masks, rotary embeddings, position ids, the cache: whatever the
architecture passes), then stops. Each optimisation step only calls blocks
``layer+1 .. loss_layer`` on columns >= c with those arguments (the cache is
reset to columns < c after each call), applies the final norm and the output
head only at the positions the loss reads (the target tokens and the KL token),
and takes the gradient with respect
to ``delta`` alone (no weight gradients). Before the first step the cached path is
checked against a plain forward pass; if it differs (or the model's cache has no
per-layer keys/values) a whole-sequence variant of the same scheme is used.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..requests import EditRequest
from .hooks import StopForward, Trace, first_tensor
from .keys import check_context_templates, check_requests
from .layout import ModelLayout
from .tokens import PaddedBatch, build_prompt, encode, fact_token_index, model_device, pad_aligned, pad_batch

logger = logging.getLogger(__name__)

KL_TEMPLATE = "{} is a"


@dataclass
class ValueProblem:
    """The token-level setup of one edit's value optimisation.

    Attributes:
        batch: padded rewriting prompts (first ``n_rewrite`` rows) then the KL prompt rows.
        fact_rows / fact_cols: (B,) padded positions where delta is added (one per row).
        target_rows / target_cols / target_ids: (N_t,) positions whose next-token
            prediction is scored, and the token expected there.
        target_prompt: (N_t,) index of the rewriting prompt each target token belongs to.
        kl_rows / kl_cols: (n_kl,) positions of the KL distribution.
        n_rewrite: number of rewriting prompts; n_target: tokens in target_new.
    """

    batch: PaddedBatch
    fact_rows: torch.Tensor
    fact_cols: torch.Tensor
    target_rows: torch.Tensor
    target_cols: torch.Tensor
    target_ids: torch.Tensor
    target_prompt: torch.Tensor
    kl_rows: torch.Tensor
    kl_cols: torch.Tensor
    n_rewrite: int
    n_target: int


@dataclass
class ZResult:
    """What ``optimise_value`` found: z* (d_v,), the initial value z_0, delta and the loss history."""

    z: torch.Tensor
    z_init: torch.Tensor
    delta: torch.Tensor
    nll: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    steps: int = 0


def target_token_ids(tok, target: str) -> list[int]:
    """Token ids of ``target`` as a continuation (a leading space is added when missing)."""
    text = target if target.startswith(" ") else " " + target
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError(f"target_new={target!r} tokenizes to no tokens; give a non-empty target")
    return ids


def resolve_loss_layer(hparams, layout: ModelLayout, layer: int) -> int:
    loss_layer = hparams.v_loss_layer if hparams.v_loss_layer != -1 else layout.n_layers - 1
    layout.check_layer(loss_layer)
    if loss_layer < layer:
        raise ValueError(
            f"v_loss_layer={hparams.v_loss_layer}: must be at or after the edited layer {layer}; "
            "use -1 for the model's last layer"
        )
    return loss_layer


def build_value_problem(
    tok, request: EditRequest, fact_token: str, context_templates: list[list[str]], device: torch.device
) -> ValueProblem:
    """Tokenise rewriting prompts (every context template) and the KL prompt of one request."""
    target = target_token_ids(tok, request.target_new)
    seqs, fact_idx, t_rows, t_idx, t_prompt = [], [], [], [], []
    for ctx in (c for group in context_templates for c in group):
        prompt = build_prompt(request, ctx)
        ids = encode(tok, prompt)
        row = len(seqs)
        fact_idx.append(fact_token_index(tok, prompt, fact_token, len(ids)))
        seqs.append(ids + target[:-1])
        for j in range(len(target)):
            t_rows.append(row)
            t_idx.append(len(ids) - 1 + j)
            t_prompt.append(row)
    n_rewrite = len(seqs)
    kl_prompt = build_prompt(request, "{}", template=KL_TEMPLATE)
    kl_ids = encode(tok, kl_prompt)
    fact_idx.append(fact_token_index(tok, kl_prompt, fact_token, len(kl_ids)))
    seqs.append(kl_ids)
    batch = pad_aligned(seqs, fact_idx, tok, device)  # every fact token in one column
    cols = [batch.padded_index(r, i) for r, i in enumerate(fact_idx)]
    long = dict(dtype=torch.long, device=device)
    return ValueProblem(
        batch=batch,
        fact_rows=torch.arange(len(seqs), **long),
        fact_cols=torch.tensor(cols, **long),
        target_rows=torch.tensor(t_rows, **long),
        target_cols=torch.tensor([batch.padded_index(r, i) for r, i in zip(t_rows, t_idx)], **long),
        target_ids=torch.tensor(target * n_rewrite, **long),
        target_prompt=torch.tensor(t_prompt, **long),
        kl_rows=torch.tensor([n_rewrite], **long),
        kl_cols=torch.tensor([batch.padded_index(n_rewrite, -1)], **long),
        n_rewrite=n_rewrite,
        n_target=len(target),
    )


@dataclass
class FrozenPrefix:
    """What the frozen part of the model leaves for the optimisation steps.

    Attributes:
        hidden: output of block ``layer`` at columns ``start ..`` of the batch, (B, T - start, d).
        start: first column that the steps recompute (0: the whole sequence).
        calls: ``[(block, args after hidden, kwargs, hidden passed as kwarg)]`` for blocks
            ``layer+1 .. loss_layer``, as the model called them.
        restore: resets the key/value cache of the columns before ``start`` after a step
            (None when no cache is used).
    """

    hidden: torch.Tensor
    start: int
    calls: list
    restore: Optional[Callable[[], None]] = None


def _record_block_calls(model, layout, model_kwargs: dict, layer: int, loss_layer: int) -> tuple[torch.Tensor, list]:
    """Forward pass recording block ``layer``'s output and the calls of blocks ``layer+1 .. loss_layer``."""
    calls: list = []
    handles = []

    def make_pre_hook(block: nn.Module, is_last: bool):
        def pre_hook(module, args, kwargs):
            if args:
                calls.append((block, tuple(args[1:]), dict(kwargs), False))
            else:
                calls.append((block, (), {k: v for k, v in kwargs.items() if k != "hidden_states"}, True))
            if is_last:
                raise StopForward(layout.layer_name(loss_layer))
            return None

        return pre_hook

    try:
        for b in range(layer + 1, loss_layer + 1):
            block = layout.layer_module(model, b)
            handles.append(block.register_forward_pre_hook(make_pre_hook(block, b == loss_layer), with_kwargs=True))
        with Trace(model, layout.layer_name(layer), retain_output=True, stop=loss_layer == layer) as tr:
            try:
                model(**model_kwargs)
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return first_tensor(tr.output).detach(), calls


@torch.no_grad()
def run_frozen_prefix(model: nn.Module, layout: ModelLayout, batch: PaddedBatch, layer: int, loss_layer: int) -> FrozenPrefix:
    """Whole-sequence variant: one forward pass records block ``layer``'s output and later blocks' calls."""
    hidden, calls = _record_block_calls(model, layout, batch.model_kwargs(), layer, loss_layer)
    return FrozenPrefix(hidden=hidden, start=0, calls=calls)


def _new_cache(model: nn.Module):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers
        return DynamicCache()


@torch.no_grad()
def run_frozen_prefix_cached(
    model: nn.Module, layout: ModelLayout, batch: PaddedBatch, layer: int, loss_layer: int, start: int
) -> FrozenPrefix:
    """Column-cut variant: the columns before ``start`` (all before every fact token) never change,
    so their keys/values are cached once and the steps recompute columns ``start ..`` only.

    Raises:
        RuntimeError: the model's cache does not expose per-layer keys/values.
    """
    cache = _new_cache(model)
    with Trace(model, layout.layer_name(loss_layer), retain_output=False, stop=True):
        model(
            input_ids=batch.input_ids[:, :start], attention_mask=batch.attention_mask[:, :start],
            position_ids=batch.position_ids[:, :start], past_key_values=cache, use_cache=True,
        )
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(l, "keys") and hasattr(l, "values") for l in layers):
        raise RuntimeError(f"{type(cache).__name__} exposes no per-layer keys/values")
    saved = [(l.keys, l.values) for l in layers]

    def restore() -> None:
        for l, (k, v) in zip(layers, saved):
            l.keys, l.values = k, v

    try:
        hidden, calls = _record_block_calls(
            model, layout,
            dict(
                input_ids=batch.input_ids[:, start:], attention_mask=batch.attention_mask,
                position_ids=batch.position_ids[:, start:], past_key_values=cache, use_cache=True,
            ),
            layer, loss_layer,
        )
    finally:
        restore()
    return FrozenPrefix(hidden=hidden, start=start, calls=calls, restore=restore)


def run_suffix(prefix: FrozenPrefix, hidden: torch.Tensor) -> torch.Tensor:
    """Blocks ``layer+1 .. loss_layer`` on ``hidden`` (B, T - start, d) with the recorded arguments."""
    try:
        for block, args, kwargs, as_kwarg in prefix.calls:
            out = block(hidden_states=hidden, **kwargs) if as_kwarg else block(hidden, *args, **kwargs)
            hidden = first_tensor(out)
    finally:
        if prefix.restore is not None:
            prefix.restore()
    return hidden


@torch.no_grad()
def _reference_hidden(model, layout, batch: PaddedBatch, loss_layer: int, rows, cols) -> torch.Tensor:
    """Output of block ``loss_layer`` at (rows, cols) from a plain forward pass."""
    with Trace(model, layout.layer_name(loss_layer), retain_output=True, stop=True) as tr:
        model(**batch.model_kwargs())
    return first_tensor(tr.output)[rows, cols]


def prepare_frozen_prefix(
    model: nn.Module, layout: ModelLayout, problem: "ValueProblem", layer: int, loss_layer: int, rows, cols
) -> FrozenPrefix:
    """The cached column-cut prefix when it reproduces a plain forward pass, else the whole-sequence one."""
    start = int(problem.fact_cols.min())
    if start > 0 and loss_layer > layer:
        try:
            prefix = run_frozen_prefix_cached(model, layout, problem.batch, layer, loss_layer, start)
            with torch.no_grad():
                got = run_suffix(prefix, prefix.hidden)[rows, cols - start]
            ref = _reference_hidden(model, layout, problem.batch, loss_layer, rows, cols)
            if torch.allclose(got, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max())):
                return prefix
            logger.warning(
                "compute_z: the cached prefix does not reproduce the forward pass (max diff %.3g); "
                "using the whole-sequence path", float((got - ref).abs().max()),
            )
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError) as exc:
            logger.warning("compute_z: cached prefix unavailable (%s); using the whole-sequence path", exc)
    return run_frozen_prefix(model, layout, problem.batch, layer, loss_layer)


def _losses(
    logits_t: torch.Tensor, logits_kl: torch.Tensor, problem: ValueProblem, kl_init: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(nll averaged over prompts, KL(init || now) batch-mean, kl log-probs now)."""
    logp = torch.log_softmax(logits_t.float(), dim=-1).gather(1, problem.target_ids[:, None]).squeeze(1)
    per_prompt = torch.zeros(problem.n_rewrite, device=logp.device, dtype=logp.dtype).index_add(
        0, problem.target_prompt, -logp
    ) / problem.n_target
    nll = per_prompt.mean()
    kl_logp = torch.log_softmax(logits_kl.float(), dim=-1)
    if kl_init is None:
        kl = torch.zeros((), device=logp.device)
    else:
        kl = F.kl_div(kl_logp, kl_init, log_target=True, reduction="batchmean")
    return nll, kl, kl_logp


def optimise_value(
    model: nn.Module,
    tok,
    request: EditRequest,
    hparams,
    layout: ModelLayout,
    layer: int,
    context_templates: list[list[str]],
) -> ZResult:
    """``compute_z`` with its loss history (see the module docstring)."""
    layout.check_layer(layer)
    loss_layer = resolve_loss_layer(hparams, layout, layer)
    request = check_requests([request])[0]
    groups = check_context_templates(context_templates)
    if model.training:
        warnings.warn("compute_z: the model is in training mode (dropout active); call model.eval()", stacklevel=3)
    device = model_device(model)
    problem = build_value_problem(tok, request, hparams.fact_token, groups, device)
    rows = torch.cat([problem.target_rows, problem.kl_rows])
    cols = torch.cat([problem.target_cols, problem.kl_cols])
    prefix = prepare_frozen_prefix(model, layout, problem, layer, loss_layer, rows, cols)
    h0 = prefix.hidden
    fact_cols = problem.fact_cols - prefix.start
    cols = cols - prefix.start
    z_init = h0[problem.fact_rows[0], fact_cols[0]].clone()
    ln_f, head = layout.ln_f(model), layout.lm_head(model)
    delta = torch.zeros_like(z_init, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hparams.v_lr)
    max_norm = hparams.clamp_norm_factor * z_init.norm()
    base_at_fact = h0[problem.fact_rows, fact_cols]
    result = ZResult(z=z_init, z_init=z_init, delta=delta.detach())
    kl_init = None
    for step in range(hparams.v_num_grad_steps):
        with torch.enable_grad():
            hidden = h0.index_put((problem.fact_rows, fact_cols), base_at_fact + delta)
            hidden = run_suffix(prefix, hidden)
            logits = head(ln_f(hidden[rows, cols]))
            n_t = problem.target_rows.numel()
            nll, kl, kl_logp = _losses(logits[:n_t], logits[n_t:], problem, kl_init)
            if kl_init is None:
                kl_init = kl_logp.detach()
            decay = hparams.v_weight_decay * (delta.norm() / z_init.norm() ** 2)
            loss = nll + hparams.kl_factor * kl + decay
        nll_value, loss_value = float(nll.detach()), float(loss.detach())
        result.nll.append(nll_value)
        result.loss.append(loss_value)
        result.steps = step + 1
        logger.debug("compute_z step %d: loss %.4f (nll %.4f)", step, loss_value, nll_value)
        if nll_value < hparams.v_early_stop_loss or step == hparams.v_num_grad_steps - 1:
            break
        (grad,) = torch.autograd.grad(loss, [delta])
        delta.grad = grad
        opt.step()
        with torch.no_grad():
            norm = delta.norm()
            if norm > max_norm:
                delta.mul_(max_norm / norm)
    delta = delta.detach()
    result.delta = delta
    result.z = z_init + delta
    logger.info(
        "compute_z: %d steps, nll %.3f -> %.3f, |delta|/|z0| = %.3f",
        result.steps, result.nll[0], result.nll[-1], float(delta.norm() / z_init.norm()),
    )
    return result


def compute_z(
    model: nn.Module,
    tok,
    request: EditRequest,
    hparams,
    layout: ModelLayout,
    layer: int,
    context_templates: list[list[str]],
) -> torch.Tensor:
    """z* (d_v,): target output of block ``layer`` at the fact token of ``request``.

    ``context_templates[0][0]`` should be ``"{}"`` (the bare prompt): z_0 is read there.
    The model is not changed.

    Raises:
        ValueError: layer / v_loss_layer out of range, target that tokenizes to
            nothing, subject not found; raised before any forward pass.
    """
    return optimise_value(model, tok, request, hparams, layout, layer, context_templates).z


@torch.no_grad()
def compute_current_z(
    model: nn.Module, tok, requests: Sequence[EditRequest], hparams, layout: ModelLayout, layer: int
) -> torch.Tensor:
    """Output of block ``layer`` at the fact token of each plain prompt: (d_v, n)."""
    layout.check_layer(layer)
    requests = check_requests(requests)
    prompts = [build_prompt(r) for r in requests]
    seqs = [encode(tok, p) for p in prompts]
    idx = [fact_token_index(tok, p, hparams.fact_token, len(s)) for p, s in zip(prompts, seqs)]
    batch = pad_batch(seqs, tok, model_device(model))
    with Trace(model, layout.layer_name(layer), retain_output=True, stop=True) as tr:
        model(**batch.model_kwargs())
    hidden = first_tensor(tr.output)
    cols = torch.tensor([batch.padded_index(r, i) for r, i in enumerate(idx)], device=hidden.device)
    return hidden[torch.arange(len(seqs), device=hidden.device), cols].t().contiguous()
