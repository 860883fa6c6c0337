"""Edits before and after a refactor are bit-identical: every registered method on every tiny model.

For each registered method x tiny architecture x solver setting (default; the dense inverse form;
float32 with a low-rank correction refreshed every 3 keys), a fresh tiny model (fixed seed, random
prior covariances, fixed context templates) receives 3 single edits and one batch of 2 through
`BetaEditor.apply`. Recorded per case: W_t - W_0 at every edited layer and every tensor of the
editor's `state_dict()`.

    python benchmarks/check_identical.py --save before.safetensors      # on the old code
    python benchmarks/check_identical.py --compare before.safetensors   # on the new code

``--compare`` prints one JSON line (cases, tensors compared, the ones that differ or are missing)
and exits 1 unless every weight delta is bit-equal (``torch.equal``). State tensors are reported
the same way; a renamed state key shows as missing/new, not as a failure of the edits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = {"default": {}, "dense": {"inverse_form": "dense"},
           "f32": {"compute_dtype": "float32", "refresh_every": 3}}
TEMPLATES = [["{}"], ["The. {}", "A. {}"]]
PROMPTS = [
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English"),
    ("Michael Jordan plays the sport of", "Michael Jordan", "soccer"),
    ("The official language of Japan is", "Japan", "English"),
    ("Toyota was founded in", "Toyota", "Germany"),
    ("Lionel Messi is a professional", "Lionel Messi", "singer"),
]


def _spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    ev = torch.cat([torch.full((d // 2,), 1e-3, dtype=torch.float64),
                    torch.rand(d - d // 2, generator=g, dtype=torch.float64) + 0.5])
    return q @ torch.diag(ev) @ q.T


def _hparams(method):
    extra = {"BetaEdit": dict(lambda1=5.0, lambda2=1.0, tau=2), "MEMIT": dict(mom2_update_weight=5.0)}
    fields = set(method.hparams_class.__dataclass_fields__)
    over = {k: v for k, v in {**extra.get(method.name, {}), "L2": 1.0}.items() if k in fields}
    return method.hparams_class(layers=[1, 2], v_num_grad_steps=4, v_loss_layer=-1, **over)


def _flatten(prefix: str, obj, out: dict) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().cpu().contiguous()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(f"{prefix}.{i}", v, out)


def record() -> dict:
    from betaedit_plugin import BetaEditor, EditRequest
    from betaedit_plugin.methods import METHODS
    from betaedit_plugin.models.tiny import TINY_ARCHS, build_tiny

    reqs = [EditRequest(p, s, t, case_id=i) for i, (p, s, t) in enumerate(PROMPTS)]
    out = {}
    for method in METHODS:
        hp = _hparams(method)
        for arch in TINY_ARCHS:
            for sname, opts in SOLVERS.items():
                case = f"{method.name}/{arch}/{sname}"
                torch.manual_seed(0)
                model, tok = build_tiny(arch, seed=0)
                layout = BetaEditor(model, tok, hp).layout
                priors = {l: _spd(layout.key_dim(model, l), 100 + l) for l in hp.layers}
                editor = BetaEditor(model, tok, hp, prior_covs=priors, context_templates=TEMPLATES,
                                    solver_options=opts)
                w0 = {l: layout.rewrite_module(model, l).weight.detach().clone() for l in hp.layers}
                for batch in ([reqs[0]], [reqs[1]], [reqs[2]], reqs[3:5]):
                    editor.apply(batch)
                for l in hp.layers:
                    out[f"{case}|delta.{l}"] = (layout.rewrite_module(model, l).weight.detach() - w0[l]).contiguous()
                _flatten(f"{case}|state", editor.state_dict(), out)
                print(case, file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="write the recorded tensors to this .safetensors file")
    group.add_argument("--compare", help="compare with a file written by --save")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from safetensors.torch import load_file, save_file

    now = record()
    if args.save:
        save_file(now, args.save)
        print(json.dumps({"saved": args.save, "tensors": len(now)}))
        return
    before = load_file(args.compare)
    cases = sorted({k.split("|")[0] for k in before})
    differ = [k for k in before if k in now and not (now[k].shape == before[k].shape and torch.equal(now[k], before[k]))]
    missing = [k for k in before if k not in now]
    new = [k for k in now if k not in before]
    deltas_ok = not any("|delta." in k for k in differ + missing)
    print(json.dumps({"cases": len(cases), "compared": len(before), "weight_deltas_bit_identical": deltas_ok,
                      "differ": differ[:20], "missing": missing[:20], "new": new[:20]}))
    raise SystemExit(0 if deltas_ok and not differ else 1)


if __name__ == "__main__":
    main()
