"""Side by side: ``comparison.md`` and comparison plots from several runs' ``results.json``.

Reads results.json of format 1 (every version of the runner so far). Runs are listed in the order
of the method registry (MEMIT, AlphaEdit, ..., BetaEdit), then by directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

__all__ = ["compare", "screening", "update_comparison"]


def _method_order() -> dict:
    from ..methods import METHODS, get_method

    get_method("BetaEdit")  # loads the shipped methods
    order = {}
    for i, m in enumerate(METHODS):
        for name in m.names:
            order.setdefault(str(name).lower(), i)
    return order


def compare(out_dirs: Sequence[Any], dest: Any) -> Path:
    """Build ``comparison.md`` and comparison plots in ``dest`` from several runs' out_dirs.

    Returns:
        the path of comparison.md.
    Raises:
        FileNotFoundError: a directory holds no results.json.
    """
    from ..eval.report import load_results, write_comparison

    order = _method_order()
    loaded = [(Path(d), load_results(Path(d))) for d in out_dirs]
    loaded.sort(key=lambda item: (order.get(str(item[1].get("method")).lower(), len(order)), str(item[0])))
    runs: dict = {}
    sources: dict = {}
    for d, res in loaded:
        label = str(res.get("method", Path(d).name))
        if label in runs:
            label = f"{label} ({Path(d).name})"
        runs[label], sources[label] = res, d
    return write_comparison(runs, Path(dest), sources)


def update_comparison(cfg: Mapping) -> Optional[Path]:
    """Refresh ``<run_root>/comparison.md`` from every run directory under ``run_root``
    (when this run's ``out_dir`` lies directly in it)."""
    root, out_dir = Path(cfg["run_root"]).resolve(), Path(cfg["out_dir"]).resolve()
    if out_dir.parent != root:
        return None
    dirs = sorted(p for p in root.iterdir() if (p / "results.json").is_file())
    return compare(dirs, root)


def screening(out_dirs: Sequence[Any], dest: Any, *, choose_step: int = 250, min_efficacy: float = 0.95) -> Path:
    """Build ``screening.md`` and the screening figures in ``dest`` from fixed-target runs' out_dirs
    (named by their directory); a target bank among them (``mode=bank``) is left out.

    Raises:
        FileNotFoundError: a directory holds no results.json.
    """
    from ..eval.report import load_results
    from ..eval.screening import write_screening

    runs = {}
    for d in sorted(Path(d) for d in out_dirs):
        results = load_results(d)
        if (results.get("config") or {}).get("mode") != "bank":
            runs[d.name] = results
    return write_screening(runs, Path(dest), choose_step=choose_step, min_efficacy=min_efficacy)
