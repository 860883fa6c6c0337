"""The text corpora behind C0 and the token streams the statistics pass runs on.

A corpus is a bundled name (``'wiki_vital'``, see :data:`BUNDLED_CORPORA`) or a ``.txt`` /
``.txt.gz`` file with one text per line; :func:`load_corpus` takes its first ``n`` non-empty
lines. For the pass, texts are tokenized (truncated to ``max_length``), sorted by token length
and right-padded per batch (right padding does not change the hidden states of the real tokens
of a causal model; the padding is masked out).
"""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

import torch

from .._suggest import did_you_mean

__all__ = ["BUNDLED_CORPORA", "corpus_path", "load_corpus"]


_RESOURCES = Path(__file__).resolve().parent.parent / "resources"
BUNDLED_CORPORA: Dict[str, str] = {
    "wiki_vital": "corpus/wiki_vital_summaries_en.txt.gz",
}
"""Corpus names usable as ``mom2_dataset``, relative to ``betaedit_plugin/resources``."""


def corpus_path(name_or_path: Union[str, Path]) -> Path:
    """The text file behind a corpus name (``'wiki_vital'``) or a ``.txt`` / ``.txt.gz`` path.

    Raises:
        KeyError: unknown corpus name (with "Did you mean" and the bundled names).
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is not ``.txt`` / ``.txt.gz``.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"mom2_dataset={name_or_path!r}: expected a corpus name such as 'wiki_vital' or a path")
    if isinstance(name_or_path, str) and name_or_path in BUNDLED_CORPORA:
        return _RESOURCES / BUNDLED_CORPORA[name_or_path]
    path = Path(name_or_path).expanduser()
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or os.sep in text or text.endswith((".txt", ".gz"))
    if not path.exists():
        if looks_like_path:
            raise FileNotFoundError(
                f"mom2_dataset={text!r}: no such file; give an existing .txt/.txt.gz file (one text per line) "
                f"or one of the bundled corpora {sorted(BUNDLED_CORPORA)}"
            )
        raise KeyError(
            f"Unknown corpus mom2_dataset={text!r}." + did_you_mean(text, sorted(BUNDLED_CORPORA), n=3, cutoff=0.5)
            + ", or a path to a .txt/.txt.gz file with one text per line."
        )
    if not path.is_file() or not path.name.endswith((".txt", ".txt.gz")):
        raise ValueError(
            f"mom2_dataset={text!r}: expected a .txt or .txt.gz file with one text per line"
        )
    return path


def _read_lines(path: Path) -> Iterable[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield line


def load_corpus(name_or_path: Union[str, Path], n: int) -> List[str]:
    """The first ``n`` non-empty texts (lines, stripped) of a corpus.

    Args:
        name_or_path: ``'wiki_vital'`` (bundled Wikipedia summaries, CC BY-SA 4.0) or a
            ``.txt`` / ``.txt.gz`` file with one text per line.
        n: number of texts wanted (fewer are returned, with a warning, if the corpus is short).

    Raises:
        ValueError: ``n`` is not a positive int, or the corpus holds no non-empty line.
        KeyError / FileNotFoundError: see :func:`corpus_path`.
    """
    _check_positive_int("n_samples", n)
    path = corpus_path(name_or_path)
    texts: List[str] = []
    for line in _read_lines(path):
        line = line.strip()
        if line:
            texts.append(line)
            if len(texts) == n:
                break
    if not texts:
        raise ValueError(
            f"mom2_dataset={str(name_or_path)!r} ({path}) holds no usable text: it needs non-empty lines, "
            "one text per line; use the bundled 'wiki_vital' corpus or fill the file"
        )
    if len(texts) < n:
        warnings.warn(
            f"mom2_dataset={str(name_or_path)!r} has only {len(texts)} non-empty lines; "
            f"mom2_n_samples={n} asked for more, using {len(texts)}",
            stacklevel=2,
        )
    return texts


def _check_positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}={value!r}: expected a positive int")
    return value


def _corpus_name(corpus: Union[str, Path]) -> str:
    """The corpus as the cache key names it: a bundled name, else the resolved path."""
    return corpus if isinstance(corpus, str) and corpus in BUNDLED_CORPORA else str(Path(corpus).expanduser().resolve())


def _tokenize(tok: Any, texts: Sequence[str], max_length: int) -> List[List[int]]:
    enc = tok(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    return [ids for ids in enc["input_ids"] if len(ids) > 0]


def _corpus_tokens(tok: Any, corpus: Union[str, Path], texts: List[str], max_length: int) -> List[List[int]]:
    """``texts`` tokenized (see `_tokenize`); ValueError naming the corpus when nothing is left."""
    seqs = _tokenize(tok, texts, max_length)
    if not seqs:
        raise ValueError(
            f"mom2_dataset={_corpus_name(corpus)!r}: the tokenizer produced no tokens for its {len(texts)} texts"
        )
    return seqs


def _batches(seqs: List[List[int]], batch_size: int, pad_id: int) -> Iterable[Tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded (input_ids, attention_mask) batches of similar length (longest first)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for start in range(0, len(order), batch_size):
        group = [seqs[i] for i in order[start:start + batch_size]]
        width = len(group[0])
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, seq in enumerate(group):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        yield ids, mask


def _pad_id(tok: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if isinstance(value, int):
            return value
    return 0  # masked out and, with right padding, invisible to the real tokens
