"""EasyEdit's benchmark flow with this package's editors: BaseEditor.edit over a data file, then summary_metrics.

The arguments are those of EasyEdit's ``examples/run_AlphaEdit_editing.py``, and the run does what
it does (``edit(..., keep_original_weight=True, sequential_edit=..., test_generation=True)``, the
metrics written as JSON, ``summary_metrics`` printed), with BetaEdit, AlphaEdit or MEMIT from this
package::

    python examples/easyedit_benchmark.py --editing_method BetaEdit \\
        --hparams_dir hparams/BetaEdit/smollm2-135m.yaml --data_dir data --data_type CF \\
        --ds_size 3 --sequential_edit

Data (read by this package's loaders, by content): ``<data_dir>/counterfact.json`` (CF) and
``multi_counterfact.json`` (MCF) in ROME/MEMIT's format, ``zsre_mend_eval.json`` (ZsRE) in MEND's.
Nothing is downloaded; EasyEdit's script fetches them from https://memit.baulab.info/data/dsets/.
``--write_bundled_sample`` writes a missing file from this package's bundled data instead:
CounterFact cases in MEMIT's format (one paraphrase and one neighbourhood prompt each; the
bundled files are EasyEdit's CounterFact splits), or the bundled ZsRE eval subset (MEND's format).
As in this package's runner, ZsRE neighbourhood questions are passed without MEND's
"nq question: " prefix.

``model_name`` in the YAML is given to EasyEdit's BaseEditor, which loads a local checkpoint
directory (or hub id) and picks its loader from substrings of the name ('gpt', 'llama', 'qwen2',
...). The shipped SmolLM2 YAML says ``smollm2-135m``; that is resolved to the converted SmolLM2
checkpoint under a directory name with 'llama' in it (SmolLM2 is a LLaMA-architecture model).

Needs EasyEdit importable (its source tree; see README "EasyEdit"). In ``.venv-easyedit`` (after
``make test-easyedit`` or ``make easyedit-install``) it is installed, with the torchvision/timm import
stubs a CPU-only machine needs, so ``.venv-easyedit/bin/python examples/easyedit_benchmark.py ...``
runs as it is. Elsewhere, without torchvision, run it through ``tests/easyedit/with_stubs.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import sys
from pathlib import Path

DATA_FILES = {"CF": "counterfact.json", "MCF": "multi_counterfact.json", "ZsRE": "zsre_mend_eval.json"}
REMOTE = "https://memit.baulab.info/data/dsets"
METHODS = ("BetaEdit", "AlphaEdit", "MEMIT")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--editing_method", required=True, choices=METHODS)
    parser.add_argument("--hparams_dir", required=True,
                        help="YAML path, or the name of a shipped one (e.g. smollm2-135m)")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--data_type", required=True, choices=sorted(DATA_FILES))
    parser.add_argument("--output_dir", default="./outputs")
    parser.add_argument("--ds_size", default=3, type=int)
    parser.add_argument("--sequential_edit", action="store_true")
    # not in EasyEdit's script
    parser.add_argument("--write_bundled_sample", action="store_true",
                        help="write a missing data file from the bundled data (see above)")
    parser.add_argument("--mom2_n_samples", type=int, help="override: corpus texts for C0 (quick try)")
    parser.add_argument("--mom2_max_length", type=int, help="override: tokens per corpus text for C0")
    parser.add_argument("--no_test_generation", action="store_true", help="skip EasyEdit's fluency generation")
    return parser.parse_args(argv)


def write_bundled_sample(data_type: str, path: Path, n: int) -> None:
    """``path`` from the bundled data: CounterFact in MEMIT's format, or ZsRE (MEND's format) as it is."""
    from betaedit_plugin.data import load_counterfact, resource_path, to_memit_counterfact
    from betaedit_plugin.data.loaders import ZSRE_SPLITS

    path.parent.mkdir(parents=True, exist_ok=True)
    if data_type == "ZsRE":
        with gzip.open(resource_path(ZSRE_SPLITS["eval"]), "rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        path.write_text(json.dumps(to_memit_counterfact(load_counterfact("edit", n=n)), indent=1))
    print(f"wrote {path} from the bundled data ({data_type})")


def load_requests(data_type: str, path: Path, n: int) -> list:
    from betaedit_plugin.data import load_counterfact, load_zsre

    return (load_zsre if data_type == "ZsRE" else load_counterfact)(path, n=n)


def easyedit_arguments(requests) -> dict:
    """BaseEditor.edit's arguments, as EasyEdit's script builds them from the records."""
    return dict(
        prompts=[r.prompt for r in requests],
        subject=[r.subject for r in requests],
        target_new=[r.target_new for r in requests],
        ground_truth=[r.ground_truth for r in requests],
        rephrase_prompts=[r.rephrase_prompts[0] if r.rephrase_prompts else r.prompt for r in requests],
        locality_inputs={"neighborhood": {"prompt": [list(r.locality_prompts) for r in requests],
                                          "ground_truth": [list(r.locality_ground_truth) for r in requests]}},
    )


def smollm2_easyedit_dir() -> str:
    """The converted SmolLM2 checkpoint under a name with 'llama' in it (a link next to it in the cache)."""
    from betaedit_plugin.models.smollm2 import converted_dir, load_smollm2

    target = converted_dir()
    if not (target / "config.json").is_file():
        load_smollm2()  # converts the GGUF once
    link = target.parent / "easyedit-llama-smollm2-135m-instruct"
    if not link.exists():
        link.symlink_to(target, target_is_directory=True)
    return str(link)


def load_method_hparams(method: str, where: str, overrides: dict):
    from betaedit_plugin import hparams_path
    from betaedit_plugin.hparams import hparams_class_for

    path = Path(where)
    if not path.exists() and os.sep not in where:
        path = hparams_path(method, where)
    hparams = hparams_class_for(method).from_hparams(path)
    if hparams.model_name == "smollm2-135m":
        overrides = {**overrides, "model_name": smollm2_easyedit_dir()}
    return dataclasses.replace(hparams, **overrides) if overrides else hparams


def check_fluency_tokenizer() -> None:
    """EasyEdit's fluency metric (test_generation) needs NLTK's Punkt model; say so before editing."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt")
    except LookupError:
        sys.exit("EasyEdit's fluency metric needs NLTK's Punkt model: run python -c \"import nltk; "
                 "nltk.download('punkt')\", or pass --no_test_generation")


def main(argv=None) -> list:
    args = parse_args(argv)
    if not args.no_test_generation:
        check_fluency_tokenizer()
    data_path = Path(args.data_dir) / DATA_FILES[args.data_type]
    if not data_path.exists():
        if not args.write_bundled_sample:
            sys.exit(f"{data_path} does not exist. Download it from {REMOTE}/{DATA_FILES[args.data_type]}, "
                     "or pass --write_bundled_sample to write one from this package's bundled data.")
        write_bundled_sample(args.data_type, data_path, args.ds_size)
    requests = load_requests(args.data_type, data_path, args.ds_size)

    overrides = {k: getattr(args, k) for k in ("mom2_n_samples", "mom2_max_length") if getattr(args, k)}
    hparams = load_method_hparams(args.editing_method, args.hparams_dir, overrides)

    from betaedit_plugin import register_easyedit

    register_easyedit()  # adds BetaEdit, BE-AlphaEdit, BE-MEMIT to EasyEdit's ALG_DICT
    from easyeditor import BaseEditor, summary_metrics

    os.makedirs(args.output_dir, exist_ok=True)
    output_file = os.path.join(
        args.output_dir,
        f'{hparams.model_name.split("/")[-1]}_{args.editing_method}_N={args.ds_size}_Sequential={args.sequential_edit}.json',
    )
    print("See results at: ", output_file)

    editor = BaseEditor.from_hparams(hparams)
    metrics, edited_model, _ = editor.edit(
        **easyedit_arguments(requests),
        keep_original_weight=True,
        sequential_edit=args.sequential_edit,
        test_generation=not args.no_test_generation,
    )
    with open(output_file, "w") as f:
        json.dump(metrics, f, indent=4)
    if metrics:
        summary_metrics(metrics)
    return metrics


if __name__ == "__main__":
    main()
