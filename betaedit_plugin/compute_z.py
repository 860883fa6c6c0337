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
to ``delta`` alone (parameters are frozen meanwhile: no weight gradients). With
``check_prefix`` (the editor's first step) the cached path is first checked against a
plain forward pass; if it differs (or the model's cache has no per-layer keys/values)
a whole-sequence variant of the same scheme is used.

Several requests are optimised in one batch (`optimise_values`): their rows share the
passes, each has its own delta, loss, early stop and norm clamp, and each gets the z* it
gets alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from .requests import EditRequest, as_requests, check_context_templates, naming_request
from .models.hooks import BlockRecorder, Trace, first_tensor
from .models.kv_cache import cache_kwargs, new_cache
from .models.layout import ModelLayout
from .models.tokens import (
    PaddedBatch, build_prompt, encode, encode_pair, fact_token_index, model_device, pad_aligned, pad_batch,
)

logger = logging.getLogger(__name__)

KL_TEMPLATE = "{} is a"


@dataclass
class ValueProblem:
    """The token-level setup of the value optimisation of n >= 1 requests in one batch.

    Rows: the rewriting prompts of request 0 (one per context template, the bare
    prompt first), then those of request 1, ..., then one KL prompt per request.

    Attributes:
        batch: the padded rows, every fact token in one column.
        fact_rows / fact_cols: (B,) padded positions where a request's delta is added.
        row_request: (B,) index of the request each row belongs to.
        target_rows / target_cols / target_ids: (N_t,) positions whose next-token
            prediction is scored, and the token expected there.
        target_prompt: (N_t,) rewriting row each target token belongs to.
        target_len: (n_rewrite,) tokens of target_new in each rewriting row.
        kl_rows / kl_cols: (n,) position of each request's KL distribution.
        n_rewrite: rewriting rows in all; n_requests: n; per_request: rewriting rows per request.
    """

    batch: PaddedBatch
    fact_rows: torch.Tensor
    fact_cols: torch.Tensor
    row_request: torch.Tensor
    target_rows: torch.Tensor
    target_cols: torch.Tensor
    target_ids: torch.Tensor
    target_prompt: torch.Tensor
    target_len: torch.Tensor
    kl_rows: torch.Tensor
    kl_cols: torch.Tensor
    n_rewrite: int
    n_requests: int
    per_request: int

    def to(self, device: torch.device) -> "ValueProblem":
        """The index tensors on ``device`` (a split model's blocks and head sit on different devices)."""
        moved = {
            f: getattr(self, f).to(device)
            for f in ("fact_rows", "fact_cols", "row_request", "target_rows", "target_cols", "target_ids",
                      "target_prompt", "target_len", "kl_rows", "kl_cols")
        }
        return dataclasses.replace(self, **moved)

    def z_rows(self) -> torch.Tensor:
        """(n,) row of each request's bare prompt (context template "{}"), where z_0 is read."""
        return torch.arange(self.n_requests, device=self.fact_rows.device) * self.per_request


@dataclass
class ZResult:
    """What ``optimise_value`` found for one request: z* (d_v,), z_0, delta and the loss history."""

    z: torch.Tensor
    z_init: torch.Tensor
    delta: torch.Tensor
    nll: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    steps: int = 0


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
    tok, requests, fact_token: str, context_templates: list[list[str]], device: torch.device
) -> ValueProblem:
    """Tokenise the rewriting prompts (every context template) and the KL prompt of each request.

    ``requests``: one EditRequest or a list of them (one batch, see `ValueProblem`).
    """
    requests = [requests] if isinstance(requests, EditRequest) else list(requests)
    templates = [c for group in context_templates for c in group]
    seqs, fact_idx, row_request = [], [], []
    t_rows, t_idx, t_ids, t_len = [], [], [], []
    for q, request in enumerate(requests):
        with naming_request(q, request):
            for ctx in templates:
                prompt = build_prompt(request, ctx)
                ids, target = encode_pair(tok, prompt.text, request.target_new)  # what scoring reads
                row = len(seqs)
                fact_idx.append(fact_token_index(tok, prompt, fact_token, len(ids)))
                seqs.append(ids + target[:-1])
                row_request.append(q)
                t_len.append(len(target))
                for j, tid in enumerate(target):
                    t_rows.append(row)
                    t_idx.append(len(ids) - 1 + j)
                    t_ids.append(tid)
    n_rewrite = len(seqs)
    for q, request in enumerate(requests):
        with naming_request(q, request):
            kl_prompt = build_prompt(request, "{}", template=KL_TEMPLATE)
            kl_ids = encode(tok, kl_prompt)
            fact_idx.append(fact_token_index(tok, kl_prompt, fact_token, len(kl_ids)))
        seqs.append(kl_ids)
        row_request.append(q)
    batch = pad_aligned(seqs, fact_idx, tok, device)  # every fact token in one column
    cols = [batch.padded_index(r, i) for r, i in enumerate(fact_idx)]
    long = dict(dtype=torch.long, device=device)
    kl_rows = list(range(n_rewrite, len(seqs)))
    return ValueProblem(
        batch=batch,
        fact_rows=torch.arange(len(seqs), **long),
        fact_cols=torch.tensor(cols, **long),
        row_request=torch.tensor(row_request, **long),
        target_rows=torch.tensor(t_rows, **long),
        target_cols=torch.tensor([batch.padded_index(r, i) for r, i in zip(t_rows, t_idx)], **long),
        target_ids=torch.tensor(t_ids, **long),
        target_prompt=torch.tensor(t_rows, **long),
        target_len=torch.tensor(t_len, device=device, dtype=torch.float32),
        kl_rows=torch.tensor(kl_rows, **long),
        kl_cols=torch.tensor([batch.padded_index(r, -1) for r in kl_rows], **long),
        n_rewrite=n_rewrite,
        n_requests=len(requests),
        per_request=len(templates),
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
        cache_saved: ``[[layer, keys, values]]`` that ``restore`` puts back (the cached path only).
    """

    hidden: torch.Tensor
    start: int
    calls: list
    restore: Optional[Callable[[], None]] = None
    cache_saved: Optional[list] = None

    def keep_rows(self, keep: torch.Tensor) -> bool:
        """Drop every row but ``keep`` (indices) from the recorded calls and the cache, in place.

        Rows are independent sequences, so the kept rows compute what they computed before.
        Returns False (and changes nothing) where the recorded arguments are not understood:
        the whole-sequence path, or an argument that is neither per-row (2-D or more, first
        dimension B), broadcast (first dimension 1), per column (1-D), nor a plain value or the cache.
        """
        if self.cache_saved is None:
            return False
        n_rows = self.hidden.shape[0]

        def cut(value):
            if isinstance(value, torch.Tensor):
                # 0-/1-D: a scalar or per column (transformers 4.x passes cache_position (T,)),
                # never per row; cutting it by rows would be wrong whenever T == B
                if value.ndim < 2 or value.shape[0] == 1:
                    return value
                if value.shape[0] != n_rows:
                    raise LookupError(tuple(value.shape))
                return value.index_select(0, keep.to(value.device))
            if isinstance(value, (tuple, list)):
                return type(value)(cut(v) for v in value)
            if value is None or isinstance(value, (bool, int, float, str)) or hasattr(value, "layers"):
                return value  # the cache: its rows are cut through cache_saved below
            raise LookupError(type(value).__name__)

        try:
            calls = [(block, cut(args), {k: cut(v) for k, v in kwargs.items()}, as_kwarg)
                     for block, args, kwargs, as_kwarg in self.calls]
        except LookupError:
            return False
        self.calls = calls
        for entry in self.cache_saved:
            entry[1] = entry[1].index_select(0, keep.to(entry[1].device))
            entry[2] = entry[2].index_select(0, keep.to(entry[2].device))
        self.hidden = self.hidden.index_select(0, keep.to(self.hidden.device))
        self.restore()
        return True


class PrefixCacheUnavailable(RuntimeError):
    """The model cannot run the column-cut prefix (no cache argument, or no per-layer keys/values)."""


def _record_block_calls(model, layout, model_kwargs: dict, layer: int, loss_layer: int) -> tuple[torch.Tensor, list]:
    """Forward pass recording block ``layer``'s output and the calls of blocks ``layer+1 .. loss_layer``."""
    blocks = {b: layout.layer_module(model, b) for b in range(layer + 1, loss_layer + 1)}
    with BlockRecorder(blocks, stop=loss_layer if blocks else None) as rec, \
            Trace(model, layout.layer_name(layer), retain_output=True, stop=not blocks) as tr:
        model(**model_kwargs)
    calls = [(blocks[b], c.args, c.kwargs, c.as_kwarg) for b, c in rec.calls.items()]
    return first_tensor(tr.output).detach(), calls


@torch.no_grad()
def run_frozen_prefix(model: nn.Module, layout: ModelLayout, batch: PaddedBatch, layer: int, loss_layer: int) -> FrozenPrefix:
    """Whole-sequence variant: one forward pass records block ``layer``'s output and later blocks' calls."""
    hidden, calls = _record_block_calls(model, layout, batch.model_kwargs(), layer, loss_layer)
    return FrozenPrefix(hidden=hidden, start=0, calls=calls)


@torch.no_grad()
def run_frozen_prefix_cached(
    model: nn.Module, layout: ModelLayout, batch: PaddedBatch, layer: int, loss_layer: int, start: int
) -> FrozenPrefix:
    """Column-cut variant: the columns before ``start`` (all before every fact token) never change,
    so their keys/values are cached once and the steps recompute columns ``start ..`` only.

    Raises:
        PrefixCacheUnavailable: the model takes no cache, or its cache has no per-layer keys/values.
    """
    cache = new_cache(model)
    try:
        cache_arg = cache_kwargs(model, cache)
    except TypeError as exc:
        raise PrefixCacheUnavailable(str(exc)) from None
    with Trace(model, layout.layer_name(loss_layer), retain_output=False, stop=True):
        model(
            input_ids=batch.input_ids[:, :start], attention_mask=batch.attention_mask[:, :start],
            position_ids=batch.position_ids[:, :start], **cache_arg,
        )
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(l, "keys") and hasattr(l, "values") for l in layers):
        raise PrefixCacheUnavailable(f"{type(cache).__name__} exposes no per-layer keys/values")
    saved = [[l, l.keys, l.values] for l in layers]

    def restore() -> None:
        for l, k, v in saved:
            l.keys, l.values = k, v

    try:
        hidden, calls = _record_block_calls(
            model, layout,
            dict(
                input_ids=batch.input_ids[:, start:], attention_mask=batch.attention_mask,
                position_ids=batch.position_ids[:, start:], **cache_kwargs(model, cache),
            ),
            layer, loss_layer,
        )
    finally:
        restore()
    return FrozenPrefix(hidden=hidden, start=start, calls=calls, restore=restore, cache_saved=saved)


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
    hidden = first_tensor(tr.output)
    return hidden[rows.to(hidden.device), cols.to(hidden.device)]


def prepare_frozen_prefix(
    model: nn.Module, layout: ModelLayout, problem: "ValueProblem", layer: int, loss_layer: int, rows, cols,
    check: bool = True,
) -> FrozenPrefix:
    """The cached column-cut prefix, else the whole-sequence one.

    ``check``: first compare the cached path with a plain forward pass (one extra full pass)
    and fall back to the whole-sequence path if they differ. The editor checks at its first
    step only: whether the cache reproduces the model is a property of the architecture.
    """
    start = int(problem.fact_cols.min())
    if start > 0 and loss_layer > layer:
        try:
            prefix = run_frozen_prefix_cached(model, layout, problem.batch, layer, loss_layer, start)
            if not check:
                return prefix
            with torch.no_grad():
                got = run_suffix(prefix, prefix.hidden)
                got = got[rows.to(got.device), (cols - start).to(got.device)]
            ref = _reference_hidden(model, layout, problem.batch, loss_layer, rows, cols)
            ref = ref.to(got.device)
            if torch.allclose(got, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max())):
                return prefix
            logger.warning(
                "compute_z: the cached prefix does not reproduce the forward pass (max diff %.3g); "
                "using the whole-sequence path", float((got - ref).abs().max()),
            )
        except PrefixCacheUnavailable as exc:
            logger.warning("compute_z: cached prefix unavailable (%s); using the whole-sequence path", exc)
    return run_frozen_prefix(model, layout, problem.batch, layer, loss_layer)


def _losses(
    logits_t: torch.Tensor, logits_kl: torch.Tensor, problem: ValueProblem, kl_init: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per request: (NLL of target_new averaged over its prompts, KL(init || now)), both (n,), and
    the KL log-probabilities now (n, V)."""
    problem = problem.to(logits_t.device)  # the output head's device
    logp = torch.log_softmax(logits_t.float(), dim=-1).gather(1, problem.target_ids[:, None]).squeeze(1)
    per_prompt = torch.zeros(problem.n_rewrite, device=logp.device, dtype=logp.dtype).index_add(
        0, problem.target_prompt, -logp
    ) / problem.target_len
    nll = per_prompt.view(problem.n_requests, problem.per_request).mean(1)
    kl_logp = torch.log_softmax(logits_kl.float(), dim=-1)
    if kl_init is None:
        kl = torch.zeros(problem.n_requests, device=logp.device)
    else:  # KL(p_0 || p) of each request's KL prompt (one row each)
        kl = (kl_init.exp() * (kl_init - kl_logp)).sum(-1)
    return nll, kl, kl_logp


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """``requires_grad=False`` on every parameter (gradients w.r.t. delta only), restored afterwards."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        # by name: accelerate's offload hooks swap the parameter objects during a forward pass
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, p.requires_grad))


class _Rows:
    """The rows of a value batch that are still computed, and where the loss reads them.

    Starts with every row. `drop` removes the rows of requests that stopped (their deltas are
    frozen, so computing them changes nothing) from these indices and from the frozen prefix;
    `logits` puts the logits of the remaining loss positions back at their places in the full
    list (zeros for stopped requests, whose losses are no longer read).
    """

    def __init__(self, fact_cols, request, base, loss_rows, loss_cols) -> None:
        self.fact_cols, self.request, self.base = fact_cols, request, base  # one entry per row
        self.loss_rows, self.loss_cols = loss_rows.to(request.device), loss_cols.to(request.device)
        self.loss_index: Optional[torch.Tensor] = None  # positions in the full loss list; None: all

    @property
    def fact_rows(self) -> torch.Tensor:
        """Every row has one fact position: row i's is column ``fact_cols[i]``."""
        return torch.arange(self.request.numel(), device=self.request.device)

    def logits(self, picked: torch.Tensor, n_loss: int) -> torch.Tensor:
        if self.loss_index is None:
            return picked
        index = self.loss_index.to(picked.device)
        return picked.new_zeros((n_loss, picked.shape[1])).index_copy(0, index, picked)

    def drop(self, active: torch.Tensor, prefix: FrozenPrefix) -> None:
        keep = active.to(self.request.device)[self.request].nonzero().flatten()
        if keep.numel() == self.request.numel() or not prefix.keep_rows(keep):
            return
        new_row = torch.full_like(self.request, -1)
        new_row[keep] = torch.arange(keep.numel(), device=keep.device)
        self.fact_cols, self.request, self.base = self.fact_cols[keep], self.request[keep], self.base[keep]
        kept = new_row[self.loss_rows] >= 0
        index = torch.arange(self.loss_rows.numel(), device=keep.device) if self.loss_index is None else self.loss_index
        self.loss_index = index[kept]
        self.loss_rows, self.loss_cols = new_row[self.loss_rows[kept]], self.loss_cols[kept]


def optimise_values(
    model: nn.Module,
    tok,
    requests: Sequence[EditRequest],
    hparams,
    layout: ModelLayout,
    layer: int,
    context_templates: list[list[str]],
    *,
    check_prefix: bool = True,
) -> list[ZResult]:
    """``compute_z`` for n requests in one batched optimisation, with each loss history.

    The n losses are independent (each delta only reaches its own rows) and Adam acts element
    by element, so optimising their sum gives every request the result it gets alone. A request
    stops when its own NLL falls below ``v_early_stop_loss``: its delta is frozen from then on
    (the others go on). ``check_prefix``: see `prepare_frozen_prefix`.
    """
    layout.check_layer(layer)
    loss_layer = resolve_loss_layer(hparams, layout, layer)
    requests = as_requests(requests, allow_dicts=False)
    groups = check_context_templates(context_templates)
    if model.training:
        warnings.warn("compute_z: the model is in training mode (dropout active); call model.eval()", stacklevel=3)
    device = model_device(model)
    problem = build_value_problem(tok, requests, hparams.fact_token, groups, device)
    n = problem.n_requests
    rows = torch.cat([problem.target_rows, problem.kl_rows])
    cols = torch.cat([problem.target_cols, problem.kl_cols])
    with frozen_parameters(model):
        prefix = prepare_frozen_prefix(model, layout, problem, layer, loss_layer, rows, cols, check=check_prefix)
        h0 = prefix.hidden  # on block `layer`'s device: delta and z* live there
        problem = problem.to(h0.device)
        fact_cols = problem.fact_cols - prefix.start
        cols = cols - prefix.start
        z_rows = problem.z_rows()
        z_init = h0[z_rows, fact_cols[z_rows]].clone()  # (n, d)
        ln_f, head = layout.ln_f(model), layout.lm_head(model)
        delta = torch.zeros_like(z_init, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=hparams.v_lr)
        z_norm = z_init.norm(dim=1)
        max_norm = hparams.clamp_norm_factor * z_norm
        base_at_fact = h0[problem.fact_rows, fact_cols]
        n_t = problem.target_rows.numel()
        # the rows still computed: a stopped request's rows leave the batch (`_Rows.drop`)
        live = _Rows(fact_cols, problem.row_request, base_at_fact, rows, cols)
        active = torch.ones(n, dtype=torch.bool, device=h0.device)
        frozen = torch.zeros_like(z_init)
        results = [ZResult(z=z_init[i], z_init=z_init[i], delta=frozen[i]) for i in range(n)]
        kl_init = None
        last_step = hparams.v_num_grad_steps - 1
        for step in range(hparams.v_num_grad_steps):
            with torch.enable_grad():
                hidden = prefix.hidden.index_put((live.fact_rows, live.fact_cols), live.base + delta[live.request])
                hidden = run_suffix(prefix, hidden)  # on block `loss_layer`'s device
                picked = head(ln_f(hidden[live.loss_rows.to(hidden.device), live.loss_cols.to(hidden.device)]))
                logits = live.logits(picked, n_loss=rows.numel())
                nll, kl, kl_logp = _losses(logits[:n_t], logits[n_t:], problem, kl_init)
                if kl_init is None:
                    kl_init = kl_logp.detach()
                decay = hparams.v_weight_decay * (delta.norm(dim=1) / z_norm**2)
                loss = nll + hparams.kl_factor * kl + decay.to(nll.device)  # (n,), on the head's device
            nll_now, loss_now = nll.detach().tolist(), loss.detach().tolist()
            for i in active.nonzero().flatten().tolist():
                res = results[i]
                res.nll.append(nll_now[i])
                res.loss.append(loss_now[i])
                res.steps = step + 1
                if nll_now[i] < hparams.v_early_stop_loss or step == last_step:
                    active[i] = False
                    frozen[i] = delta[i].detach()
            logger.debug("compute_z step %d: loss %s (nll %s)", step, loss_now, nll_now)
            if not bool(active.any()):
                break
            live.drop(active, prefix)
            (grad,) = torch.autograd.grad(loss[active.to(loss.device)].sum(), [delta])
            delta.grad = grad
            opt.step()
            with torch.no_grad():
                norm = delta.norm(dim=1)
                scale = torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm))
                delta.mul_(scale[:, None])
                delta[~active] = frozen[~active]  # stopped requests keep their delta (Adam's momentum would move it)
    for i, res in enumerate(results):
        res.delta = frozen[i].clone()
        res.z = z_init[i] + res.delta
        logger.info(
            "compute_z: %d steps, nll %.3f -> %.3f, |delta|/|z0| = %.3f",
            res.steps, res.nll[0], res.nll[-1], float(res.delta.norm() / z_norm[i]),
        )
    return results


def optimise_value(
    model: nn.Module,
    tok,
    request: EditRequest,
    hparams,
    layout: ModelLayout,
    layer: int,
    context_templates: list[list[str]],
    *,
    check_prefix: bool = True,
) -> ZResult:
    """``compute_z`` with its loss history (see the module docstring)."""
    return optimise_values(
        model, tok, [request], hparams, layout, layer, context_templates, check_prefix=check_prefix
    )[0]


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


def compute_zs(
    model: nn.Module,
    tok,
    requests: Sequence[EditRequest],
    hparams,
    layout: ModelLayout,
    layer: int,
    context_templates: list[list[str]],
    *,
    check_prefix: bool = True,
) -> torch.Tensor:
    """z* (d_v, n) of n requests, optimised in one batch (see `optimise_values`)."""
    results = optimise_values(
        model, tok, requests, hparams, layout, layer, context_templates, check_prefix=check_prefix
    )
    return torch.stack([r.z for r in results], dim=1)


@torch.no_grad()
def compute_current_z(
    model: nn.Module, tok, requests: Sequence[EditRequest], hparams, layout: ModelLayout, layer: int
) -> torch.Tensor:
    """Output of block ``layer`` at the fact token of each plain prompt: (d_v, n)."""
    layout.check_layer(layer)
    requests = as_requests(requests, allow_dicts=False)
    prompts = [build_prompt(r) for r in requests]
    seqs = [encode(tok, p) for p in prompts]
    idx = [fact_token_index(tok, p, hparams.fact_token, len(s)) for p, s in zip(prompts, seqs)]
    batch = pad_batch(seqs, tok, model_device(model))
    with Trace(model, layout.layer_name(layer), retain_output=True, stop=True) as tr:
        model(**batch.model_kwargs())
    hidden = first_tensor(tr.output)
    cols = torch.tensor([batch.padded_index(r, i) for r, i in enumerate(idx)], device=hidden.device)
    return hidden[torch.arange(len(seqs), device=hidden.device), cols].t().contiguous()
