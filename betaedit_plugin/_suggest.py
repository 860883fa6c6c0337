"""One "did you mean" for every error about an unknown name (method, model, dataset, key, module...).

    raise KeyError(f"Unknown dataset {name!r}." + did_you_mean(name, DATASETS))
    # -> "Unknown dataset 'zsr'. Did you mean 'zsre'? Available: counterfact, zsre"
"""

from __future__ import annotations

import difflib
from typing import Iterable, Optional, Sequence

__all__ = ["close_matches", "did_you_mean"]


def close_matches(value: object, options: Iterable[object], n: int = 1, cutoff: float = 0.6) -> list:
    """Up to ``n`` of ``options`` (as strings) closest to ``value``, best first."""
    return difflib.get_close_matches(str(value), [str(o) for o in options], n=n, cutoff=cutoff)


def did_you_mean(
    value: object,
    options: Iterable[object],
    *,
    n: int = 1,
    cutoff: float = 0.6,
    available: bool = True,
    fallback: Optional[Sequence[str]] = None,
) -> str:
    """Text to append to an error message (starts with a space; empty when there is nothing to say).

    Args:
        value: the unknown name.
        options: the known names.
        n: how many suggestions at most: " Did you mean 'x'?" for 1, " Did you mean: 'x', 'y'?" for more.
        cutoff: similarity (0..1) a suggestion needs.
        available: add " Available: a, b, c" (the options, in their order).
        fallback: suggestions to give when none is close enough.
    """
    options = [str(o) for o in options]
    hints = close_matches(value, options, n=n, cutoff=cutoff) or list(fallback or [])[:n]
    text = ""
    if hints:
        text = f" Did you mean {hints[0]!r}?" if n == 1 else f" Did you mean: {', '.join(repr(h) for h in hints)}?"
    if available and options:
        text += f" Available: {', '.join(options)}"
    return text
