"""Which edited layer raises the perplexity: a run's weight change W_t - W_0 put back one layer at a time.

    python results/ppl_anatomy.py RUN_DIR[=EDITED.safetensors] ... [--out FILE.md]

For each run (a results folder of the campaign, e.g. results/smollm2-counterfact-n1000/betaedit) the
edited weights W_t of its layers come from its newest checkpoint (``checkpoints/step-N``, the editor
state's ``layers.<l>.w``) or, where the machine keeps none, from ``RUN_DIR=FILE``: the state dict that
``python -m betaedit_plugin.run replay RUN_DIR --save FILE.safetensors`` writes. On SmolLM2 with the
run's held-out text (``eval.ppl_tokens`` of WikiText-2, ``eval.ppl_window``, as its evaluation points)
it prints the perplexity of the unedited model, of the edited one (which must reproduce the run's
recorded point: checked), of each layer's change alone and of the edited model without each layer's
change, beside the layer's relative leakage and ||W_t - W_0||_F at that point (from results.json).
Where the changes alone compound to less than the whole rise, the rest comes from their interaction:
a layer's change alters the keys that every later edited layer reads, which the leakage (measured
with the unedited model's keys, C0) does not see.

``--key-drift`` also collects the keys each edited layer reads in the edited model (the run's corpus
and ``mom2_*`` settings) and compares them with the unedited model's C0: how far they moved, how much
of their energy now lies in null(C0) (where AlphaEdit and BetaEdit write), and the relative leakage
that the edited model's keys see, against the recorded one (measured with C0).

Reads the run's files only; loads SmolLM2 once and computes 2 + 2 x layers perplexities a run.

``--heldout N`` asks instead whether a run's perplexity rise holds on more text than its evaluation
points score (2,048 tokens: 8 windows): the unedited and each edited model on the first N tokens of
WikiText-2 test (whose first windows must reproduce the run's recorded ones) and of its validation
split (another text, from ../shared/data), each run's ratio to the unedited model and to every other
run paired over the windows (`ppl_ratio`: Student's t; consecutive windows of one article are not
independent, so the intervals lean narrow). With ``--out FILE.md`` it also writes ``FILE.json``, every
window's NLL, so that runs measured on another day (whose weights that machine no longer has) are paired
with new ones: ``--with FILE.json`` adds them, once the unedited model's windows show the same model on
the same text (without runs, it only joins the files' tables).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

import torch

from betaedit_plugin.eval.capability import heldout_token_ids, perplexity
from betaedit_plugin.covariance.cache import default_stats_dir
from betaedit_plugin.eval.metrics import layer_diagnostics
from betaedit_plugin.linalg.nullspace import energy_share, nullspace_split
from betaedit_plugin.models.smollm2 import load_smollm2
from betaedit_plugin.state import load_state_file

#: the recorded point's perplexity must be reproduced this closely (float noise of another thread count)
REPRODUCED_REL = 1e-4
#: the second text of ``--heldout``: WikiText-2's validation split (not bundled: ../shared/data)
VALID_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus" / "wikitext2_valid.tokens.txt.gz"


def edited_weights(run: Path, results: dict, weights: Path = None) -> tuple:
    """(step, {layer: W_t}) of ``run`` (its ``results``: results.json): from ``weights`` (a saved state
    dict) at the run's last journaled step, else from its newest checkpoint."""
    layers = sorted(int(k.split("/L")[1]) for k in results["evals"][-1] if k.startswith("perturbation/L"))  # the edited layers
    if weights is not None:
        from safetensors.torch import load_file

        state = load_file(str(weights))
        return results["edits_done"], {l: state[f"model.layers.{l}.mlp.down_proj.weight"] for l in layers}
    checkpoints = sorted((run / "checkpoints").glob("step-*[0-9]"))
    if not checkpoints:
        raise SystemExit(f"{run}: no checkpoint here; give RUN_DIR=FILE.safetensors from "
                         f"`python -m betaedit_plugin.run replay {run} --save FILE.safetensors`")
    tensors, meta = load_state_file(checkpoints[-1] / "editor_state.safetensors")  # digests checked
    return meta["step"], {l: tensors[f"layers.{l}.w"] for l in layers}


def load_weights(mlp: dict, weights: dict) -> None:
    """Copy ``weights`` ({layer: W}) into the ``mlp`` modules ({layer: down_proj}) of those layers."""
    with torch.no_grad():
        for l, w in weights.items():
            mlp[l].weight.copy_(w)


def anatomy(model, ids, run: Path, weights: Path = None, tok=None, stats_dir: Optional[Path] = None) -> dict:
    """One run's perplexities: {"step", "recorded", "edited", "layers": {l: {...}}}.

    With ``tok``, also how far the edited model's keys moved from the unedited model's (`key_drift`,
    from `key_moments` with the run's ``mom2_*`` settings; C0 from the statistics cache in
    ``stats_dir``, default ``$BETAEDIT_CACHE/stats``), per layer."""
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    ev = results["config"]["eval"]
    step, edited = edited_weights(run, results, weights)
    point = next(p for p in results["evals"] if p["step"] == step)
    mlp = {l: model.model.layers[l].mlp.down_proj for l in edited}
    base = {l: m.weight.detach().clone() for l, m in mlp.items()}

    def put(with_layers) -> None:
        load_weights(mlp, {l: edited[l] if l in with_layers else base[l] for l in mlp})

    def ppl(with_layers) -> float:
        put(with_layers)
        return perplexity(model, ids, window=ev["ppl_window"], batch_size=max(1, ev["batch_size"] // 4))["ppl"]

    out = {"step": step, "recorded": point.get("ppl"), "unedited": ppl(()), "edited": ppl(tuple(edited)), "layers": {}}
    for l in edited:
        out["layers"][l] = {"alone": ppl((l,)), "without": ppl(tuple(k for k in edited if k != l)),
                            "rel_leakage": point.get(f"rel_leakage/L{l}"), "perturbation": point.get(f"perturbation/L{l}")}
    if tok is not None:
        hp = results["hparams"]
        put(())
        c0 = key_moments(model, tok, hp, edited, cache_dir=stats_dir)
        put(tuple(edited))
        ct = key_moments(model, tok, hp, edited, cache_dir=None)
        thr = float(hp.get("nullspace_threshold") or 0.02)  # MEMIT's hparams have none: AlphaEdit's default
        for l in edited:
            out["layers"][l].update(key_drift(c0[l], ct[l], edited[l] - base[l], base[l], thr))
    put(())  # the model as it was loaded
    if out["recorded"] is not None and abs(out["edited"] - out["recorded"]) > REPRODUCED_REL * out["recorded"]:
        raise SystemExit(f"{run}: the edited weights give ppl {out['edited']:.4f}, the run recorded {out['recorded']:.4f} "
                         f"at step {step}: not the run's weights or not its held-out text")
    return out


def heldout(model, tok, runs, n_tokens: int, texts: dict) -> dict:
    """The perplexity of the unedited model and of each run's edited one on the first ``n_tokens`` of
    each of ``texts`` ({name: path; None: WikiText-2 test, the runs' own text}), windows as the runs'
    points (`perplexity`): {"window", "tokens", "steps": {run name: step}, "recorded": {run name:
    the recorded ratio to step 0, `ppl_ratio`, or None}, "texts": {text: {"unedited" or run name:
    perplexity dict}}}. ``runs``: (RUN_DIR, weights or None) as `anatomy`'s.

    Raises:
        SystemExit: the runs measured perplexity with other windows, or on WikiText-2 test a run's
            edited model does not reproduce its recorded perplexity on the tokens its points scored.
    """
    from betaedit_plugin.eval.report import ppl_ratio

    loaded, windows = [], set()
    for (run, weights), name in zip(runs, run_labels([run for run, _ in runs])):
        results = json.loads((run / "results.json").read_text(encoding="utf-8"))
        step, edited = edited_weights(run, results, weights)
        points = {p["step"]: p for p in results["evals"]}
        loaded.append((name, step, edited, points, results["config"]["eval"]))
        windows.add(results["config"]["eval"]["ppl_window"])
    if len(windows) != 1:
        raise SystemExit(f"the runs measured perplexity in windows of {sorted(windows)} tokens: compare runs of one kind")
    scored = max(ev["ppl_tokens"] for *_, ev in loaded)
    if n_tokens < scored:
        raise SystemExit(f"--heldout {n_tokens}: fewer tokens than the runs' points scored ({scored}); give more, "
                         f"e.g. {8 * scored}")
    window = windows.pop()
    mlp = {l: model.model.layers[l].mlp.down_proj for _, _, edited, _, _ in loaded for l in edited}
    base = {l: m.weight.detach().clone() for l, m in mlp.items()}
    out = {"window": window, "tokens": n_tokens, "steps": {name: step for name, step, *_ in loaded},
           "recorded": {name: ppl_ratio(points[step], points[0]) if 0 in points else None
                        for name, step, _, points, _ in loaded}, "texts": {}}
    for text, path in texts.items():
        ids = heldout_token_ids(tok, n_tokens, path)
        rows = {"unedited": perplexity(model, ids, window=window)}
        for name, step, edited, points, ev in loaded:
            try:
                load_weights(mlp, edited)
                rows[name] = perplexity(model, ids, window=window)
            finally:  # the model as it was loaded, whatever happened
                load_weights(mlp, base)
            first = rows[name]["windows"][:ev["ppl_tokens"] // window]  # the tokens the run's points scored
            again = math.exp(sum(x for x, _ in first) / sum(n for _, n in first))
            recorded = points[step].get("ppl")
            if path is None and recorded is not None and abs(again - recorded) > REPRODUCED_REL * recorded:
                raise SystemExit(f"{name}: its edited weights give ppl {again:.4f} on the first {ev['ppl_tokens']} tokens, "
                                 f"the run recorded {recorded:.4f} at step {step}: not the run's weights or not its text")
        out["texts"][text] = rows
    return out


def run_labels(runs: list) -> list:
    """Each run folder's name in the tables: its own name, or parent/name where two runs share one
    (the same method in two phases, e.g. .../smollm2-counterfact-n1000/betaedit and .../smollm2-zsre-n1000/betaedit)."""
    names = [Path(r).name for r in runs]
    return [f"{Path(r).parent.name}/{n}" if names.count(n) > 1 else n for r, n in zip(runs, names)]


def merge_heldout(h: dict, earlier: dict, source: str = "the earlier measurement") -> dict:
    """``h`` (a `heldout` result) with the runs of ``earlier`` (another, e.g. read back from the JSON
    that ``--out`` writes) added, so that each pair is compared over the same windows.

    Raises:
        SystemExit: the two differ in window, tokens or texts, the unedited model's windows differ
            (not the same model, or not the same text: each window's NLL must agree within
            `REPRODUCED_REL`), or a run is in both.
    """
    for key in ("window", "tokens"):
        if h[key] != earlier[key]:
            raise SystemExit(f"{source}: {key} {earlier[key]}, here {h[key]}: measure with the same --heldout and windows")
    if set(h["texts"]) != set(earlier["texts"]):
        raise SystemExit(f"{source}: texts {sorted(earlier['texts'])}, here {sorted(h['texts'])}")
    for text, rows in earlier["texts"].items():
        mine, theirs = h["texts"][text]["unedited"]["windows"], rows["unedited"]["windows"]
        for i, (a, b) in enumerate(zip(mine, theirs)):
            if a[1] != b[1] or abs(a[0] - b[0]) > REPRODUCED_REL * abs(a[0]):
                raise SystemExit(f"{source}: the unedited model's window {i} of {text} has NLL {b[0]:.6f} over {b[1]} "
                                 f"tokens, here {a[0]:.6f} over {a[1]}: not the same model or not the same text")
    both = sorted(set(h["steps"]) & set(earlier["steps"]))
    if both:
        raise SystemExit(f"{source}: {', '.join(both)} measured there and here; give each run once")
    out = {**h, "steps": {**h["steps"], **earlier["steps"]}, "recorded": {**h["recorded"], **earlier["recorded"]}}
    out["texts"] = {text: {**rows, **{n: r for n, r in earlier["texts"][text].items() if n != "unedited"}}
                    for text, rows in h["texts"].items()}
    return out


def heldout_markdown(h: dict) -> str:
    """`heldout`'s perplexities as two tables: each run against the unedited model, and each pair of runs."""
    from betaedit_plugin.eval.report import ppl_ratio

    def ratio(a: dict, b: dict) -> str:
        r = ppl_ratio({"outcomes": {"ppl": a["windows"]}}, {"outcomes": {"ppl": b["windows"]}})
        return "–" if r is None else f"{r[0]:.3f} ({r[1]:.3f}-{r[2]:.3f})"

    names = list(h["steps"])
    lines = [f"Perplexity on the first {h['tokens']:,} tokens of each text ({h['tokens'] // h['window']} windows of "
             f"{h['window']}), ratios paired over the windows (95% intervals, Student's t); the recorded ratio is the run's "
             "own, on the tokens its points scored.", "",
             "| run | edits | text | ppl unedited | ppl edited | ratio to the unedited model | recorded ratio |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        rec = h["recorded"][name]
        for text, rows in h["texts"].items():
            lines.append(f"| {name} | {h['steps'][name]} | {text} | {rows['unedited']['ppl']:.2f} | {rows[name]['ppl']:.2f} | "
                         f"{ratio(rows[name], rows['unedited'])} | "
                         f"{'–' if not rec else f'{rec[0]:.3f} ({rec[1]:.3f}-{rec[2]:.3f})'} |")
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    if pairs:
        lines += ["", "| a / b | " + " | ".join(h["texts"]) + " |", "|---|" + "---|" * len(h["texts"])]
        lines += [f"| {a} / {b} | " + " | ".join(ratio(rows[a], rows[b]) for rows in h["texts"].values()) + " |"
                  for a, b in pairs]
    return "\n".join(lines) + "\n"


def key_moments(model, tok, hparams: dict, layers, cache_dir: Optional[Path] = None) -> dict:
    """{layer: E[k k^T]} of the rewrite modules' input keys on the run's corpus (its ``mom2_*``
    settings). ``cache_dir``: read (and write) the statistics cache there, for the unedited model's C0
    (its key holds the weights' fingerprint); None: compute, cache nothing (an edited model's keys)."""
    from betaedit_plugin.covariance.collect import layer_second_moments
    from betaedit_plugin.models.layout import ModelLayout

    return layer_second_moments(model, tok, ModelLayout.from_model(model), list(layers), corpus=hparams["mom2_dataset"],
                                n_samples=hparams["mom2_n_samples"], max_length=hparams["mom2_max_length"],
                                dtype=hparams["mom2_dtype"], progress=False, cache_dir=cache_dir,
                                use_cache=cache_dir is not None)


def key_drift(c0: torch.Tensor, ct: torch.Tensor, delta: torch.Tensor, w0: torch.Tensor, threshold: float) -> dict:
    """How the keys a layer reads moved once the layers before it were edited, and what that does to
    its leakage: ``key_drift`` ||C_t - C0||_F / ||C0||_F; ``null_share_c0`` / ``null_share_ct``: the share
    of the unedited / the edited model's key energy inside null(C0) at ``threshold`` (the directions
    AlphaEdit and BetaEdit write in); ``rel_leakage_ct``: the relative leakage (`layer_diagnostics`) with
    the keys the edited model reads, where the runs record it with C0."""
    c0, ct = (x.detach().to("cpu", torch.float64) for x in (c0, ct))
    u, _ = nullspace_split(c0, threshold)
    return {"key_drift": float(torch.linalg.matrix_norm(ct - c0) / torch.linalg.matrix_norm(c0)),
            "null_share_c0": energy_share(u, c0), "null_share_ct": energy_share(u, ct),
            "rel_leakage_ct": layer_diagnostics(delta, ct, w0)["rel_leakage"]}


def markdown(label: str, a: dict) -> str:
    rise = a["edited"] / a["unedited"] - 1
    lines = [f"{label} at step {a['step']}: ppl {a['unedited']:.2f} unedited, {a['edited']:.2f} edited "
             f"({rise:+.1%}; recorded {a['recorded']:.2f})", "",
             "| layer | ppl, this layer's change alone | rise alone | ppl without this layer's change | "
             "share of the rise it removes | rel. leakage | ‖W_t - W_0‖_F |", "|---|---|---|---|---|---|---|"]
    drift = all("key_drift" in r for r in a["layers"].values())
    if drift:
        lines[-2] += " key drift ‖C_t - C0‖/‖C0‖ | keys' energy in null(C0): unedited -> edited | rel. leakage with the edited model's keys |"
        lines[-1] += "---|---|---|"
    log_rise = math.log(a["edited"] / a["unedited"])
    alone = math.prod(r["alone"] / a["unedited"] for r in a["layers"].values()) - 1
    lines[0] += f"; each layer's change alone, compounded: {alone:+.1%}"
    for l, r in a["layers"].items():
        removed = (log_rise - math.log(r["without"] / a["unedited"])) / log_rise if log_rise else float("nan")
        leak = "–" if r["rel_leakage"] is None else f"{r['rel_leakage']:.4f}"
        pert = "–" if r["perturbation"] is None else f"{r['perturbation']:.1f}"
        lines.append(f"| {l} | {r['alone']:.2f} | {r['alone'] / a['unedited'] - 1:+.1%} | {r['without']:.2f} | "
                     f"{removed:.0%} | {leak} | {pert} |")
        if drift:
            lines[-1] += (f" {r['key_drift']:.3f} | {r['null_share_c0']:.3f} -> {r['null_share_ct']:.3f} | "
                          f"{r['rel_leakage_ct']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", help="RUN_DIR or RUN_DIR=EDITED.safetensors (a replay --save of it)")
    p.add_argument("--out", type=Path, help="also write the tables to this markdown file (--heldout: and every window "
                                            "to the same name with .json)")
    p.add_argument("--key-drift", action="store_true",
                   help="also collect the edited model's keys on the run's corpus (its mom2_* settings: about as long as "
                        "collecting C0) and show how far they moved and the leakage they see")
    p.add_argument("--heldout", type=int, metavar="N",
                   help="instead of the anatomy: each run's perplexity ratio on the first N tokens of WikiText-2 test and "
                        "validation (e.g. 16384: 64 windows), against the unedited model and each other run")
    p.add_argument("--valid", type=Path, default=VALID_TEXT, help="the second text of --heldout (default: %(default)s)")
    p.add_argument("--with", dest="earlier", type=Path, action="append", default=[], metavar="FILE.json",
                   help="--heldout: add the runs of an earlier measurement (the .json its --out wrote), paired with "
                        "these; without runs, only join the files' tables")
    args = p.parse_args(argv)
    if not args.runs and not args.earlier:
        p.error("give one or more runs (or, with --heldout, --with FILE.json)")
    if args.earlier and not args.heldout:
        p.error("--with joins --heldout measurements: give --heldout N as well")
    if args.out and args.out.suffix == ".json":
        p.error(f"--out {str(args.out)!r}: give the markdown file (FILE.md); --heldout writes FILE.json beside it")
    for f in args.earlier:
        if not f.is_file():
            p.error(f"--with {str(f)!r}: no such file; give the .json that --heldout --out FILE.md wrote")
    parsed = []
    for item in args.runs:
        run, _, weights = item.partition("=")
        if not (Path(run) / "results.json").is_file():
            p.error(f"{run!r} holds no results.json: give a run's results folder")
        parsed.append((Path(run), Path(weights) if weights else None))
    if args.heldout:
        earlier = [(str(f), json.loads(f.read_text(encoding="utf-8"))) for f in args.earlier]
        for source, e in earlier:  # before minutes of measuring: the mistake most likely made
            if e["tokens"] != args.heldout:
                p.error(f"--heldout {args.heldout}: {source} measured {e['tokens']} tokens; give --heldout {e['tokens']}")
        if parsed:
            if not args.valid.is_file():
                p.error(f"--valid {str(args.valid)!r}: no such file; give WikiText-2's validation split (../shared/data/corpus)")
            model, tok = load_smollm2()
            h = heldout(model, tok, parsed, args.heldout, {"WikiText-2 test": None, "WikiText-2 valid": args.valid})
        else:
            (_, h), earlier = earlier[0], earlier[1:]
        for source, e in earlier:
            h = merge_heldout(h, e, source)
        text = heldout_markdown(h)
        print(text, flush=True)
        if args.out:
            args.out.write_text(text, encoding="utf-8")
            args.out.with_suffix(".json").write_text(json.dumps(h, indent=1) + "\n", encoding="utf-8")
        return 0
    model, tok = load_smollm2()
    texts = []
    for run, weights in parsed:
        ev = json.loads((run / "results.json").read_text(encoding="utf-8"))["config"]["eval"]
        ids = heldout_token_ids(tok, ev["ppl_tokens"])
        text = markdown(run.name, anatomy(model, ids, run, weights, tok=tok if args.key_drift else None,
                                          stats_dir=default_stats_dir()))
        print(text, flush=True)
        texts.append(text)
    if args.out:
        args.out.write_text("\n".join(texts), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
