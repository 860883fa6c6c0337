"""The three record formats of edit datasets, told apart by content.

- ``"counterfact"``: CounterFact in EasyEdit's format (the bundled files): ``prompt`` (subject
  filled in), ``subject``, ``target_new``, ``ground_truth``, ``rephrase_prompt``,
  ``locality_prompt``, ``locality_ground_truth``.
- ``"counterfact-memit"``: CounterFact in ROME/MEMIT's format (``counterfact.json``,
  ``multi_counterfact.json``): ``requested_rewrite`` {``prompt`` with "{}" for the subject,
  ``subject``, ``target_new`` {``str``}, ``target_true`` {``str``}}, ``paraphrase_prompts``,
  ``neighborhood_prompts``. As in MEMIT's and EasyEdit's evaluation, every neighbourhood prompt
  should still answer ``target_true``.
- ``"zsre"``: ZsRE in MEND's format (``zsre_mend_eval.json``): ``src``, ``subject``, ``alt``,
  ``answers``, ``rephrase``, ``loc`` ("nq question: ..."), ``loc_ans``.

`detect_format` looks at the first record; the loaders then check every record's fields and name
the record and field that is missing. `to_memit_counterfact` writes requests back in MEMIT's
format (for EasyEdit's benchmark script, which reads only that format for CounterFact).
"""

from __future__ import annotations

from typing import Any, Iterable, List

from ..errors import DatasetError
from ..requests import EditRequest, fill_subject

__all__ = ["FORMATS", "detect_format", "memit_counterfact_request", "to_memit_counterfact"]

FORMATS = {
    "counterfact": "CounterFact in EasyEdit's format: prompt, subject, target_new, ground_truth, rephrase_prompt, "
                   "locality_prompt, locality_ground_truth",
    "counterfact-memit": "CounterFact in ROME/MEMIT's format (counterfact.json, multi_counterfact.json): "
                         "requested_rewrite {prompt with '{}', subject, target_new {str}, target_true {str}}, "
                         "paraphrase_prompts, neighborhood_prompts",
    "zsre": "ZsRE in MEND's format (zsre_mend_eval.json): src, subject, alt, answers, rephrase, loc, loc_ans",
}
"""Record formats the loaders read, with the fields that identify them."""


def detect_format(records: list, source: str = "<records>") -> str:
    """``"counterfact"``, ``"counterfact-memit"`` or ``"zsre"``, from the first record's fields.

    Raises:
        DatasetError: no records, or a first record of none of the three formats (the message
            lists the fields found and the formats accepted).
    """
    if not records:
        raise DatasetError(f"{source}: holds no records")
    first = records[0]
    if not isinstance(first, dict):
        raise DatasetError(f"{source}: record 0 is a {type(first).__name__}, expected a JSON object")
    if "requested_rewrite" in first:
        return "counterfact-memit"
    if "src" in first:
        return "zsre"
    if "prompt" in first:
        return "counterfact"
    accepted = "; ".join(f"{name} ({fields})" for name, fields in FORMATS.items())
    raise DatasetError(
        f"{source}: record 0 has fields {sorted(first)}, which match no known format. Accepted: {accepted}"
    )


def _text(value: Any, where: str) -> str:
    if isinstance(value, dict):  # MEMIT stores objects as {"str": ..., "id": ...}
        value = value.get("str")
    if not isinstance(value, str):
        raise DatasetError(f"{where}: expected a string (or {{'str': ...}}), got {value!r}")
    return value


def _strings(value: Any, where: str) -> tuple:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DatasetError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def memit_counterfact_request(record: Any, index: int, source: str) -> EditRequest:
    """One MEMIT-format CounterFact record as an `EditRequest` (prompt filled with the subject).

    Raises:
        DatasetError: a field is missing or has the wrong type (names the record and the field).
        RequestError: the values do not make a valid edit (empty target, subject not in the prompt).
    """
    where = f"{source}: record {index}"
    if not isinstance(record, dict) or not isinstance(record.get("requested_rewrite"), dict):
        raise DatasetError(f"{where} has no field 'requested_rewrite' (an object)")
    rewrite = record["requested_rewrite"]
    for name in ("prompt", "subject", "target_new", "target_true"):
        if name not in rewrite:
            raise DatasetError(f"{where} has no field 'requested_rewrite.{name}'")
    template = _text(rewrite["prompt"], f"{where}, requested_rewrite.prompt")
    subject = _text(rewrite["subject"], f"{where}, requested_rewrite.subject")
    if "{}" not in template:
        raise DatasetError(f"{where}: requested_rewrite.prompt={template!r} has no '{{}}' for the subject")
    truth = _text(rewrite["target_true"], f"{where}, requested_rewrite.target_true")
    neighbours = _strings(record.get("neighborhood_prompts"), f"{where}, neighborhood_prompts")
    return EditRequest(
        prompt=fill_subject(template, subject),
        subject=subject,
        target_new=_text(rewrite["target_new"], f"{where}, requested_rewrite.target_new"),
        ground_truth=truth,
        rephrase_prompts=_strings(record.get("paraphrase_prompts"), f"{where}, paraphrase_prompts"),
        locality_prompts=neighbours,
        locality_ground_truth=(truth,) * len(neighbours),
        case_id=record.get("case_id", index),
    )


def to_memit_counterfact(requests: Iterable[EditRequest]) -> List[dict]:
    """Requests as MEMIT-format CounterFact records (what EasyEdit's benchmark script reads).

    Fields MEMIT has but an `EditRequest` does not carry (``relation_id``, the objects' ``id``,
    ``attribute_prompts``, ``generation_prompts``) are left out. Neighbourhood prompts are written
    only where their answer is the request's ``ground_truth`` (MEMIT's convention).

    Raises:
        ValueError: a request has no ``ground_truth`` (MEMIT's ``target_true`` is required).
    """
    out = []
    for r in requests:
        if r.ground_truth is None:
            raise ValueError(f"case_id={r.case_id}: ground_truth is None; MEMIT's format needs target_true")
        neighbours = [p for p, a in zip(r.locality_prompts, r.locality_ground_truth) if a == r.ground_truth]
        out.append({
            "case_id": r.case_id,
            "requested_rewrite": {
                "prompt": r.template,
                "subject": r.subject,
                "target_new": {"str": r.target_new},
                "target_true": {"str": r.ground_truth},
            },
            "paraphrase_prompts": list(r.rephrase_prompts),
            "neighborhood_prompts": neighbours,
        })
    return out
