"""The run journal: each step's targets z*, enough to rebuild a sequential run anywhere.

Everything in a step but the value optimisation (keys, residuals, the update, the history, the
projector refreshes) is a function of the current weights and z*. A run therefore writes, into
``<out_dir>/journal/``:

* ``header.safetensors``: the run's identity (model, method, hparams, data ...) and its hash,
  the kind (``run``, or ``bank`` for a target bank), the context templates the run used (they
  are sampled from the model), the settings z* depends on (`TARGET_FIELDS`), the resolved
  hyperparameters that change an edit, and the statistics' cache keys;
* ``chunk-<first>-<last>.safetensors``: ``chunk_size`` consecutive steps, written once and never
  changed again (a campaign's commits only add files);
* ``tail.safetensors``: the steps after the last chunk, rewritten (atomically) at every step
  until it becomes a chunk.

Every file is sealed (`betaedit_plugin._fileio.write_tensors`: a sha256 per tensor and per
metadata field), so a flipped bit or an edited field is refused naming the file and the entry.
A step holds its z* (d_v, n) as the tensor ``z_star.<step>`` and, in the ``records`` metadata
field, the requests (every field, with their case_ids) and, at evaluation points, a fingerprint
of the edited weights: ||W_t - W_0||_F and the sha256 of W_t per layer.

On SmolLM2 (d_v = 576, float32) a step of one request costs about 2.3 KB of z* plus its request
text and about 0.6 KB of safetensors and JSON framing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from .._fileio import IntegrityError, read_metadata, read_tensors, tensor_sha256, write_tensors
from ..errors import BetaEditError

logger = logging.getLogger(__name__)

__all__ = [
    "Journal",
    "JournalError",
    "StepRecord",
    "TargetSource",
    "TARGET_FIELDS",
    "JOURNAL_DIR",
    "FINGERPRINT_RTOL",
    "weights_fingerprint",
    "compare_fingerprint",
    "request_fields",
    "target_fields",
]

FORMAT = 1
JOURNAL_DIR = "journal"
HEADER = "header.safetensors"
TAIL = "tail.safetensors"
KINDS = ("run", "bank")
#: hyperparameters that z* depends on: targets from a journal or bank made with other values are refused
TARGET_FIELDS = (
    "layers", "fact_token", "v_num_grad_steps", "v_lr", "v_loss_layer", "v_weight_decay",
    "clamp_norm_factor", "kl_factor", "v_early_stop_loss", "context_template_length_params",
    "rewrite_module_tmp", "layer_module_tmp",
)
#: ||W_t - W_0||_F of a replayed run may differ from the journaled one by this much (relative)
#: before the replay stops: float32 updates on another machine or BLAS reorder sums
FINGERPRINT_RTOL = 1e-4


class JournalError(BetaEditError):
    """A journal that is corrupt, incomplete, of another run, or does not match what it replays."""


@dataclass
class StepRecord:
    """One journaled step.

    Attributes:
        step: edits done after this step (the editor's step count).
        requests: the step's requests, each as a dict of its `EditRequest` fields.
        z_star: (d_v, n) targets of the last edited layer, CPU.
        fingerprint: ``{layer: {"delta_norm": float, "sha256": str}}`` of the edited weights after
            this step, at evaluation points; None elsewhere.
    """

    step: int
    requests: List[dict]
    z_star: torch.Tensor
    fingerprint: Optional[Dict[str, dict]] = None

    @property
    def case_ids(self) -> list:
        return [r.get("case_id") for r in self.requests]

    def meta(self) -> dict:
        return {"step": self.step, "requests": self.requests, "fingerprint": self.fingerprint}


#: the request fields a journal stores in full (what an edit writes); the rest (paraphrases, neighbourhood
#: prompts ...) only through the sha256 of all fields, which is what replay and fixed targets compare
STORED_FIELDS = ("case_id", "prompt", "subject", "target_new")


def request_fields(request) -> dict:
    """What a journal stores of an `EditRequest`: `STORED_FIELDS` and the sha256 of all its fields."""
    import hashlib

    every = json.dumps(dataclasses.asdict(request), sort_keys=True, ensure_ascii=False)
    out = {k: getattr(request, k) for k in STORED_FIELDS}
    out["sha256"] = hashlib.sha256(every.encode("utf-8")).hexdigest()
    return json.loads(json.dumps(out))


def weights_fingerprint(weights: Mapping[int, torch.Tensor], base: Mapping[int, torch.Tensor]) -> Dict[str, dict]:
    """{layer: {"delta_norm": ||W_t - W_0||_F (float64), "sha256": digest of W_t}} (layer keys as strings)."""
    out = {}
    for layer in sorted(weights):
        w = weights[layer].detach()
        delta = w.double() - base[layer].to(w.device).double()
        out[str(layer)] = {"delta_norm": float(delta.norm()), "sha256": tensor_sha256(w.to("cpu"))}
    return out


def compare_fingerprint(saved: Mapping[str, dict], here: Mapping[str, dict], step: int, rtol: float = FINGERPRINT_RTOL) -> dict:
    """Check a replayed fingerprint against the journaled one.

    Returns:
        {"identical": all digests equal, "max_rel_diff": largest relative ||D|| difference}.
    Raises:
        JournalError: naming the step and the layer whose ||W_t - W_0|| differs beyond ``rtol``.
    """
    worst, identical = 0.0, True
    for layer, want in saved.items():
        got = here.get(layer)
        if got is None:
            raise JournalError(f"journal step {step}: layer {layer} is journaled but not edited here; the journal is of another layer set")
        a, b = float(want["delta_norm"]), float(got["delta_norm"])
        rel = abs(a - b) / max(abs(a), 1e-12) if a or b else 0.0
        identical = identical and want.get("sha256") == got.get("sha256")
        if not math.isfinite(b) or rel > rtol:
            raise JournalError(
                f"replay diverged at step {step}, layer {layer}: ||W_t - W_0||_F is {b:.9g} here, {a:.9g} in the journal "
                f"(relative difference {rel:.3g} > {rtol:g}); the model, statistics or library versions differ from "
                "the journaled run's"
            )
        worst = max(worst, rel)
    return {"identical": identical, "max_rel_diff": worst}


def _chunk_name(first: int, last: int) -> str:
    return f"chunk-{first:07d}-{last:07d}.safetensors"


def _write_records(path: Path, records: Sequence[StepRecord]) -> None:
    tensors = {f"z_star.{r.step}": r.z_star.detach().to("cpu").contiguous() for r in records}
    write_tensors(path, tensors, {"format": str(FORMAT), "records": json.dumps([r.meta() for r in records])})


def _read_records(path: Path) -> List[StepRecord]:
    try:
        tensors, meta = read_tensors(path)
        metas = json.loads(meta["records"])
        records = [StepRecord(int(m["step"]), list(m["requests"]), tensors[f"z_star.{m['step']}"], m.get("fingerprint"))
                   for m in metas]
    except IntegrityError as exc:
        raise JournalError(f"{exc}; the journal cannot be replayed: restore the file (e.g. from git) or delete the journal") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise JournalError(f"journal file {str(path)!r} is malformed ({type(exc).__name__}: {exc}); restore it or delete the journal") from None
    if len(tensors) != len(records):
        raise JournalError(f"journal file {str(path)!r} holds {len(tensors)} targets for {len(records)} steps; restore it or delete the journal")
    return records


class Journal:
    """An open journal directory: its header and its steps, in order.

    `Journal.create` starts one, `Journal.open` reads (and verifies) one; `append` journals a step,
    `add_fingerprint` attaches the evaluation point's fingerprint to the last step.
    """

    def __init__(self, root: Path, header: dict, records: List[StepRecord], chunk_size: int, tail_start: int) -> None:
        self.root = Path(root)
        self.header = header
        self.records = records
        self.chunk_size = chunk_size
        self._tail_start = tail_start  # index in records of the first step not yet in a chunk

    # ---------------------------------------------------------------- reading
    @staticmethod
    def exists(out_dir: Path) -> bool:
        return (Path(out_dir) / JOURNAL_DIR / HEADER).is_file()

    @classmethod
    def open(cls, out_dir: Path, chunk_size: int = 50) -> "Journal":
        """Read and verify ``<out_dir>/journal``: every chunk and the tail, steps contiguous.

        Raises:
            JournalError: a missing header, a corrupt or edited file, or a gap between steps.
        """
        root = Path(out_dir) / JOURNAL_DIR
        header = cls.read_header(Path(out_dir))
        records: List[StepRecord] = []
        for path in sorted(root.glob("chunk-*.safetensors")):
            records.extend(_read_records(path))
        n_chunked = len(records)
        if (root / TAIL).is_file():
            last = records[-1].step if records else 0
            # a tail left behind by a crash between writing its chunk and removing it repeats those steps
            records.extend(r for r in _read_records(root / TAIL) if r.step > last)
        previous = 0
        for r in records:
            n = r.z_star.shape[1] if r.z_star.dim() == 2 else -1
            if n != len(r.requests) or r.step != previous + n:
                raise JournalError(
                    f"journal {str(root)!r}: step {r.step} does not follow step {previous} with its {len(r.requests)} "
                    "request(s) (a chunk is missing or was edited); restore the journal's files or delete it"
                )
            previous = r.step
        return cls(root, header, records, chunk_size, n_chunked)

    @staticmethod
    def read_header(out_dir: Path) -> dict:
        path = Path(out_dir) / JOURNAL_DIR / HEADER
        if not path.is_file():
            raise JournalError(f"{str(Path(out_dir))!r} holds no journal ({JOURNAL_DIR}/{HEADER} is missing)")
        try:
            meta = read_metadata(path)
            header = {k: json.loads(v) for k, v in meta.items()}
        except IntegrityError as exc:
            raise JournalError(f"{exc}; restore the file (e.g. from git) or delete the journal") from None
        except ValueError as exc:
            raise JournalError(f"journal header {str(path)!r} is malformed ({exc}); restore it or delete the journal") from None
        if header.get("format") != FORMAT or header.get("kind") not in KINDS:
            raise JournalError(
                f"journal header {str(path)!r}: format {header.get('format')!r} kind {header.get('kind')!r}; this version "
                f"reads format {FORMAT}, kinds {list(KINDS)}"
            )
        return header

    # ---------------------------------------------------------------- writing
    @classmethod
    def create(cls, out_dir: Path, *, kind: str, identity: Mapping, config_hash: str, context_templates, target_fields: Mapping,
               stats_keys: Optional[Mapping] = None, hparams: Optional[Mapping] = None, chunk_size: int = 50) -> "Journal":
        """Start a journal in ``<out_dir>/journal`` (its header only). ``hparams``: the resolved
        settings that change an edit (`EditHyperParams.fingerprint`), which a resume compares with its
        own (the identity holds the config's overrides only, not what the YAML said)."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: expected one of {list(KINDS)}")
        root = Path(out_dir) / JOURNAL_DIR
        header = {
            "format": FORMAT, "kind": kind, "identity": dict(identity), "config_hash": config_hash,
            "context_templates": context_templates, "target_fields": dict(target_fields),
            "stats_keys": dict(stats_keys or {}),
        }
        if hparams is not None:  # (journals written before this have no such field)
            header["hparams"] = dict(hparams)
        header = json.loads(json.dumps(header, default=str))
        write_tensors(root / HEADER, {}, {k: json.dumps(v) for k, v in header.items()})
        return cls(root, header, [], chunk_size, 0)

    @property
    def last_step(self) -> int:
        return self.records[-1].step if self.records else 0

    def append(self, record: StepRecord) -> None:
        """Journal a step (the tail is rewritten; ``chunk_size`` steps in the tail become a chunk)."""
        if record.step != self.last_step + len(record.requests):
            raise JournalError(f"journal: step {record.step} does not follow step {self.last_step}")
        self.records.append(record)
        self._flush()

    def add_fingerprint(self, fingerprint: Dict[str, dict]) -> None:
        """Attach the weights' fingerprint to the last step (before it is sealed in a chunk)."""
        if len(self.records) <= self._tail_start:
            raise JournalError(f"journal: step {self.last_step} is already sealed in a chunk")
        self.records[-1].fingerprint = fingerprint
        _write_records(self.root / TAIL, self.records[self._tail_start:])

    def seal(self) -> None:
        """Turn the tail into a chunk now (at the end of a run, so that nothing is rewritten later)."""
        tail = self.records[self._tail_start:]
        if tail:
            _write_records(self.root / _chunk_name(tail[0].step, tail[-1].step), tail)
            self._tail_start = len(self.records)
        (self.root / TAIL).unlink(missing_ok=True)

    def _flush(self) -> None:
        tail = self.records[self._tail_start:]
        _write_records(self.root / TAIL, tail)

    def maybe_seal(self) -> None:
        """Seal the tail once it holds ``chunk_size`` steps (called after a step's evaluation)."""
        if len(self.records) - self._tail_start >= self.chunk_size:
            self.seal()

    # ---------------------------------------------------------------- checks
    def check_requests(self, requests: Sequence, upto: int) -> None:
        """The journaled steps up to ``upto`` are the run's requests in order (JournalError naming the first that is not)."""
        i = 0
        for r in self.records:
            if r.step > upto:
                break
            for fields in r.requests:
                mine = request_fields(requests[i]) if i < len(requests) else None
                if mine != fields:
                    what = _first_field_difference(fields, mine)
                    raise JournalError(
                        f"journal step {r.step}: request {i} (case_id {fields.get('case_id')!r}) differs from the run's "
                        f"record {i} ({what}); the journal is of other data: use another out_dir or the same data"
                    )
                i += 1


def _first_field_difference(journaled: Mapping, here: Optional[Mapping]) -> str:
    if here is None:
        return "the run has fewer records"
    for key in journaled:
        if journaled.get(key) != here.get(key):
            return f"{key}={journaled.get(key)!r} journaled, {here.get(key)!r} here"
    return "fields differ"


class TargetSource:
    """Fixed targets: z* of each request read from another run's journal or a target bank.

    ``path`` is an out_dir or a published results folder (holding ``journal/``) or the journal
    directory itself. Requests are found by their full fields (case_id included), so a run may use
    any subset of the journaled requests, in any batch size.
    """

    def __init__(self, path: Path, header: dict, by_request: Dict[str, torch.Tensor]) -> None:
        self.path = path
        self.header = header
        self._by_request = by_request

    @classmethod
    def open(cls, path) -> "TargetSource":
        path = Path(path)
        if path.name == JOURNAL_DIR and (path / HEADER).is_file():
            path = path.parent
        if not Journal.exists(path):
            raise JournalError(f"targets={str(path)!r}: no {JOURNAL_DIR}/{HEADER} there; give a run's out_dir, a published "
                               "results folder or a bank made with `python -m betaedit_plugin.run bank ...`")
        journal = Journal.open(path)
        table: Dict[str, torch.Tensor] = {}
        for r in journal.records:
            for j, fields in enumerate(r.requests):
                table.setdefault(json.dumps(fields, sort_keys=True), r.z_star[:, j].clone())
        return cls(path, journal.header, table)

    def check_compatible(self, model_identity: Mapping, target_fields: Mapping) -> None:
        """Raise JournalError naming the first setting z* depends on that differs from this run's."""
        theirs = self.header.get("identity", {}).get("model", {})
        for key in ("name", "path"):
            if theirs.get(key) != model_identity.get(key):
                raise JournalError(
                    f"targets={str(self.path)!r} were computed on model.{key}={theirs.get(key)!r}, this run uses "
                    f"{model_identity.get(key)!r}; use targets of this model"
                )
        saved = self.header.get("target_fields", {})
        for key in TARGET_FIELDS:
            if json.dumps(saved.get(key)) != json.dumps(target_fields.get(key)):
                raise JournalError(
                    f"targets={str(self.path)!r} were computed with hparams.{key}={saved.get(key)!r}, this run has "
                    f"{target_fields.get(key)!r}; z* depends on it: use the same value or other targets"
                )

    def holds(self, requests: Sequence) -> bool:
        """Whether every one of ``requests`` has a z* here."""
        return all(json.dumps(request_fields(r), sort_keys=True) in self._by_request for r in requests)

    def lookup(self, requests: Sequence) -> torch.Tensor:
        """(d_v, n) targets of ``requests`` (JournalError naming the first one the source lacks)."""
        cols = []
        for r in requests:
            z = self._by_request.get(json.dumps(request_fields(r), sort_keys=True))
            if z is None:
                raise JournalError(
                    f"targets={str(self.path)!r} hold no z* for case_id {r.case_id!r} ({r.prompt!r} -> {r.target_new!r}); "
                    "make a bank with at least num_edits records of this data"
                )
            cols.append(z)
        return torch.stack(cols, dim=1)

    @property
    def context_templates(self):
        return self.header.get("context_templates")


def target_fields(hparams) -> dict:
    """The `TARGET_FIELDS` of a hparams object, JSON-plain."""
    fp = hparams.fingerprint()
    return json.loads(json.dumps({k: fp.get(k) for k in TARGET_FIELDS}))
