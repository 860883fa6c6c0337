"""The typed edit request every part of the package passes around, and the one place that checks
what an edit step is given: the requests (`as_requests`) and the context templates
(`check_context_templates`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, List, Literal, Mapping, Optional, Sequence

from .errors import RequestError

__all__ = [
    "EditRequest",
    "as_requests",
    "check_context_templates",
    "fill_subject",
    "naming_request",
    "FACT_TOKENS",
    "FactToken",
]

#: Where in the prompt the key is read (MEMIT's ``fact_token``): the last token of the prompt, or
#: the first / last token of the subject, or the first token after the subject's last one.
FactToken = Literal["last", "subject_first", "subject_last", "subject_first_after_last"]
FACT_TOKENS = ("last", "subject_first", "subject_last", "subject_first_after_last")


def fill_subject(template: str, subject: str) -> str:
    """``template`` with its "{}" placeholder(s) replaced by ``subject``.

    Only "{}" is special: other braces are literal text ("In the set {x}, {} is" keeps "{x}"),
    unlike ``str.format``. Every prompt and template of the package is filled here.
    """
    return template.replace("{}", subject)


@contextlib.contextmanager
def naming_request(index: int, request: Any) -> Iterator[None]:
    """A ValueError raised in the block becomes a `RequestError` that names the item:
    "requests[<index>] (case_id <id>): <message>". Errors that already name their item pass as they are."""
    try:
        yield
    except RequestError as exc:
        if exc.index is not None:
            raise
        _raise_named(index, request, exc)
    except ValueError as exc:
        _raise_named(index, request, exc)


def _raise_named(index: int, request: Any, exc: ValueError) -> None:
    case_id = request.get("case_id") if isinstance(request, Mapping) else getattr(request, "case_id", None)
    raise RequestError(f"requests[{index}] (case_id {case_id}): {exc}", index=index, case_id=case_id) from None


@dataclass(frozen=True)
class EditRequest:
    """One fact to write: ``prompt`` (subject filled in) should continue with ``target_new``.

    Args:
        prompt: the prompt with the subject filled in, e.g. "The mother tongue of Danielle Darrieux is".
            A MEMIT-style template with "{}" in place of the subject is accepted too.
        subject: the subject string; it must occur in ``prompt``.
        target_new: the new object, e.g. "English" (a leading space is added where needed by the tokenizer code).
        ground_truth: the true object, for probability comparisons (optional).
        rephrase_prompts: paraphrases of ``prompt`` (generality).
        locality_prompts / locality_ground_truth: neighbourhood prompts and their true answers (specificity).
        case_id: the dataset's id, if any.
    """

    prompt: str
    subject: str
    target_new: str
    ground_truth: Optional[str] = None
    rephrase_prompts: tuple = ()
    locality_prompts: tuple = ()
    locality_ground_truth: tuple = ()
    case_id: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("prompt", "subject", "target_new"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise RequestError(
                    f"{name}={value!r} (case_id={self.case_id}): expected a non-empty string"
                )
        if "{}" not in self.prompt and self.subject not in self.prompt:
            raise RequestError(
                f"subject={self.subject!r} does not occur in prompt={self.prompt!r} (case_id={self.case_id}): "
                "the subject must appear verbatim in the prompt, or the prompt must hold '{}' in its place"
            )
        for name in ("rephrase_prompts", "locality_prompts", "locality_ground_truth"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
        if len(self.locality_ground_truth) not in (0, len(self.locality_prompts)):
            raise RequestError(
                f"locality_ground_truth has {len(self.locality_ground_truth)} entries but locality_prompts has "
                f"{len(self.locality_prompts)} (case_id={self.case_id}): give one answer per prompt"
            )

    @property
    def template(self) -> str:
        """The prompt with the (last occurrence of the) subject replaced by "{}"."""
        if "{}" in self.prompt:
            return self.prompt
        head, _, tail = self.prompt.rpartition(self.subject)
        return head + "{}" + tail

    @property
    def filled_prompt(self) -> str:
        return fill_subject(self.template, self.subject)

    @classmethod
    def from_easyedit(cls, request: Mapping[str, Any]) -> "EditRequest":
        """From EasyEdit's request dict ({'prompt', 'subject', 'target_new', 'ground_truth', ...})."""
        target = request.get("target_new")
        if isinstance(target, Mapping):  # ROME/MEMIT record style {'str': ...}
            target = target.get("str")
        truth = request.get("ground_truth")
        if isinstance(truth, Mapping):
            truth = truth.get("str")
        if isinstance(truth, (list, tuple)):
            truth = truth[0] if truth else None
        rephrase = request.get("rephrase_prompt") or request.get("rephrase_prompts") or ()
        loc_prompts, loc_answers = [], []
        for item in (request.get("locality") or {}).values():
            prompts, answers = item.get("prompt"), item.get("ground_truth")
            prompts = [prompts] if isinstance(prompts, str) else list(prompts or [])
            answers = [answers] if isinstance(answers, str) else list(answers or [])
            loc_prompts += prompts
            loc_answers += [a[0] if isinstance(a, (list, tuple)) else a for a in answers]
        return cls(
            prompt=request.get("prompt"),
            subject=request.get("subject"),
            target_new=target,
            ground_truth=truth if truth != "<|endoftext|>" else None,
            rephrase_prompts=rephrase,
            locality_prompts=tuple(loc_prompts),
            locality_ground_truth=tuple(loc_answers),
            case_id=request.get("case_id"),
        )


def as_requests(requests: Any, allow_dicts: bool = True) -> List[EditRequest]:
    """One request or a sequence of them, as a non-empty list of `EditRequest`.

    Args:
        requests: `EditRequest` objects or, with ``allow_dicts``, EasyEdit request dicts
            ({'prompt', 'subject', 'target_new', ...}, see `EditRequest.from_easyedit`).
        allow_dicts: False where only typed requests are taken (compute_ks, compute_z).
    Raises:
        TypeError: an item is neither an EditRequest nor (with ``allow_dicts``) a mapping.
        ValueError: the sequence is empty; `RequestError` (a ValueError): a request is invalid (subject
            missing, empty target...), named by its index and case_id.
    """
    if isinstance(requests, EditRequest) or (allow_dicts and isinstance(requests, Mapping)):
        requests = [requests]
    if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Sequence):
        raise TypeError(f"requests: expected a list of EditRequest or EasyEdit dicts, got {type(requests).__name__}")
    if len(requests) == 0:
        raise ValueError("requests=[]: expected at least one edit request")
    out = []
    for i, r in enumerate(requests):
        if isinstance(r, EditRequest):
            out.append(r)
        elif allow_dicts and isinstance(r, Mapping):
            with naming_request(i, r):
                out.append(EditRequest.from_easyedit(r))
        else:
            raise TypeError(
                f"requests[{i}] is a {type(r).__name__}: expected EditRequest "
                "(use EditRequest.from_easyedit(dict) for EasyEdit request dicts)"
            )
    return out


def check_context_templates(context_templates: Any) -> List[List[str]]:
    """``[[template, ...], ...]`` (MEMIT's context templates) as lists; every template holds "{}".

    Raises:
        ValueError: not a non-empty list of non-empty lists of strings with "{}".
    """
    if isinstance(context_templates, str) or not isinstance(context_templates, (list, tuple)) or not context_templates:
        raise ValueError(
            f"context_templates={context_templates!r}: expected a non-empty list of groups, e.g. [['{{}}']]"
        )
    groups = []
    for i, group in enumerate(context_templates):
        if isinstance(group, str) or not isinstance(group, (list, tuple)) or not group:
            raise ValueError(f"context_templates[{i}]={group!r}: expected a non-empty list of strings")
        for t in group:
            if not isinstance(t, str) or "{}" not in t:
                raise ValueError(f"context_templates[{i}] holds {t!r}: every template must contain '{{}}' for the prompt")
        groups.append(list(group))
    return groups
