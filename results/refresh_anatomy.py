"""What BetaEdit's projector refresh changes, read from a run's checkpoint (its editor state).

    python results/refresh_anatomy.py CHECKPOINT_DIR [--out FILE.md]

At a refresh BetaEdit replaces the null space of C0 (AlphaEdit's projector) by the null space of
S = (H / t + lambda1 C0) / (lambda1 + 1), H the sum of the t edited keys' k k^T. Per edited layer this
prints, from the state the checkpoint holds (C0, H, t and the projector in use, from the last refresh):

* ``null(C0)``, ``null(S)``: their dimensions at the run's ``nullspace_threshold``;
* ``near threshold``: eigenvalues of C0 within a factor 2 of the threshold, the directions that a
  small change of the matrix can move across it;
* ``angle``: the largest principal angle between null(C0) and the projector in use, and ``angle, deep``
  the same for C0's directions with eigenvalue below threshold / 2 (deep inside its null space);
* ``pre-trained keys in null(C0)``, ``... in P``: the share of C0's trace (the pre-trained keys' energy)
  inside the "null" space, i.e. what the projection lets edits reach of the pre-trained keys; 0 for
  an exact null space;
* ``edited keys in null(C0)``, ``... in P``: the share of the edited keys' energy tr(U^T H U) / tr(H)
  in C0's null space and in the projector in use. The refresh protects past edits only as far as
  the second is below the first: the next edits are written within P, so keys left in P are
  overwritten by later edits (apart from what the H term of the normal matrix holds back).

Reads only the checkpoint (`editor_state.safetensors`, its digests checked); nothing is computed on a model.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from betaedit_plugin.linalg.nullspace import energy_share, nullspace_split, protected_cov
from betaedit_plugin.methods.betaedit import largest_principal_angle
from betaedit_plugin.state import load_state_file

COLUMNS = ("layer", "t", "null(C0)", "null(S)", "P in use", "near threshold", "angle", "angle, deep",
           "pre-trained keys in null(C0)", "pre-trained keys in P", "edited keys in null(C0)", "edited keys in P",
           "tr(H/t) / tr(C0)")


def anatomy(checkpoint: Path) -> tuple:
    """(meta, rows): the run's settings and one row (dict over `COLUMNS`) per edited layer."""
    tensors, meta = load_state_file(checkpoint / "editor_state.safetensors")  # digests checked
    hp, t = meta["fingerprint"]["hparams"], meta["step"]
    thr = float(hp["nullspace_threshold"])
    rows = []
    for l in sorted({int(k.split(".")[1]) for k in tensors}):
        c0, hist, in_use = (tensors[f"layers.{l}.{name}"] for name in ("prior_cov", "hist_cov", "solver.basis"))
        u0, eig0 = nullspace_split(c0, thr)
        us, _ = nullspace_split(protected_cov(hist, t, c0, float(hp["lambda1"])), thr)
        deep = u0[:, eig0[eig0 < thr] < thr / 2]
        rows.append({
            "layer": l, "t": t, "null(C0)": u0.shape[1], "null(S)": us.shape[1], "P in use": in_use.shape[1],
            "near threshold": int(((eig0 > thr / 2) & (eig0 < 2 * thr)).sum()),
            "angle": largest_principal_angle(u0, in_use), "angle, deep": largest_principal_angle(deep, in_use),
            "pre-trained keys in null(C0)": energy_share(u0, c0), "pre-trained keys in P": energy_share(in_use, c0),
            "edited keys in null(C0)": energy_share(u0, hist), "edited keys in P": energy_share(in_use, hist),
            "tr(H/t) / tr(C0)": float(torch.trace(hist) / t / torch.trace(c0)),
        })
    return {"method": meta["method"], "step": t, "last_refresh": meta.get("last_refresh"), "hparams": hp}, rows


def _cell(column: str, v) -> str:
    if column.startswith("angle"):
        return "–" if math.isnan(v) else f"{v:.1f} deg"
    if " keys in " in column:
        return f"{v:.3f}"
    if column.startswith("tr("):
        return f"{v:.2f}"
    return str(v)


def markdown(meta: dict, rows: list) -> str:
    hp = meta["hparams"]
    head = (f"{meta['method']} at step {meta['step']} (last refresh {meta['last_refresh']}): lambda1 {hp.get('lambda1')}, "
            f"lambda2 {hp.get('lambda2')}, tau {hp.get('tau')}, threshold {hp['nullspace_threshold']}")
    lines = [head, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(c, r[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a run's checkpoint folder (checkpoints/step-NNNNNNN)")
    p.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if not (args.checkpoint / "editor_state.safetensors").is_file():
        p.error(f"checkpoint={str(args.checkpoint)!r} holds no editor_state.safetensors; give a folder "
                "checkpoints/step-NNNNNNN of a BetaEdit run")
    text = markdown(*anatomy(args.checkpoint))
    print(text, end="")
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
