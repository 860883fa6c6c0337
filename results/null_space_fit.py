"""How well a null space fitted to one corpus protects other text: C0 from wiki_vital's first N texts
against C0 from texts spread over the whole file, measured on the keys of the held-out text the
campaign's perplexity is computed on.

    python results/null_space_fit.py [--first 1000] [--spread 1000] [--thresholds ...] [--out FILE.md]

wiki_vital (the bundled C0 corpus) is ordered by topic: its first 1,000 texts are Arts (668) and
Biology (332) only, and ``mom2_n_samples`` takes the first N. AlphaEdit and BetaEdit write every edit
in null(C0) (eigenvalues of C0 below ``nullspace_threshold``); an edit changes the output of a key in
proportion to the key's component there. So for each edited layer and each C0 this prints the
dimension of null(C0) and the share of the energy of other keys inside it: of the held-out text's
(``eval.ppl_tokens`` of WikiText-2 in windows of ``eval.ppl_window``, as the runs' perplexity) and of
the keys of each other C0's texts; then, for the first C0 given (the campaign's), the same at other
thresholds (``nullspace_threshold``: a lower one leaves fewer directions to write in). The C0 of the first N texts is read from the statistics cache (or
computed and cached, as a run would); the spread one (every k-th text, all topics) is computed here.
Loads SmolLM2 once; a statistics pass is about 1.2 minutes per 1,000 texts on 2 cores.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from pathlib import Path

from betaedit_plugin.covariance.collect import _one_pass, _pad_id, layer_second_moments
from betaedit_plugin.covariance.corpus import corpus_path
from betaedit_plugin.eval.capability import heldout_token_ids
from betaedit_plugin.linalg.nullspace import energy_share, nullspace_split
from betaedit_plugin.models.layout import ModelLayout
from betaedit_plugin.models.smollm2 import load_smollm2

LAYERS = [4, 5, 6, 7, 8]  # the SmolLM2 YAMLs' edited layers
THRESHOLD = 0.02  # their nullspace_threshold
MAX_LENGTH = 256  # their mom2_max_length


def spread_corpus(n: int, dest: Path) -> Path:
    """Write ``n`` texts of wiki_vital spaced evenly over the file (text floor(i * total / n)) to ``dest``."""
    with gzip.open(corpus_path("wiki_vital"), "rt", encoding="utf-8") as f:
        texts = [line.strip() for line in f if line.strip()]
    if n > len(texts):
        raise SystemExit(f"--spread {n}: wiki_vital has {len(texts)} texts")
    dest.write_text("\n".join(texts[i * len(texts) // n] for i in range(n)) + "\n", encoding="utf-8")
    return dest


def heldout_keys(model, tok, layout, tokens: int, window: int) -> dict:
    """{layer: E[k k^T]} of the rewrite-module inputs on the held-out text, in the perplexity's windows."""
    ids = heldout_token_ids(tok, tokens).tolist()
    windows = [ids[i: i + window] for i in range(0, len(ids) - 1, window)]
    return {l: m.moment() for l, m in _one_pass(model, layout, LAYERS, windows, 8, _pad_id(tok), False).items()}


def null_space_table(covs: dict, held: dict, thresholds, ppl_tokens: int, ppl_window: int) -> list:
    """Markdown lines: for each layer and C0 in ``covs`` ({name: {layer: C0}}), dim null(C0) at `THRESHOLD`
    and the share of the energy of the held-out keys (``held``: {layer: E[k k^T]}) and of each C0's keys
    inside it; then the first C0's null space at each of ``thresholds``. One block of rows per layer of ``held``."""
    names = list(covs)
    lines = [f"Share of each key set's energy inside null(C0) (eigenvalues < {THRESHOLD}), per edited layer and C0 "
             f"(wiki_vital texts, {MAX_LENGTH} tokens each at most); held-out: the first {ppl_tokens} tokens of "
             f"WikiText-2 test in windows of {ppl_window} (the runs' perplexity text).", "",
             "| layer | C0 | dim null(C0) | held-out keys | " + " | ".join(f"keys of {n}" for n in names) + " |",
             "|" + "---|" * (4 + len(names))]
    for layer in held:
        for name in names:
            basis, _ = nullspace_split(covs[name][layer], THRESHOLD)
            shares = [energy_share(basis.double(), covs[other][layer]) for other in names]
            lines.append(f"| {layer} | {name} | {basis.shape[1]} | {energy_share(basis.double(), held[layer]):.2e} | "
                         + " | ".join(f"{s:.2e}" for s in shares) + " |")
    first = names[0]
    lines += ["", f"The null space of C0 ({first}) at each threshold: its dimension and the share of the held-out keys' "
              "and of C0's own keys' energy inside it.", "",
              "| layer | threshold | dim null(C0) | held-out keys | own keys |", "|---|---|---|---|---|"]
    for layer in held:
        for threshold in thresholds:
            basis, _ = nullspace_split(covs[first][layer], threshold)
            lines.append(f"| {layer} | {threshold:g} | {basis.shape[1]} | {energy_share(basis.double(), held[layer]):.2e} "
                         f"| {energy_share(basis.double(), covs[first][layer]):.2e} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", type=int, nargs="*", default=[1000], help="C0 of wiki_vital's first N texts")
    parser.add_argument("--spread", type=int, nargs="*", default=[1000], help="C0 of N texts spread over wiki_vital")
    parser.add_argument("--ppl-tokens", type=int, default=2048, help="the runs' eval.ppl_tokens")
    parser.add_argument("--ppl-window", type=int, default=256, help="the runs' eval.ppl_window")
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.005, 0.01, 0.02, 0.05],
                        help="nullspace_threshold values for the first C0")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    ns = parser.parse_args(argv)

    model, tok = load_smollm2()
    layout = ModelLayout.from_model(model)
    covs = {}
    for n in ns.first:
        covs[f"first {n}"] = layer_second_moments(model, tok, layout, LAYERS, corpus="wiki_vital", n_samples=n,
                                                  max_length=MAX_LENGTH, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        for n in ns.spread:
            path = spread_corpus(n, Path(tmp) / f"wiki_vital_spread_{n}.txt")
            covs[f"spread {n}"] = layer_second_moments(model, tok, layout, LAYERS, corpus=path, n_samples=n,
                                                       max_length=MAX_LENGTH, progress=False, use_cache=False)
    held = heldout_keys(model, tok, layout, ns.ppl_tokens, ns.ppl_window)

    lines = null_space_table(covs, held, ns.thresholds, ns.ppl_tokens, ns.ppl_window)
    text = "\n".join(lines) + "\n"
    print(text)
    if ns.out:
        Path(ns.out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
