"""Loaders for CounterFact (EasyEdit's or ROME/MEMIT's format) and ZsRE (MEND schema).

A file's format is recognised by its content (`betaedit_plugin.data.formats.detect_format`), so
``load_counterfact("counterfact.json")`` reads MEMIT's ``counterfact.json`` /
``multi_counterfact.json`` as well as EasyEdit's files. A file is a JSON list of records or JSON
Lines (one record per line; ``.jsonl``, or any file whose JSON has more than one value), each
optionally gzipped (``.gz``).
"""

from __future__ import annotations

import gzip
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .._suggest import did_you_mean
from ..errors import DatasetError, RequestError
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


class TooFewRecords(DatasetError):
    """``n`` asks for more records than the file holds; ``available`` is how many it has."""

    def __init__(self, message: str, available: int) -> None:
        super().__init__(message)
        self.available = available


@dataclass(frozen=True)
class InvalidRecord:
    """A record that is not a valid edit: its position in the file, its case_id and why."""

    index: int
    case_id: Any
    reason: str


class EditList(list):
    """The loaded `EditRequest` list; ``skipped`` holds the `InvalidRecord` s left out (``skip_invalid=True``)."""

    def __init__(self, requests=(), skipped=()) -> None:
        super().__init__(requests)
        self.skipped = list(skipped)

#: invalid records listed in an error or warning (the count covers all)
SHOWN_INVALID = 3


def resource_path(relative: str) -> Path:
    """Absolute path of a bundled resource, e.g. ``resource_path("glue_eval/mmlu.json.gz")``."""
    return RESOURCES / relative


def read_json_records(path: Union[str, Path]) -> list:
    """Read the records of ``path``: a JSON list, or JSON Lines (one record per line: a ``.jsonl``
    file, or any file holding more than one JSON value); ``.gz`` is decompressed.

    Raises:
        DatasetError: the file is missing, not valid (gzip) JSON or JSON Lines (naming the line),
            or not a list.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data file {str(path)!r} does not exist")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetError(f"data file {str(path)!r} is unreadable ({type(exc).__name__}: {exc})") from None
    json_lines = path.name.removesuffix(".gz").endswith(".jsonl")
    try:
        records = _json_lines(text) if json_lines else json.loads(text)
    except json.JSONDecodeError as exc:
        if json_lines or exc.msg != "Extra data":
            raise DatasetError(f"data file {str(path)!r} is unreadable ({type(exc).__name__}: {exc})") from None
        try:  # more than one JSON value: JSON Lines in a .json file
            records = _json_lines(text)
        except json.JSONDecodeError as lines_exc:
            raise DatasetError(
                f"data file {str(path)!r} is unreadable ({type(exc).__name__}: {exc}), as a JSON list or as "
                f"JSON Lines ({lines_exc})"
            ) from None
    if not isinstance(records, list):
        raise DatasetError(f"data file {str(path)!r}: expected a JSON list of records, got {type(records).__name__}")
    return records


def _json_lines(text: str) -> list:
    """The values of a JSON Lines text, one a line (blank lines skipped); JSONDecodeError names the line."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise json.JSONDecodeError(f"line {number}: {exc.msg}", exc.doc, exc.pos) from None
    return records


def _split_path(split: Union[str, Path], splits: dict, dataset: str) -> Path:
    if isinstance(split, Path) or (isinstance(split, str) and split not in splits and ("/" in split or split.endswith((".json", ".jsonl", ".gz")))):
        return Path(split)
    if split not in splits:
        raise KeyError(
            f"Unknown {dataset} split {split!r}." + did_you_mean(split, sorted(splits))
            + " (or a path to a .json/.jsonl file, optionally .gz)"
        )
    return resource_path(splits[split])


def _check_n(n: Optional[int]) -> None:
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n={n!r}: expected a positive int (number of records), or None for all")


def _list_invalid(bad: list) -> str:
    shown = "; ".join(f"record {b.index}: {b.reason}" for b in bad[:SHOWN_INVALID])
    more = f"; and {len(bad) - SHOWN_INVALID} more" if len(bad) > SHOWN_INVALID else ""
    return shown + more


def _collect(records: list, build: Callable[[Any, int], EditRequest], n: Optional[int], skip_invalid: bool,
             path: Path) -> EditList:
    """The requests of the first ``n`` records (None: all), each built by ``build(record, index)``.

    A record that is not a valid edit (``build`` raises `RequestError`) is an error that lists
    the invalid records; with ``skip_invalid`` it is left out with a warning and the next valid
    records fill its place (the result's ``skipped`` names them).
    """
    _check_n(n)
    out, bad = [], []
    for i, record in enumerate(records):
        if n is not None and (len(out) if skip_invalid else i) >= n:
            break
        try:
            out.append(_changes_something(build(record, i)))
        except RequestError as exc:
            case_id = record.get("case_id", i) if isinstance(record, dict) else i
            bad.append(InvalidRecord(i, case_id, str(exc)))
    where = f"{path.name}" if n is None else f"{path.name} (first {n} {'valid ' if skip_invalid else ''}records)"
    if bad and not skip_invalid:
        raise DatasetError(
            f"{where}: {len(bad)} invalid record(s): {_list_invalid(bad)}; fix or remove them, or skip them "
            "with skip_invalid=True (runner: data.skip_invalid=true)"
        )
    if n is not None and len(out) < n:
        valid = "valid " if bad else ""
        raise TooFewRecords(f"n={n}: {path.name} has only {len(out)} {valid}records; ask for at most {len(out)}", len(out))
    if bad:
        warnings.warn(
            f"{where}: skipped {len(bad)} invalid record(s) (case_ids {[b.case_id for b in bad]}): {_list_invalid(bad)}",
            stacklevel=3,
        )
    return EditList(out, bad)


def _changes_something(request: EditRequest) -> EditRequest:
    """``request``, unless its new target is its true one (RequestError): such an edit changes
    nothing, and its efficacy P(new) > P(true) cannot be met."""
    truth = request.ground_truth
    if isinstance(truth, str) and request.target_new.strip() == truth.strip():
        raise RequestError(
            f"target_new={request.target_new!r} equals ground_truth (case_id={request.case_id}): the edit "
            "changes nothing and its efficacy P(new) > P(true) cannot be met; give another target_new"
        )
    return request


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


def load_counterfact(split: Union[str, Path] = "edit", n: Optional[int] = None, skip_invalid: bool = False) -> EditList:
    """CounterFact cases (EasyEdit's or ROME/MEMIT's format, told apart by content) as :class:`EditRequest`.

    Args:
        split: ``"edit"``, ``"train"``, ``"val"``, or a path to a file in EasyEdit's format or in
            MEMIT's (``counterfact.json``, ``multi_counterfact.json``: ``requested_rewrite``, ...).
        n: number of cases from the start of the file (None: all).
        skip_invalid: leave out records that are not valid edits (empty target, subject not in the
            prompt, target_new equal to ground_truth), with a warning; the next valid records take their place. By default they are
            an error that lists them.

    Returns:
        `EditList` of EditRequest with one rephrase prompt and one locality (neighbourhood) prompt
        each; ``ground_truth`` is the true object.
    Raises:
        DatasetError: unreadable file, missing fields, or invalid records (without ``skip_invalid``).
    """
    path = _split_path(split, COUNTERFACT_SPLITS, "counterfact")
    records = read_json_records(path)
    fmt = detect_format(records, str(path))
    _check_kind(fmt, "counterfact", path)
    if fmt == "counterfact-memit":
        return _collect(records, lambda rec, i: memit_counterfact_request(rec, i, str(path)), n, skip_invalid, path)

    def build(rec: Any, i: int) -> EditRequest:
        fields = {k: _field(rec, k, i, str(path)) for k in ("prompt", "subject", "target_new", "ground_truth")}
        return EditRequest(
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

    return _collect(records, build, n, skip_invalid, path)


def load_zsre(split: Union[str, Path] = "eval", n: Optional[int] = None, skip_invalid: bool = False) -> EditList:
    """ZsRE question-answering edits (MEND schema) as :class:`EditRequest`.

    prompt = ``src``, target_new = ``alt``, ground_truth = ``answers[0]``, rephrase = ``rephrase``,
    locality prompt = ``loc`` without its "nq question: " prefix, locality answer = ``loc_ans``.

    Args:
        split: ``"eval"``, ``"train"``, or a path to a file of the same schema.
        n: number of records from the start of the file (None: all).
        skip_invalid: leave out invalid records with a warning instead of raising `DatasetError`
            (the bundled splits have some: ``alt`` equal to ``answers[0]``, 29 in eval, e.g. record
            112, and 17 in train; and in train two with an empty ``alt``, e.g. record 534).
    """
    path = _split_path(split, ZSRE_SPLITS, "zsre")
    records = read_json_records(path)
    _check_kind(detect_format(records, str(path)), "zsre", path)

    def build(rec: Any, i: int) -> EditRequest:
        src, subject, alt = (_field(rec, k, i, str(path)) for k in ("src", "subject", "alt"))
        answers = rec.get("answers") or []
        loc, loc_ans = rec.get("loc"), rec.get("loc_ans")
        if isinstance(loc, str) and loc.startswith(NQ_PREFIX):
            loc = loc[len(NQ_PREFIX):]
        return EditRequest(
            prompt=src,
            subject=subject,
            target_new=alt,
            ground_truth=answers[0] if answers else None,
            rephrase_prompts=tuple(p for p in [rec.get("rephrase")] if p),
            locality_prompts=(loc,) if loc and loc_ans else (),
            locality_ground_truth=(loc_ans,) if loc and loc_ans else (),
            case_id=rec.get("case_id", i),
        )

    return _collect(records, build, n, skip_invalid, path)


def load_edit_file(path: Union[str, Path], n: Optional[int] = None, skip_invalid: bool = False) -> EditList:
    """Edits from any file the loaders read (CounterFact in EasyEdit's or MEMIT's format, ZsRE), by content.

    Raises:
        DatasetError: unreadable file, or records of none of the formats in
            `betaedit_plugin.data.formats.FORMATS` (the message lists them).
    """
    path = Path(path)
    fmt = detect_format(read_json_records(path), str(path))
    loader = load_zsre if fmt == "zsre" else load_counterfact
    return loader(path, n=n, skip_invalid=skip_invalid)


DATASETS: dict = {"counterfact": load_counterfact, "zsre": load_zsre}


def available_datasets() -> list:
    return sorted(DATASETS)


def load_dataset(name: str, n: Optional[int] = None, split: Optional[str] = None, skip_invalid: bool = False) -> EditList:
    """Load a registered dataset by name (``"counterfact"`` or ``"zsre"``); see its loader for the arguments.

    Raises:
        KeyError: unknown name, with "Did you mean" and the available names.
    """
    loader: Optional[Callable] = DATASETS.get(name)
    if loader is None:
        raise KeyError(f"Unknown dataset {name!r}." + did_you_mean(name, available_datasets()))
    if split is None:
        return loader(n=n, skip_invalid=skip_invalid)
    return loader(split, n=n, skip_invalid=skip_invalid)
