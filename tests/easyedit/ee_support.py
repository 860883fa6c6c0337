"""Helpers of the EasyEdit tests: tiny checkpoints EasyEdit can load by name, settings, requests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch

# EasyEdit's BaseEditor picks its loader from substrings of model_name ('gpt' -> GPT2Tokenizer,
# 'llama' -> AutoTokenizer, 'qwen2'/'qwen3' -> AutoTokenizer with '<|endoftext|>' as eos/pad), so a
# checkpoint directory must carry one of them in its name.
EASYEDIT_NAME = {"gpt2": "gpt2", "gptj": "gpt-j", "llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

# Under these settings a tiny random model takes an edit: the targets below are single tokens of
# its vocabulary and the value is written at the last prompt token, which the 4-layer model's
# prediction reads directly (measured: 0.0 -> 1.0 rewrite accuracy for all three methods on the
# llama, gpt2 and qwen3 tiny models; with 'subject_last' or multi-token targets it stays near 0).
TINY_COMMON = dict(layers=[1, 2], v_loss_layer=-1, fact_token="last", v_num_grad_steps=20, v_lr=0.5,
                   clamp_norm_factor=10.0, v_weight_decay=0.0, kl_factor=0.0, mom2_n_samples=50,
                   mom2_max_length=32, context_template_length_params=[[5, 2]])
TINY_METHOD = {
    "BetaEdit": dict(lambda1=1.0, lambda2=0.1, tau=100, nullspace_threshold=0.3),
    "AlphaEdit": dict(L2=0.1, nullspace_threshold=0.3),
    "MEMIT": dict(mom2_update_weight=1.0),
}
# about half of a tiny model's 80-128 key directions have C0 eigenvalues below 0.3 (0.02 leaves none)

# (prompt, subject, target_new, ground_truth, rephrase, neighbourhood prompt, its answer)
ROWS = [
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "German", "French",
     "Danielle Darrieux speaks the language", "Michel Rocard is a native speaker of", "French"),
    ("Michael Jordan plays the sport of", "Michael Jordan", "French", "basketball",
     "Michael Jordan is a player of", "Lionel Messi plays the sport of", "soccer"),
    ("The official language of Japan is", "Japan", "German", "Japanese",
     "In Japan people speak", "The official language of France is", "French"),
    ("Toyota was founded in", "Toyota", "German", "Japan",
     "Toyota was started in", "Apple A5 was created by", "Apple"),
]


def save_tiny_checkpoint(arch: str, root: Path) -> str:
    """Save the tiny ``arch`` model under ``root/tiny-<EasyEdit keyword>``; returns the directory."""
    from betaedit_plugin.models.tiny import build_tiny

    model, tok = build_tiny(arch)
    path = Path(root) / f"tiny-{EASYEDIT_NAME[arch]}"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    tok.backend_tokenizer.model.save(str(path))  # vocab.json + merges.txt for GPT2Tokenizer ('gpt' names)
    return str(path)


def tiny_hparams(method: str, model_name: str, stats_dir: Optional[str] = None, **over):
    """This package's hparams for ``method`` ('BetaEdit', 'AlphaEdit', 'MEMIT') on a tiny checkpoint."""
    from betaedit_plugin.hparams import hparams_class_for

    cls = hparams_class_for(method)
    return cls(model_name=model_name, stats_dir=stats_dir, **{**TINY_COMMON, **TINY_METHOD[method], **over})


def edit_kwargs(rows=ROWS) -> dict:
    """Keyword arguments of EasyEdit's ``BaseEditor.edit`` / ``batch_edit`` for ``rows``."""
    return dict(
        prompts=[r[0] for r in rows], subject=[r[1] for r in rows], target_new=[r[2] for r in rows],
        ground_truth=[r[3] for r in rows], rephrase_prompts=[r[4] for r in rows],
        locality_inputs={"neighborhood": {"prompt": [r[5] for r in rows], "ground_truth": [r[6] for r in rows]}},
    )


@torch.no_grad()
def next_token(model, tok, prompt: str) -> str:
    """The model's greedy next token after ``prompt`` (decoded)."""
    ids = tok(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    return tok.decode(model(ids).logits[0, -1].argmax().item())


def predicted_tokens(model, tok, prompt: str, answer: str) -> list:
    """The model's argmax tokens over ``answer`` after ``prompt``, teacher forced, by this package's
    scoring (the "prompt answer" tokenisation EasyEdit uses): EasyEdit's locality ``<key>_output``
    for the same model should equal it."""
    from betaedit_plugin.eval.scoring import predicted_target_tokens

    return list(predicted_target_tokens(model, tok, prompt, answer)[0])


def rewrite_accs(metrics, when: str) -> list:
    return [float(m[when]["rewrite_acc"][0]) for m in metrics]


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def smollm2_easyedit_dir() -> str:
    """The converted SmolLM2 checkpoint under a directory name with 'llama' in it (a link in the cache).

    EasyEdit picks its loader from substrings of model_name; SmolLM2 is a LLaMA-architecture model.
    The link lives next to the converted checkpoint, so statistics cached under its path are reused.
    """
    from betaedit_plugin.models.smollm2 import converted_dir, load_smollm2

    target = converted_dir()
    if not (target / "config.json").is_file():
        load_smollm2()  # converts the GGUF on first use
    link = target.parent / "easyedit-llama-smollm2-135m-instruct"
    if not link.exists():
        link.symlink_to(target, target_is_directory=True)
    return str(link)


def smollm2_hparams(method: str, model_dir: str, **over):
    """The shipped SmolLM2 YAML for ``method``, loading from ``model_dir``; C0 from 200 texts x 128 tokens."""
    from betaedit_plugin import hparams_path, load_hparams

    hp = load_hparams(hparams_path(method, "smollm2-135m"))
    return dataclasses.replace(hp, model_name=model_dir, **{"mom2_n_samples": 200, "mom2_max_length": 128, **over})
