"""Loaders for CounterFact (EasyEdit's or ROME/MEMIT's format) and ZsRE (MEND schema).

A file's format is recognised by its content (`betaedit_plugin.data.formats.detect_format`), so
``load_counterfact("counterfact.json")`` reads MEMIT's ``counterfact.json`` /
``multi_counterfact.json`` as well as EasyEdit's files.
"""

from __future__ import annotations

import gzip
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .._suggest import did_you_mean
from ..requests import EditRequest
from .formats import FORMATS, detect_format, memit_counterfact_request

logger = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent.parent / "resources"

COUNTERFACT_SPLITS = {
    "edit": "counterfact/counterfact-edit.json.gz",
    "train": "counterfact/counterfact-train.json.gz",
    "val": "counterfact/counterfact-val.json.gz",
}
ZSRE_SPLITS = {
    "eval": "zsre/zsre_mend_eval_portability_gpt4.json.gz",
    "train": "zsre/zsre_mend_train-1k.json.gz",
}
NQ_PREFIX = "nq question: "


class DatasetError(ValueError):
    """A data file is missing, unreadable or malformed (the message names the file and the record)."""


def resource_path(relative: str) -> Path:
    """Absolute path of a bundled resource, e.g. ``resource_path("glue_eval/mmlu.json.gz")``."""
    return RESOURCES / relative


def read_json_records(path: Union[str, Path]) -> list:
    """Read a JSON list from ``path`` (``.gz`` is decompressed).

    Raises:
        DatasetError: the file is missing, not valid (gzip) JSON, or not a list.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data file {str(path)!r} does not exist")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as stream:
            records = json.load(stream)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"data file {str(path)!r} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(records, list):
        raise DatasetError(f"data file {str(path)!r}: expected a JSON list of records, got {type(records).__name__}")
    return records


def _split_path(split: Union[str, Path], splits: dict, dataset: str) -> Path:
    if isinstance(split, Path) or (isinstance(split, str) and split not in splits and ("/" in split or split.endswith((".json", ".gz")))):
        return Path(split)
    if split not in splits:
        raise KeyError(
            f"Unknown {dataset} split {split!r}." + did_you_mean(split, sorted(splits))
            + " (or a path to a .json/.json.gz file)"
        )
    return resource_path(splits[split])


def _check_n(n: Optional[int], available: int, what: str) -> int:
    if n is None:
        return available
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive int (number of {what} records), or None for all")
    if n > available:
        raise ValueError(f"n={n}: {what} has only {available} records; ask for at most {available}")
    return n


def _take(requests: list, bad: list, n: Optional[int], path: Path) -> list:
    """First ``n`` valid requests; warn about skipped invalid records."""
    if bad:
        warnings.warn(
            f"{path.name}: skipped {len(bad)} invalid record(s) (first at index {bad[0]}); pass strict=True to raise",
            stacklevel=3,
        )
    n = _check_n(n, len(requests), f"{path.name} (valid records)")
    return requests[:n]


def _field(record: Any, name: str, index: int, source: str) -> Any:
    if not isinstance(record, dict) or name not in record:
        raise DatasetError(f"{source}: record {index} has no field {name!r}")
    return record[name]


def _check_kind(fmt: str, wanted: str, path: Path) -> None:
    """Refuse a file of the other dataset, pointing to the right loader."""
    if fmt.split("-")[0] != wanted:
        other = fmt.split("-")[0]
        raise DatasetError(
            f"{path}: holds {other} records ({FORMATS[fmt]}), not {wanted}; "
            f"load it with load_{other}() (runner: data={other} data.path=...)"
        )


def load_counterfact(split: Union[str, Path] = "edit", n: Optional[int] = None, strict: bool = False) -> list:
    """CounterFact cases (EasyEdit's or ROME/MEMIT's format, told apart by content) as :class:`EditRequest`.

    Args:
        split: ``"edit"``, ``"train"``, ``"val"``, or a path to a file in EasyEdit's format or in
            MEMIT's (``counterfact.json``, ``multi_counterfact.json``: ``requested_rewrite``, ...).
        n: number of cases from the start of the file (None: all).
        strict: raise on a record that is not a valid edit (empty target, subject not in the prompt);
            by default such records are skipped with a warning.

    Returns:
        list of EditRequest with one rephrase prompt and one locality (neighbourhood) prompt each;
        ``ground_truth`` is the true object.
    """
    path = _split_path(split, COUNTERFACT_SPLITS, "counterfact")
    records = read_json_records(path)
    fmt = detect_format(records, str(path))
    _check_kind(fmt, "counterfact", path)
    if fmt == "counterfact-memit":
        return _load_memit_counterfact(records, path, n, strict)
    out, bad = [], []
    for i, rec in enumerate(records):
        fields = {k: _field(rec, k, i, str(path)) for k in ("prompt", "subject", "target_new", "ground_truth")}
        try:
            out.append(
                EditRequest(
                    prompt=fields["prompt"],
                    subject=fields["subject"],
                    target_new=fields["target_new"],
                    ground_truth=fields["ground_truth"],
                    rephrase_prompts=tuple(p for p in [rec.get("rephrase_prompt")] if p),
                    locality_prompts=tuple(p for p in [rec.get("locality_prompt")] if p),
                    locality_ground_truth=tuple(
                        a for a, p in [(rec.get("locality_ground_truth"), rec.get("locality_prompt"))] if p
                    ),
                    case_id=rec.get("case_id", i),
                )
            )
        except ValueError as exc:
            if strict:
                raise DatasetError(f"{path}: record {i}: {exc}") from None
            bad.append(i)
    return _take(out, bad, n, path)


def load_zsre(split: Union[str, Path] = "eval", n: Optional[int] = None, strict: bool = False) -> list:
    """ZsRE question-answering edits (MEND schema) as :class:`EditRequest`.

    prompt = ``src``, target_new = ``alt``, ground_truth = ``answers[0]``, rephrase = ``rephrase``,
    locality prompt = ``loc`` without its "nq question: " prefix, locality answer = ``loc_ans``.

    Args:
        split: ``"eval"``, ``"train"``, or a path to a file of the same schema.
        n: number of records from the start of the file (None: all).
        strict: raise on an invalid record instead of skipping it with a warning
            (the bundled train split has one record with an empty ``alt``).
    """
    path = _split_path(split, ZSRE_SPLITS, "zsre")
    records = read_json_records(path)
    _check_kind(detect_format(records, str(path)), "zsre", path)
    out, bad = [], []
    for i, rec in enumerate(records):
        src, subject, alt = (_field(rec, k, i, str(path)) for k in ("src", "subject", "alt"))
        answers = rec.get("answers") or []
        loc, loc_ans = rec.get("loc"), rec.get("loc_ans")
        if isinstance(loc, str) and loc.startswith(NQ_PREFIX):
            loc = loc[len(NQ_PREFIX):]
        try:
            out.append(
                EditRequest(
                    prompt=src,
                    subject=subject,
                    target_new=alt,
                    ground_truth=answers[0] if answers else None,
                    rephrase_prompts=tuple(p for p in [rec.get("rephrase")] if p),
                    locality_prompts=(loc,) if loc and loc_ans else (),
                    locality_ground_truth=(loc_ans,) if loc and loc_ans else (),
                    case_id=rec.get("case_id", i),
                )
            )
        except ValueError as exc:
            if strict:
                raise DatasetError(f"{path}: record {i}: {exc}") from None
            bad.append(i)
    return _take(out, bad, n, path)


def _load_memit_counterfact(records: list, path: Path, n: Optional[int], strict: bool) -> list:
    out, bad = [], []
    for i, rec in enumerate(records):
        try:
            out.append(memit_counterfact_request(rec, i, str(path)))
        except DatasetError:
            raise
        except ValueError as exc:
            if strict:
                raise DatasetError(f"{path}: record {i}: {exc}") from None
            bad.append(i)
    return _take(out, bad, n, path)


def load_edit_file(path: Union[str, Path], n: Optional[int] = None, strict: bool = False) -> list:
    """Edits from any file the loaders read (CounterFact in EasyEdit's or MEMIT's format, ZsRE), by content.

    Raises:
        DatasetError: unreadable file, or records of none of the formats in
            `betaedit_plugin.data.formats.FORMATS` (the message lists them).
    """
    path = Path(path)
    fmt = detect_format(read_json_records(path), str(path))
    loader = load_zsre if fmt == "zsre" else load_counterfact
    return loader(path, n=n, strict=strict)


DATASETS: dict = {"counterfact": load_counterfact, "zsre": load_zsre}


def available_datasets() -> list:
    return sorted(DATASETS)


def load_dataset(name: str, n: Optional[int] = None, split: Optional[str] = None) -> list:
    """Load a registered dataset by name (``"counterfact"`` or ``"zsre"``).

    Raises:
        KeyError: unknown name, with "Did you mean" and the available names.
    """
    loader: Optional[Callable] = DATASETS.get(name)
    if loader is None:
        raise KeyError(f"Unknown dataset {name!r}." + did_you_mean(name, available_datasets()))
    return loader(n=n) if split is None else loader(split, n=n)
