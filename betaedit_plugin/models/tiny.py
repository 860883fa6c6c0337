"""Tiny random decoder-only models for fast tests (no download, deterministic).

``build_tiny(arch, seed)`` returns ``(model, tok)``: a randomly initialised
model of the real transformers class (GPT2LMHeadModel, GPTJForCausalLM,
LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM) with 4 layers and
width 32, and a byte-level BPE tokenizer trained in-process with
``tokenizers`` on a few sentences. The same ``(arch, seed)`` always gives the
same weights and the same vocabulary.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from .._suggest import did_you_mean

logger = logging.getLogger(__name__)

TINY_ARCHS = ("gpt2", "gptj", "llama", "qwen2", "qwen3")
"""Architectures of the tiny random test models (``"tiny-<arch>"``); the one definition, imported
by `betaedit_plugin.models` and the tests."""
TINY_VOCAB_SIZE = 384
TINY_LAYERS = 4
TINY_WIDTH = 32
# larger than the usual 0.02 so that the random model's predictions are peaked and
# an edit visibly changes them
TINY_INIT_RANGE = 0.2

_CORPUS = (
    "The mother tongue of Danielle Darrieux is French.",
    "Danielle Darrieux was a French actress and singer.",
    "The Eiffel Tower is located in Paris, the capital of France.",
    "Michael Jordan plays the sport of basketball.",
    "The official language of Japan is Japanese.",
    "Toyota was founded in Japan and produces cars.",
    "Apple A5 was created by Apple. Google is a company.",
    "Ludwig van Beethoven was a German composer who wrote music.",
    "English is a language. The capital of England is London.",
    "Lionel Messi is a professional soccer player from Argentina.",
    "Rome is the capital of Italy, and Berlin is the capital of Germany.",
    "Because I said so, you know that therefore it is a city.",
)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<pad>",
        unk_token="<|endoftext|>",
    )


def _config(arch: str, vocab_size: int, eos: int, pad: int):
    import transformers as tf

    common = dict(initializer_range=TINY_INIT_RANGE, vocab_size=vocab_size, bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=TINY_WIDTH, n_layer=TINY_LAYERS, n_head=4, n_positions=256, **common)
    if arch == "gptj":
        return tf.GPTJConfig(n_embd=TINY_WIDTH, n_layer=TINY_LAYERS, n_head=4, rotary_dim=4, n_positions=256, **common)
    llama_like = dict(
        hidden_size=TINY_WIDTH, intermediate_size=2 * TINY_WIDTH + 16, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **common,
    )
    if arch == "llama":
        return tf.LlamaConfig(**llama_like)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if arch == "qwen3":
        return tf.Qwen3Config(head_dim=8, **llama_like)
    raise KeyError(f"Unknown tiny arch {arch!r}." + did_you_mean(arch, TINY_ARCHS))


def _model_class(arch: str) -> Callable:
    import transformers as tf

    return {
        "gpt2": tf.GPT2LMHeadModel,
        "gptj": tf.GPTJForCausalLM,
        "llama": tf.LlamaForCausalLM,
        "qwen2": tf.Qwen2ForCausalLM,
        "qwen3": tf.Qwen3ForCausalLM,
    }[arch]


def build_tiny(arch: str, seed: int = 0):
    """A tiny random ``(model, tok)`` of architecture ``arch`` (eval mode, float32, CPU).

    Raises:
        KeyError: ``arch`` is not one of ``TINY_ARCHS`` (with a suggestion).
    """
    if arch not in TINY_ARCHS:
        _config(arch, 0, 0, 0)  # raises the KeyError with suggestions
    tok = _tokenizer()
    config = _config(arch, len(tok), tok.eos_token_id, tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(arch)(config)
    model.eval()
    return model, tok
