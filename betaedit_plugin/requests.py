"""The typed edit request every part of the package passes around."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional


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
                raise ValueError(
                    f"{name}={value!r} (case_id={self.case_id}): expected a non-empty string"
                )
        if "{}" not in self.prompt and self.subject not in self.prompt:
            raise ValueError(
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
            raise ValueError(
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
        return self.template.format(self.subject)

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
