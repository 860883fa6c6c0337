"""Editing metrics over all edits so far (the paper's protocol).

* Probability comparisons (ROME/MEMIT/AlphaEdit on CounterFact), from the mean log-probability of
  the target tokens: efficacy P(new) > P(true) on the prompt, generality the same on the
  paraphrases, specificity P(true) > P(new) on the neighbourhood prompts.
* Teacher-forced token accuracies (EasyEdit): ``rewrite_acc`` (target_new after the prompt),
  ``rephrase_acc`` (after the paraphrases), ``locality_acc`` (agreement of the argmax tokens on the
  neighbourhood prompt + its answer with the unedited model).
* Fluency: ROME's weighted bi/tri-gram entropy of greedy generations.
* Leakage and perturbation per layer on D = W_t - W_0: trace(D C0 D^T), its ratio to
  trace(W_0 C0 W_0^T), and ||D||_F.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Mapping, Optional, Sequence

import torch

from ..requests import EditRequest
from .scoring import greedy_generate, score_targets


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _truth(request: EditRequest, index: int) -> Optional[str]:
    if index < len(request.locality_ground_truth):
        return request.locality_ground_truth[index]
    return request.ground_truth


def locality_reference(model: torch.nn.Module, tok, requests: Sequence[EditRequest], *, batch_size: int = 16) -> list:
    """Argmax tokens of the (unedited) model on each neighbourhood prompt + answer.

    Returns:
        list (one per request) of tuples (one per locality prompt) of argmax token tuples; pass it
        to :func:`edit_metrics` as ``locality_ref`` to get EasyEdit's locality accuracy.
    """
    prompts, targets, owners = [], [], []
    for i, req in enumerate(requests):
        for j, loc in enumerate(req.locality_prompts):
            answer = _truth(req, j)
            if answer:
                prompts.append(loc)
                targets.append(answer)
                owners.append(i)
    scores = score_targets(model, tok, prompts, targets, batch_size=batch_size)
    out: list = [[] for _ in requests]
    for owner, score in zip(owners, scores):
        out[owner].append(score.argmax)
    return [tuple(x) for x in out]


def edit_metrics(
    model: torch.nn.Module,
    tok,
    requests: Sequence[EditRequest],
    *,
    locality_ref: Optional[Sequence] = None,
    batch_size: int = 16,
) -> dict:
    """Probability comparisons and token accuracies over ``requests`` (all edits so far).

    Args:
        requests: the edited requests.
        locality_ref: output of :func:`locality_reference` on the unedited model, aligned with
            ``requests`` (a prefix of a longer list is fine); without it ``locality_acc`` is left out.

    Returns:
        dict of floats in [0, 1] (NaN when no request has the needed field): ``efficacy``,
        ``generality``, ``specificity``, ``rewrite_acc``, ``rephrase_acc``, ``locality_acc``, and the
        mean log-probability margins ``efficacy_margin`` (log P(new) - log P(true) on the prompt)
        and ``specificity_margin`` (log P(true) - log P(new) on the neighbourhood); and ``outcomes``:
        for each of efficacy, generality and specificity, every comparison's result as a string of
        "1" (won) and "0" in the order of ``requests`` (then of their prompts); for ``rewrite_acc``
        and ``rephrase_acc`` each prompt's target tokens as "1" (the argmax is the target token)
        and "0", and with ``locality_ref`` for ``locality_acc`` each neighbourhood prompt's tokens
        as "1" (the argmax agrees with the unedited model's) and "0", prompts separated by a space
        (`token_scores` reads them back): what a paired comparison of two models on the same
        requests needs (`betaedit_plugin.eval.report`). Where a request adds more than one
        comparison to a metric (MEMIT's CounterFact: 2 paraphrases, 10 neighbourhood prompts),
        ``outcomes["groups"][metric]`` says how many each request added ("2 2 0 ...", space-separated,
        in the order of ``requests``): the comparisons of one request are not independent, and the
        paired intervals treat each request as one cluster (`betaedit_plugin.eval.report.mean_and_se`);
        absent where each request added at most one.
    """
    jobs: list = []  # (kind, request index, prompt, target)
    for i, req in enumerate(requests):
        prompt = req.filled_prompt
        jobs.append(("new", i, prompt, req.target_new))
        if req.ground_truth:
            jobs.append(("true", i, prompt, req.ground_truth))
        for j, rp in enumerate(req.rephrase_prompts):
            jobs.append((f"rp_new{j}", i, rp, req.target_new))
            if req.ground_truth:
                jobs.append((f"rp_true{j}", i, rp, req.ground_truth))
        for j, loc in enumerate(req.locality_prompts):
            truth = _truth(req, j)
            if truth:
                jobs.append((f"loc_new{j}", i, loc, req.target_new))
                jobs.append((f"loc_true{j}", i, loc, truth))
    scores = score_targets(model, tok, [j[2] for j in jobs], [j[3] for j in jobs], batch_size=batch_size)
    table = {(kind, i): s for (kind, i, _, _), s in zip(jobs, scores)}

    eff, eff_margin, gen, spec, spec_margin = [], [], [], [], []
    rw_tokens, rp_tokens, loc_tokens = [], [], []  # each prompt's tokens: the token metrics are their shares' means
    # comparisons (prompts) each request adds to a metric
    per_request: dict = {"generality": [], "specificity": [], "rephrase_acc": [], "locality_acc": []}
    for i, req in enumerate(requests):
        before = {"generality": len(gen), "specificity": len(spec), "rephrase_acc": len(rp_tokens),
                  "locality_acc": len(loc_tokens)}
        new = table[("new", i)]
        rw_tokens.append(_hits(new.argmax, new.target_ids))
        if ("true", i) in table:
            margin = new.mean_logprob - table[("true", i)].mean_logprob
            eff.append(float(margin > 0))
            eff_margin.append(margin)
        for j in range(len(req.rephrase_prompts)):
            rephrased = table[(f"rp_new{j}", i)]
            rp_tokens.append(_hits(rephrased.argmax, rephrased.target_ids))
            if (f"rp_true{j}", i) in table:
                gen.append(float(rephrased.mean_logprob > table[(f"rp_true{j}", i)].mean_logprob))
        refs = locality_ref[i] if locality_ref is not None and i < len(locality_ref) else None
        k = 0
        for j in range(len(req.locality_prompts)):
            if (f"loc_true{j}", i) not in table:
                continue
            true, wrong = table[(f"loc_true{j}", i)], table[(f"loc_new{j}", i)]
            spec.append(float(true.mean_logprob > wrong.mean_logprob))
            spec_margin.append(true.mean_logprob - wrong.mean_logprob)
            if refs is not None and k < len(refs):
                ref = refs[k]  # a token missing from the argmax counts as a disagreement
                agree = [a == b for a, b in zip(true.argmax, ref)] + [False] * max(len(ref) - len(true.argmax), 0)
                loc_tokens.append("".join("1" if a else "0" for a in agree))
            k += 1
        for metric, values in (("generality", gen), ("specificity", spec), ("rephrase_acc", rp_tokens),
                               ("locality_acc", loc_tokens)):
            per_request[metric].append(len(values) - before[metric])
    out = {
        "outcomes": {**{name: "".join("1" if v else "0" for v in values)
                        for name, values in (("efficacy", eff), ("generality", gen), ("specificity", spec))},
                     "rewrite_acc": " ".join(rw_tokens), "rephrase_acc": " ".join(rp_tokens)},
        "efficacy": _mean(eff),
        "generality": _mean(gen),
        "specificity": _mean(spec),
        "efficacy_margin": _mean(eff_margin),
        "specificity_margin": _mean(spec_margin),
        "rewrite_acc": _mean([_agreement(t) for t in rw_tokens]),
        "rephrase_acc": _mean([_agreement(t) for t in rp_tokens]),
    }
    if locality_ref is not None:
        out["outcomes"]["locality_acc"] = " ".join(loc_tokens)
        out["locality_acc"] = _mean([_agreement(t) for t in loc_tokens])
    groups = {metric: " ".join(str(n) for n in sizes) for metric, sizes in per_request.items()
              if any(n > 1 for n in sizes) and metric in out["outcomes"]}
    if groups:
        out["outcomes"]["groups"] = groups
    return out


def _hits(argmax: Sequence[int], target_ids: Sequence[int]) -> str:
    """A prompt's target positions as "1" where the argmax is the target token, else "0"."""
    return "".join("1" if a == t else "0" for a, t in zip(argmax, target_ids))


def _agreement(tokens: str) -> float:
    return tokens.count("1") / max(len(tokens), 1)


def token_scores(tokens: str) -> list:
    """Each prompt's share of "1" tokens (0 for a prompt without tokens) from a token metric's
    ``outcomes`` (`edit_metrics`: ``rewrite_acc``, ``rephrase_acc``, ``locality_acc``): the values
    the metric is the mean of."""
    return [_agreement(t) for t in tokens.split(" ")] if tokens else []


# ----------------------------------------------------------------------------- fluency
_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's fluency score of one text: mean over n of weight_n * H_n (bits).

    H_n is the entropy of the empirical distribution of the text's word n-grams. With the default
    ns (2, 3) and weights (2/3, 4/3) this is (2/3 H_2 + 4/3 H_3) / 2. An empty text scores 0.
    """
    if len(ns) != len(weights):
        raise ValueError(f"got {len(ns)} n-gram orders but {len(weights)} weights; expected one weight per order")
    words = _WORD.findall(text.lower())
    parts = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        parts.append(w * entropy)
    return float(sum(parts) / len(parts))


def fluency(model: torch.nn.Module, tok, prompts: Sequence[str], *, max_new_tokens: int = 30, batch_size: int = 8) -> dict:
    """Mean n-gram entropy of greedy generations of ``prompts`` (prompt included, as in ROME).

    Returns:
        {"fluency": mean entropy, "fluency_n": number of prompts, "sample": first generation}.
    """
    if not prompts:
        return {"fluency": float("nan"), "fluency_n": 0, "sample": ""}
    texts = greedy_generate(model, tok, list(prompts), max_new_tokens=max_new_tokens, batch_size=batch_size)
    full = [p + t for p, t in zip(prompts, texts)]
    return {"fluency": _mean([ngram_entropy(t) for t in full]), "fluency_n": len(full), "sample": full[0]}


# ----------------------------------------------------------------------------- weight diagnostics
def layer_diagnostics(delta: torch.Tensor, prior_cov: torch.Tensor, base_weight: Optional[torch.Tensor] = None) -> dict:
    """Leakage and perturbation of one layer's cumulative update, in float64.

    Args:
        delta: D = W_t - W_0, (d_v, d_k) in nn.Linear orientation.
        prior_cov: C0 (d_k, d_k).
        base_weight: W_0 (d_v, d_k), for the relative leakage (optional).

    Returns:
        {"leakage": trace(D C0 D^T), "perturbation": ||D||_F, "rel_leakage": leakage / trace(W_0 C0 W_0^T)}
        (``rel_leakage`` only with ``base_weight``).
    """
    if delta.dim() != 2 or prior_cov.shape != (delta.shape[1], delta.shape[1]):
        raise ValueError(
            f"delta has shape {tuple(delta.shape)} and prior_cov {tuple(prior_cov.shape)}: expected delta (d_v, d_k) "
            "and prior_cov (d_k, d_k) with the same d_k"
        )
    d = delta.detach().to("cpu", torch.float64)
    c = prior_cov.detach().to("cpu", torch.float64)
    out = {"leakage": float(((d @ c) * d).sum()), "perturbation": float(torch.linalg.matrix_norm(d))}
    if base_weight is not None:
        w = base_weight.detach().to("cpu", torch.float64)
        out["rel_leakage"] = out["leakage"] / float(((w @ c) * w).sum())
    return out


def weight_diagnostics(
    deltas: Mapping[int, torch.Tensor],
    prior_covs: Mapping[int, torch.Tensor],
    base_weights: Optional[Mapping[int, torch.Tensor]] = None,
) -> dict:
    """:func:`layer_diagnostics` for every edited layer plus totals.

    Returns:
        flat dict: ``leakage/L<layer>``, ``rel_leakage/L<layer>``, ``perturbation/L<layer>`` per layer,
        and ``leakage`` (sum over layers), ``rel_leakage`` (mean over layers), ``perturbation``
        (Frobenius norm over all layers together).
    """
    out: dict = {}
    leak, rel, pert2 = 0.0, [], 0.0
    for layer in sorted(deltas):
        if layer not in prior_covs:
            raise KeyError(f"no prior covariance for layer {layer}; have layers {sorted(prior_covs)}")
        diag = layer_diagnostics(deltas[layer], prior_covs[layer], None if base_weights is None else base_weights[layer])
        for key, value in diag.items():
            out[f"{key}/L{layer}"] = value
        leak += diag["leakage"]
        pert2 += diag["perturbation"] ** 2
        if "rel_leakage" in diag:
            rel.append(diag["rel_leakage"])
    out["leakage"] = leak
    out["perturbation"] = math.sqrt(pert2)
    if rel:
        out["rel_leakage"] = _mean(rel)
    return out
