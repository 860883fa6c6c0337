"""One evaluation point of a run: edit metrics, fluency, perplexity, MMLU, leakage and perturbation.

`Evaluator.build` computes what the points compare against (the unedited model's locality tokens,
the held-out text, the MMLU probe set) once; `Evaluator.evaluate` scores the edits so far.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from .baseline import BaselineCache, baseline_key

__all__ = ["Evaluator", "eval_sample", "scored_cases"]


def scored_cases(requests) -> str:
    """A digest of the case_ids scored at an evaluation point, in order: two points whose digests agree
    scored the same cases, so their ``outcomes`` can be compared case by case."""
    return hashlib.sha256(json.dumps([str(r.case_id) for r in requests]).encode()).hexdigest()[:16]


def eval_sample(n_done: int, max_cases: Optional[int], seed: int, n_total: int, final: bool) -> list:
    """Indices of the edits an evaluation point scores: all of the first ``n_done`` at the final
    point (and before editing) or when ``max_cases`` is None, else the first ``max_cases`` of them
    in one seeded permutation of all ``n_total`` edits (so successive points share their sample)."""
    if final or max_cases is None or n_done <= max_cases:
        return list(range(n_done))
    import torch

    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted([i for i in perm if i < n_done][:max_cases])


@dataclass
class Evaluator:
    """What every evaluation point of one run needs.

    Attributes:
        model, tok: the model being edited.
        requests: every request of the run, in edit order.
        settings: the run's ``eval`` config (batch_size, max_cases, fluency_*, ppl_*, mmlu_n, sample_final).
        num_edits, seed: the run's; the final point (step >= num_edits) scores every edit.
        locality_ref: the unedited model's argmax tokens on each neighbourhood prompt.
        heldout: token ids for perplexity, or None. mmlu: MMLU records, or None.
        prior_covs, base_weights: {layer: C0}, {layer: W_0} for leakage and perturbation.
        baseline: the unedited model's cached evaluation (`runner.baseline`), or None.
    """

    model: Any
    tok: Any
    requests: list
    settings: Mapping[str, Any]
    num_edits: int
    seed: int
    locality_ref: list
    heldout: Any
    mmlu: Optional[list]
    prior_covs: Mapping[int, Any]
    base_weights: Mapping[int, Any]
    baseline: Optional[BaselineCache] = None

    @classmethod
    def build(cls, model, tok, requests: list, cfg: Mapping[str, Any], prior_covs, base_weights,
              cache_dir: Optional[Path] = None) -> "Evaluator":
        """Score the unedited model's locality answers (or read them from the baseline cache in
        ``cache_dir``) and load the held-out text and the MMLU probe.

        Raises:
            ConfigError: ``eval.ppl_tokens`` more than the held-out text has.
        """
        from ..eval.capability import heldout_token_ids, load_mmlu
        from ..eval.metrics import locality_reference
        from .errors import ConfigError

        ev = cfg["eval"]
        baseline = None
        if cache_dir is not None:
            source = inspect.getsource(sys.modules[__name__])  # this evaluation loop is part of the key
            baseline = BaselineCache.open(cache_dir, baseline_key(model, requests, ev, cfg["seed"], source))
        if baseline is not None and baseline.locality_ref is not None and len(baseline.locality_ref) == len(requests):
            locality_ref = baseline.locality_ref
        else:
            locality_ref = locality_reference(model, tok, requests, batch_size=ev["batch_size"])
            if baseline is not None:
                baseline.locality_ref = locality_ref
                baseline.save()
        try:
            heldout = heldout_token_ids(tok, ev["ppl_tokens"]) if ev["ppl_tokens"] else None
        except ValueError as exc:
            raise ConfigError.about("eval.ppl_tokens", ev["ppl_tokens"], exc) from None
        mmlu = load_mmlu(ev["mmlu_n"]) if ev["mmlu_n"] else None
        return cls(model, tok, requests, ev, cfg["num_edits"], cfg["seed"], locality_ref, heldout, mmlu,
                   prior_covs, base_weights, baseline)

    def evaluate(self, step: int, weight_deltas: Callable[[], Dict[int, Any]]) -> dict:
        """One evaluation point over all edits so far (before any edit: over all requests to be edited).

        Args:
            step: edits written so far.
            weight_deltas: returns {layer: W_t - W_0} (e.g. ``editor.weight_deltas``).
        Returns:
            flat dict: ``step``, edit metrics, fluency, ``ppl``, ``mmlu_acc`` (+ chance), leakage and
            perturbation (totals and per layer), and ``eval_s`` (seconds).
        """
        from ..eval.capability import mmlu_accuracy, perplexity
        from ..eval.metrics import edit_metrics, fluency, weight_diagnostics

        ev = self.settings
        t0 = time.perf_counter()
        if step == 0 and self.baseline is not None and self.baseline.point is not None:
            return dict(self.baseline.point, eval_s=time.perf_counter() - t0, baseline_cached=True)
        final = step == 0 or (step >= self.num_edits and not ev.get("sample_final"))
        n_total = len(self.requests)
        idx = eval_sample(step if step > 0 else n_total, ev.get("max_cases"), self.seed, n_total, final)
        reqs: List = [self.requests[i] for i in idx]
        point: dict = {"step": step, "n_scored": len(reqs), "sampled": len(reqs) < (step or n_total),
                       "scored_cases": scored_cases(reqs)}
        point.update(edit_metrics(self.model, self.tok, reqs, locality_ref=[self.locality_ref[i] for i in idx],
                                  batch_size=ev["batch_size"]))
        if ev["fluency_prompts"]:
            prompts = [r.filled_prompt for r in reqs[: ev["fluency_prompts"]]]
            flu = fluency(self.model, self.tok, prompts, max_new_tokens=ev["fluency_tokens"], batch_size=ev["batch_size"])
            point["fluency"] = flu["fluency"]
            point["fluency_sample"] = flu["sample"]
        if self.heldout is not None:
            ppl = perplexity(self.model, self.heldout, window=ev["ppl_window"], batch_size=max(1, ev["batch_size"] // 4))
            point.update({"ppl": ppl["ppl"], "ppl_tokens": ppl["n_tokens"]})
            point.setdefault("outcomes", {})["ppl"] = ppl["windows"]  # pairs two points' perplexities (`ppl_ratio`)
        if self.mmlu is not None:
            point.update(mmlu_accuracy(self.model, self.tok, len(self.mmlu), records=self.mmlu, batch_size=ev["batch_size"]))
        point.update(weight_diagnostics(weight_deltas(), self.prior_covs, self.base_weights))
        point["eval_s"] = time.perf_counter() - t0
        if step == 0 and self.baseline is not None:
            self.baseline.point = dict(point)
            self.baseline.save()
        return point
