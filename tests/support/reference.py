"""Test and benchmark support: a straightforward `compute_z`, one full forward pass per optimisation step.

Slow on purpose. It is what MEMIT-style code does (full-vocabulary logits at every
position, the frozen layers recomputed at every step) and serves as the reference
that the fast path in `betaedit_plugin/compute_z.py` is checked against (tests) and timed
against (`benchmarks/`). Imported as ``support.reference``: the tests' conftest and the
benchmarks put ``tests/`` on ``sys.path``. Same objective, same Adam steps, same clamp.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from betaedit_plugin.models.hooks import Trace, first_tensor, replace_first_tensor
from betaedit_plugin.models.tokens import model_device
from betaedit_plugin.compute_z import build_value_problem, resolve_loss_layer

__all__ = ["reference_compute_z"]


def reference_compute_z(model, tok, request, hp, layout, layer, ctx, *, weight_grads: bool = False) -> torch.Tensor:
    """z* (d_v,) at the output of block ``layer``, with a full forward pass per step.

    Args:
        weight_grads: also let autograd compute the weights' gradients, as code that
            leaves ``requires_grad`` on does (only changes the time, not z*).
    """
    loss_layer = resolve_loss_layer(hp, layout, layer)
    pb = build_value_problem(tok, request, hp.fact_token, ctx, model_device(model))
    delta = torch.zeros(layout.value_dim(model, layer), requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.v_lr)
    saved: dict = {}

    def add_delta(out, name):
        h = first_tensor(out)
        saved.setdefault("z0", h[0, pb.fact_cols[0]].detach().clone())
        h = h.clone()
        h[pb.fact_rows, pb.fact_cols] = h[pb.fact_rows, pb.fact_cols] + delta
        return replace_first_tensor(out, h)

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(weight_grads)
    try:
        for step in range(hp.v_num_grad_steps):
            with Trace(model, layout.layer_name(layer), edit_output=add_delta), Trace(
                model, layout.layer_name(loss_layer)
            ) as at_loss:
                logits = model(**pb.batch.model_kwargs()).logits
            if loss_layer != layout.n_layers - 1:
                logits = layout.lm_head(model)(layout.ln_f(model)(first_tensor(at_loss.output)))
            logp = torch.log_softmax(logits, -1)
            tgt = logp[pb.target_rows, pb.target_cols].gather(1, pb.target_ids[:, None]).squeeze(1)
            nll = ((-tgt).reshape(pb.n_rewrite, -1).sum(1) / pb.target_len).mean()
            kl_logp = logp[pb.kl_rows, pb.kl_cols]
            saved.setdefault("kl0", kl_logp.detach())
            kl = F.kl_div(kl_logp, saved["kl0"], log_target=True, reduction="batchmean")
            z0 = saved["z0"]
            loss = nll + hp.kl_factor * kl + hp.v_weight_decay * (delta.norm() / z0.norm() ** 2)
            if float(nll.detach()) < hp.v_early_stop_loss or step == hp.v_num_grad_steps - 1:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                cap = hp.clamp_norm_factor * z0.norm()
                if delta.norm() > cap:
                    delta.mul_(cap / delta.norm())
    finally:
        for p, flag in zip(params, flags):
            p.grad = None
            p.requires_grad_(flag)
    return saved["z0"] + delta.detach()
