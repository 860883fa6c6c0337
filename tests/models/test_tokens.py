"""One tokenisation for editing and scoring: the target ids compute_z optimises are the ids scoring reads."""

from __future__ import annotations

import pytest
import torch

from betaedit_plugin.compute_z import build_value_problem
from betaedit_plugin.eval.scoring import score_targets
from betaedit_plugin.models.tiny import TINY_ARCHS
from betaedit_plugin.requests import EditRequest
from support.editing import REQS

# targets with and without a leading space, several tokens, digits and punctuation
CASES = list(REQS) + [
    EditRequest("The capital of Japan is", "Japan", " Kyoto", case_id=10),
    EditRequest("Toyota was founded in the year", "Toyota", "1937, in Aichi", case_id=11),
    EditRequest("Lionel Messi's nickname is", "Lionel Messi", "La Pulga!", case_id=12),
]


def _edit_and_score_ids(model, tok, request: EditRequest):
    """(prompt ids, target ids) of the bare prompt as compute_z builds them, and as scoring reads them."""
    problem = build_value_problem(tok, request, "subject_last", [["{}"]], torch.device("cpu"))
    row = problem.target_rows == 0  # the request's prompt in the context "{}"
    edit_target = problem.target_ids[row].tolist()
    real = problem.batch.input_ids[0][problem.batch.attention_mask[0].bool()].tolist()
    edit_prompt = real[: len(real) - (len(edit_target) - 1)]  # the row holds prompt + target[:-1]
    (score,) = score_targets(model, tok, [request.prompt], [request.target_new], batch_size=1)
    score_prompt = list(tok(request.prompt)["input_ids"])
    return (edit_prompt, edit_target), (score_prompt, list(score.target_ids))


def _check(model, tok):
    for request in CASES:
        edited, scored = _edit_and_score_ids(model, tok, request)
        assert edited == scored, f"case {request.case_id}: compute_z {edited} vs scoring {scored}"
        assert len(scored[1]) >= 1


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_compute_z_optimises_the_ids_scoring_reads_tiny(tiny, arch):
    _check(*tiny(arch))


@pytest.mark.slow
def test_compute_z_optimises_the_ids_scoring_reads_smollm2(smollm2):
    _check(*smollm2)


def _sentencepiece_style(tiny):
    """A tiny LLaMA with a tokenizer like LLaMA's (legacy SentencePiece): a "▁" is prepended and spaces
    become "▁", so " target" encoded alone starts with an extra "▁" piece that the joint
    "prompt target" encoding does not have."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from betaedit_plugin.models.tiny import _CORPUS

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    core.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    core.train_from_iterator(list(_CORPUS) * 4 + [r.prompt + " " + r.target_new for r in CASES], trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=80, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tok


def test_compute_z_optimises_the_ids_scoring_reads_sentencepiece_style(tiny):
    model, tok = _sentencepiece_style(tiny)
    alone = [list(tok(" " + r.target_new.lstrip(" "), add_special_tokens=False)["input_ids"]) for r in CASES]
    scored = [_edit_and_score_ids(model, tok, r)[1][1] for r in CASES]
    # encoding the target alone (what compute_z did before) would train on other tokens here
    assert any(a != s for a, s in zip(alone, scored))
    _check(model, tok)
