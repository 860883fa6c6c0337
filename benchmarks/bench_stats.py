"""One-pass C0 statistics vs per-layer passes on SmolLM2-135M: time and agreement.

Prints one JSON line. On the same texts (the first ``--n-texts`` of the bundled
Wikipedia corpus, ``--max-length`` tokens, same batches), it times:

- ``one_pass_s``: ``layer_second_moments`` for all layers in one pass that stops after
  the last layer (cache disabled);
- ``per_layer_full_s``: one separate forward pass of the WHOLE model per layer (lm_head
  included), collecting that layer's keys;
- ``per_layer_stop_s`` (unless ``--no-stop-baseline``): one pass per layer that stops
  after that layer's rewrite module, as EasyEdit's / MEMIT's ``layer_stats`` does
  (``Trace(..., stop=True)``).

All three accumulate the same way (float64 ``SecondMoment``). Each is run ``--repeats``
times, interleaved, and the best time is reported (robust to a shared machine's load).
The deviation is the max over layers of ||C_one - C_ref||_F / ||C_ref||_F against the
per-layer full passes.

    python benchmarks/bench_stats.py [--layers 4 5 6 7 8] [--n-texts 24] [--max-length 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from betaedit_plugin.models.smollm2 import load_smollm2
from betaedit_plugin.models.hooks import Trace
from betaedit_plugin.models.layout import ModelLayout
from betaedit_plugin.covariance import SecondMoment, layer_second_moments, load_corpus
from betaedit_plugin.covariance.corpus import _batches, _pad_id, _tokenize


def per_layer(model, layout, layer, seqs, batch_size, pad_id, stop: bool) -> torch.Tensor:
    """C0 of one layer from its own pass over all batches (full model, or stopping at the layer)."""
    sm = SecondMoment()
    with torch.no_grad():
        for ids, mask in _batches(seqs, batch_size, pad_id):
            with Trace(model, layout.rewrite_name(layer), retain_input=True, retain_output=False, stop=stop) as tr:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            sm.add(tr.input[mask.bool()])
    return sm.moment()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 5, 6, 7, 8])
    parser.add_argument("--n-texts", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-stop-baseline", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best time of each is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_smollm2()
    layout = ModelLayout.from_model(model)
    texts = load_corpus("wiki_vital", args.n_texts)
    seqs = _tokenize(tok, texts, args.max_length)
    pad = _pad_id(tok)

    def one_pass():
        return layer_second_moments(
            model, tok, layout, args.layers, n_samples=args.n_texts, max_length=args.max_length,
            batch_size=args.batch_size, progress=False, use_cache=False,
        )

    def full_passes():
        return {l: per_layer(model, layout, l, seqs, args.batch_size, pad, stop=False) for l in args.layers}

    def stopped_passes():
        return {l: per_layer(model, layout, l, seqs, args.batch_size, pad, stop=True) for l in args.layers}

    # Interleaved repeats, best time of each: a shared machine's load hits all three alike.
    times = {"one": [], "full": [], "stop": []}
    for _ in range(args.repeats):
        for name, fn in (("one", one_pass), ("full", full_passes), ("stop", stopped_passes)):
            if name == "stop" and args.no_stop_baseline:
                continue
            t0 = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - t0)
            if name == "one":
                one = result
            elif name == "full":
                full = result
    one_s, full_s = min(times["one"]), min(times["full"])
    stop_s = min(times["stop"]) if times["stop"] else None

    dev = max(((one[l] - full[l]).norm() / full[l].norm()).item() for l in args.layers)
    print(json.dumps({
        "bench": "stats_one_pass_vs_per_layer",
        "model": "SmolLM2-135M-Instruct",
        "layers": args.layers,
        "n_texts": len(seqs),
        "tokens": sum(len(s) for s in seqs),
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "one_pass_s": round(one_s, 2),
        "per_layer_full_s": round(full_s, 2),
        "ratio_full": round(full_s / one_s, 2),
        "per_layer_stop_s": None if stop_s is None else round(stop_s, 2),
        "ratio_stop": None if stop_s is None else round(stop_s / one_s, 2),
        "max_rel_dev": dev,
        "cpu": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
