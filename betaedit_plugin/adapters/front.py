"""EasyEdit's ``BaseEditor.edit`` shape without EasyEdit: edit a `BetaEditor` and score it the same way.

    metrics, model = edit(editor, prompts=[...], target_new=[...], subject=[...],
                          rephrase_prompts=[...], locality_inputs={"neighborhood": {...}})

The metrics have EasyEdit's format (one dict per request with
``pre`` and ``post``: ``rewrite_acc``, ``rephrase_acc``, ``locality``), computed by this package's
one scoring path (`betaedit_plugin.eval.scoring`).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Union

from ..eval.scoring import predicted_target_tokens, target_token_accuracy, token_agreement
from ..requests import EditRequest
from .undo import UndoLog

logger = logging.getLogger(__name__)

__all__ = ["edit", "build_records"]


def edit(
    editor,
    prompts: Union[str, List[str]],
    target_new: Union[str, List[str]],
    subject: Union[str, List[str]],
    ground_truth: Optional[Union[str, List[str]]] = None,
    rephrase_prompts: Optional[Union[str, List[str]]] = None,
    locality_inputs: Optional[Dict[str, Dict[str, Any]]] = None,
    sequential_edit: bool = True,
    **kwargs,
):
    """Edit like EasyEdit's ``BaseEditor.edit`` and score like it: returns (metrics, model).

    Args:
        editor: a `BetaEditor`; requests are written ``editor.hparams.batch_size`` at a time.
        prompts, target_new, subject: one string each, or lists of equal length.
        ground_truth, rephrase_prompts: optional, same length.
        locality_inputs: {key: {'prompt': [...], 'ground_truth': [...]}} one entry per request.
        sequential_edit: True keeps every edit; False restores the weights and the state
            after each step (EasyEdit's non-sequential mode).
        kwargs: EasyEdit-only arguments, ignored.
    Returns:
        metrics: one dict per request {'case_id', 'requested_rewrite', 'pre': {...}, 'post': {...}}
        with 'rewrite_acc', 'rephrase_acc' (lists of one float) and 'locality'
        {'<key>_output': tokens, and after the edit '<key>_acc': [agreement with pre]}.
    """
    if kwargs:
        logger.debug("edit(): ignoring EasyEdit-only arguments %s", sorted(kwargs))
    records, reqs = build_records(prompts, target_new, subject, ground_truth, rephrase_prompts, locality_inputs)
    log = UndoLog(editor)  # sequential_edit=False takes each step back
    metrics = [{"case_id": i, "requested_rewrite": rec, "pre": _score(editor, rec)} for i, rec in enumerate(records)]
    bs = editor.hparams.batch_size
    for start in range(0, len(reqs), bs):
        idx = list(range(start, min(start + bs, len(reqs))))
        info = log.apply([reqs[i] for i in idx])
        for i in idx:
            post = _score(editor, records[i])
            for key, pre_tokens in metrics[i]["pre"]["locality"].items():
                loc = key[: -len("_output")]
                post["locality"][f"{loc}_acc"] = [
                    token_agreement(a, b) for a, b in zip(pre_tokens, post["locality"][key])
                ]
            metrics[i].update({"post": post, "step": info["step"]})
        if not sequential_edit:
            log.undo(restore_weights=True)
    return metrics, editor.model


def _score(editor, rec: dict) -> dict:
    model, tok = editor.model, editor.tok
    device = None  # the input embedding's device (see eval.scoring.model_device)
    out: Dict[str, Any] = {"rewrite_acc": [target_token_accuracy(model, tok, rec["prompt"], rec["target_new"], device)]}
    if rec.get("rephrase_prompt"):
        out["rephrase_acc"] = [target_token_accuracy(model, tok, rec["rephrase_prompt"], rec["target_new"], device)]
    out["locality"], out["portability"] = {}, {}
    for key, item in rec.get("locality", {}).items():
        preds, _ = predicted_target_tokens(model, tok, item["prompt"], item["ground_truth"], device)
        out["locality"][f"{key}_output"] = [preds]
    return out


def _as_list(name: str, value, n: int) -> list:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}: expected a string or a list of strings, got {type(value).__name__}")
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries but prompts has {n}: give one per prompt")
    return list(value)


def build_records(prompts, target_new, subject, ground_truth=None, rephrase_prompts=None, locality_inputs=None):
    """EasyEdit-style request dicts plus validated EditRequests, all checked before any edit.

    Returns:
        (records, requests): EasyEdit's request dicts and the matching `EditRequest` list.
    Raises:
        ValueError / TypeError naming the argument (lengths, types, subject not in prompt...).
    """
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts={prompts!r}: expected a non-empty string or list of strings")
    n = len(prompts)
    target_new = _as_list("target_new", target_new, n)
    subject = _as_list("subject", subject, n)
    ground_truth = _as_list("ground_truth", ground_truth, n) if ground_truth is not None else [None] * n
    rephrase = _as_list("rephrase_prompts", rephrase_prompts, n) if rephrase_prompts is not None else [None] * n
    records = []
    for i in range(n):
        rec = {"prompt": prompts[i], "subject": subject[i], "target_new": target_new[i],
               "ground_truth": ground_truth[i], "locality": {}}
        if rephrase[i] is not None:
            rec["rephrase_prompt"] = rephrase[i]
        records.append(rec)
    for key, item in (locality_inputs or {}).items():
        if not isinstance(item, Mapping) or "prompt" not in item or "ground_truth" not in item:
            raise ValueError(f"locality_inputs[{key!r}]: expected {{'prompt': [...], 'ground_truth': [...]}}")
        lp = _as_list(f"locality_inputs[{key!r}]['prompt']", item["prompt"], n)
        lg = _as_list(f"locality_inputs[{key!r}]['ground_truth']", item["ground_truth"], n)
        for i in range(n):
            if lp[i] is not None:
                gt = lg[i][0] if isinstance(lg[i], (list, tuple)) else lg[i]
                records[i]["locality"][key] = {"prompt": lp[i], "ground_truth": gt}
    reqs = []
    for i, rec in enumerate(records):
        try:
            reqs.append(EditRequest.from_easyedit({**rec, "case_id": i}))
        except ValueError as exc:
            raise ValueError(f"request {i}: {exc}") from None
    return records, reqs
