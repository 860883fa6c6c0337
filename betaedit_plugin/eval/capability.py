"""General capability probes: held-out perplexity (WikiText-2 test) and an MMLU probe set.

Both read bundled files from ``betaedit_plugin/resources/`` (attribution in ``SOURCES.md``).
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..data import read_json_records, resource_path
from ..models.tokens import context_limit, model_device
from .scoring import next_token_logprobs, score_targets

WIKITEXT_TEST = "wikitext/wikitext2_test.tokens.txt.gz"
MMLU = "glue_eval/mmlu.json.gz"
MMLU_CHANCE = 0.25
LETTERS = ("A", "B", "C", "D")


def heldout_token_ids(tok, n_tokens: int, path: Union[str, Path, None] = None) -> torch.Tensor:
    """The first ``n_tokens`` token ids of a text file (default: WikiText-2 test), 1-D long tensor.

    Lines are read until the text is long enough, joined with newlines and tokenized once.

    Raises:
        ValueError: ``n_tokens`` < 2 or the file is shorter than that.
    """
    if not isinstance(n_tokens, int) or n_tokens < 2:
        raise ValueError(f"n_tokens={n_tokens!r}: expected an int >= 2 (tokens of held-out text)")
    path = Path(path) if path is not None else resource_path(WIKITEXT_TEST)
    opener = gzip.open if path.suffix == ".gz" else open
    lines: list = []
    chars_wanted = 8 * n_tokens
    ids: list = []
    with opener(path, "rt", encoding="utf-8") as stream:
        for line in stream:
            lines.append(line.rstrip("\n"))
            if sum(map(len, lines)) >= chars_wanted:
                ids = list(tok("\n".join(lines), add_special_tokens=False)["input_ids"])
                if len(ids) >= n_tokens:
                    break
                chars_wanted *= 2
        else:
            ids = list(tok("\n".join(lines), add_special_tokens=False)["input_ids"])
    if len(ids) < n_tokens:
        raise ValueError(f"n_tokens={n_tokens}: {path.name} has only {len(ids)} tokens; ask for fewer")
    return torch.tensor(ids[:n_tokens], dtype=torch.long)


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    *,
    window: int = 256,
    batch_size: int = 4,
    device: Optional[torch.device] = None,
) -> dict:
    """Perplexity of a token stream cut into non-overlapping windows.

    Each window of ``window`` tokens is scored on its own: every token except the window's first is
    predicted from the tokens before it in the window (capped at the model's context length). ppl = exp(total NLL / predicted tokens).

    Args:
        token_ids: 1-D long tensor.

    Returns:
        {"ppl": float, "nll": mean NLL (nats), "n_tokens": number of predicted tokens, "windows": [[summed
        NLL, predicted tokens] of each window, in order]} (the windows pair two models' perplexities on the
        same text: `betaedit_plugin.eval.report.ppl_ratio`).
    """
    if token_ids.dim() != 1 or token_ids.numel() < 2:
        raise ValueError(f"token_ids has shape {tuple(token_ids.shape)}: expected a 1-D tensor of at least 2 ids")
    if window < 2:
        raise ValueError(f"window={window!r}: expected an int >= 2")
    device = device or model_device(model)
    limit = context_limit(model)
    window = min(window, limit) if limit else window
    chunks = [token_ids[i: i + window] for i in range(0, token_ids.numel(), window)]
    chunks = [c for c in chunks if c.numel() >= 2]
    windows = []
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start: start + batch_size]
        width = max(c.numel() for c in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, c in enumerate(batch):
            ids[i, : c.numel()] = c
            mask[i, : c.numel()] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.double()
        ids, mask = ids.to(logits.device), mask.to(logits.device)  # a split model's head may sit elsewhere
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logprobs.gather(2, ids[:, 1:, None])[..., 0]
        valid = mask[:, 1:].bool()
        windows += [[float(nll[i][valid[i]].sum()), int(valid[i].sum())] for i in range(len(batch))]
    count = sum(n for _, n in windows)
    mean = sum(t for t, _ in windows) / count
    return {"ppl": math.exp(mean), "nll": mean, "n_tokens": count, "windows": windows}


def load_mmlu(n: int, path: Union[str, Path, None] = None) -> list:
    """``n`` MMLU questions spread evenly over the bundled probe set (deterministic).

    Returns:
        list of dicts with question, subject, choices (4 str), answer (int 0-3).
    """
    records = read_json_records(path if path is not None else resource_path(MMLU))
    if not isinstance(n, int) or n < 1 or n > len(records):
        raise ValueError(f"n={n!r}: expected an int between 1 and {len(records)} (MMLU questions)")
    return [records[(i * len(records)) // n] for i in range(n)]


def mmlu_prompt(record: dict) -> str:
    """Zero-shot prompt ending in "Answer:"; the choices are scored as " A" ... " D"."""
    subject = str(record.get("subject", "")).replace("_", " ")
    lines = [f"The following is a multiple choice question about {subject}.", "", record["question"].strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, record["choices"])]
    lines.append("Answer:")
    return "\n".join(lines)


def _single_letter_ids(tok, prompt: str) -> Optional[list]:
    """Ids of " A".." D" when each is one token appended to ``prompt``, else None."""
    base = list(tok(prompt)["input_ids"])
    ids = []
    for letter in LETTERS:
        full = list(tok(prompt + " " + letter)["input_ids"])
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            return None
        ids.append(full[-1])
    return ids if len(set(ids)) == len(ids) else None


def mmlu_accuracy(model: torch.nn.Module, tok, n: int, *, batch_size: int = 8, records: Optional[Sequence[dict]] = None) -> dict:
    """Accuracy on ``n`` MMLU questions by the log-likelihood of the four answer letters.

    When " A" ... " D" are single tokens after the prompt, one forward pass per question gives all
    four; otherwise each continuation is scored teacher-forced.

    Returns:
        {"mmlu_acc": float, "mmlu_n": n, "mmlu_chance": 0.25}.
    """
    records = list(records) if records is not None else load_mmlu(n)
    prompts = [mmlu_prompt(r) for r in records]
    letter_ids = _single_letter_ids(tok, prompts[0])
    if letter_ids is not None:
        lp = next_token_logprobs(model, tok, prompts, letter_ids, batch_size=batch_size)
    else:
        scores = score_targets(
            model, tok, [p for p in prompts for _ in LETTERS], [l for _ in prompts for l in LETTERS], batch_size=batch_size
        )
        lp = torch.tensor([s.mean_logprob for s in scores], dtype=torch.float64).view(len(prompts), len(LETTERS))
    pred = lp.argmax(dim=1)
    gold = torch.tensor([int(r["answer"]) for r in records])
    return {"mmlu_acc": float((pred == gold).double().mean()), "mmlu_n": len(records), "mmlu_chance": MMLU_CHANCE}
