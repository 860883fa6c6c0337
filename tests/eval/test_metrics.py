"""Metric functions against hand computations on tiny models (float64 references)."""

from __future__ import annotations

import dataclasses

import math

import pytest
import torch

from betaedit_plugin.data import load_counterfact
from betaedit_plugin.eval.capability import heldout_token_ids, load_mmlu, mmlu_accuracy, mmlu_prompt, perplexity
from betaedit_plugin.eval.metrics import (
    edit_metrics,
    layer_diagnostics,
    locality_reference,
    token_scores,
    ngram_entropy,
    weight_diagnostics,
)
from betaedit_plugin.eval.scoring import (
    encode_pair,
    greedy_generate,
    predicted_target_tokens,
    score_targets,
    target_token_accuracy,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run faster on one thread (and do not suffer from a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama():
    from betaedit_plugin.models.tiny import build_tiny

    return build_tiny("llama")


def _predicted_word(model, tok, prompt: str):
    """The model's greedy next token after ``prompt`` if it is a word (a space, then letters), else None."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([encode_pair(tok, prompt, "x")[0]])).logits[0, -1]
    text = tok.decode([int(logits.argmax())])
    return text if len(text) > 1 and text[0] == " " and text[1:].isalpha() else None


def _hand_logprobs(model, tok, prompt, target):
    """Unbatched float64 reference: (sum log p(target | prompt), argmax tokens)."""
    p_ids, t_ids = encode_pair(tok, prompt, target)
    ids = torch.tensor([p_ids + t_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    total = sum(float(lp[len(p_ids) - 1 + i, t]) for i, t in enumerate(t_ids))
    return total, [int(lp[len(p_ids) - 1 + i].argmax()) for i in range(len(t_ids))]


def test_batched_scores_equal_one_by_one_scores(llama):
    model, tok = llama
    prompts = ["The mother tongue of Danielle Darrieux is", "Paris is", "The Eiffel Tower is located in the city of"]
    targets = ["English", "the capital of France", "Rome"]
    scores = score_targets(model, tok, prompts, targets, batch_size=3)
    for s, p, t in zip(scores, prompts, targets):
        total, argmax = _hand_logprobs(model, tok, p, t)
        assert s.sum_logprob == pytest.approx(total, rel=1e-5, abs=1e-5)
        assert list(s.argmax) == argmax
        assert s.mean_logprob == pytest.approx(total / s.n_tokens, rel=1e-5)
        # same numbers as the editor's unbatched EasyEdit-style token metrics
        assert s.token_accuracy == pytest.approx(target_token_accuracy(model, tok, p, t))
        assert list(s.argmax) == predicted_target_tokens(model, tok, p, t)[0]


def test_edit_metrics_are_the_probability_comparisons(llama):
    model, tok = llama
    pool = load_counterfact(n=30)
    # two cases whose target is the word the model predicts itself, so that the accuracies are not all 0
    own = [dataclasses.replace(r, target_new=w) for r in pool if (w := _predicted_word(model, tok, r.prompt))]
    reqs = pool[:2] + own[:2]
    out = edit_metrics(model, tok, reqs, locality_ref=locality_reference(model, tok, reqs), batch_size=5)
    eff, gen, spec, rw, rp, rw_hits, rp_hits = [], [], [], [], [], [], []
    for r in reqs:
        def mean(p, t):
            total, _ = _hand_logprobs(model, tok, p, t)
            return total / len(encode_pair(tok, p, t)[1])

        def hits(p, t):  # each target token: "1" where the float64 argmax is that token
            target = encode_pair(tok, p, t)[1]
            return "".join("1" if a == b else "0" for a, b in zip(_hand_logprobs(model, tok, p, t)[1], target))

        def token_acc(p, t):
            return hits(p, t).count("1") / len(hits(p, t))

        eff.append(mean(r.prompt, r.target_new) > mean(r.prompt, r.ground_truth))
        gen.append(mean(r.rephrase_prompts[0], r.target_new) > mean(r.rephrase_prompts[0], r.ground_truth))
        spec.append(mean(r.locality_prompts[0], r.locality_ground_truth[0]) > mean(r.locality_prompts[0], r.target_new))
        rw.append(token_acc(r.prompt, r.target_new))
        rp.extend(token_acc(p, r.target_new) for p in r.rephrase_prompts)
        rw_hits.append(hits(r.prompt, r.target_new))
        rp_hits.extend(hits(p, r.target_new) for p in r.rephrase_prompts)
    assert out["efficacy"] == pytest.approx(sum(eff) / len(reqs))
    assert out["generality"] == pytest.approx(sum(gen) / len(reqs))
    assert out["specificity"] == pytest.approx(sum(spec) / len(reqs))
    ref_lengths = [len(ref) for refs in locality_reference(model, tok, reqs) for ref in refs]
    assert out["outcomes"] == {"efficacy": "".join(str(int(v)) for v in eff), "generality": "".join(str(int(v)) for v in gen),
                               "specificity": "".join(str(int(v)) for v in spec),  # one comparison each, in order
                               # each prompt's target tokens, prompts apart: what pairs two runs' token accuracies
                               "rewrite_acc": " ".join(rw_hits), "rephrase_acc": " ".join(rp_hits),
                               "locality_acc": " ".join("1" * n for n in ref_lengths)}  # every token agrees:
    assert out["locality_acc"] == 1.0  # the model has not changed since the reference
    assert 0 < sum(rw) + sum(rp), "a check that cannot tell a right metric from one stuck at 0"
    assert out["rewrite_acc"] == pytest.approx(sum(rw) / len(rw))
    assert out["rephrase_acc"] == pytest.approx(sum(rp) / len(rp))
    # the accuracies are exactly the means of the kept tokens' shares (what the paired differences read)
    for metric in ("rewrite_acc", "rephrase_acc", "locality_acc"):
        assert out[metric] == sum(token_scores(out["outcomes"][metric])) / len(token_scores(out["outcomes"][metric]))


def test_a_request_with_several_prompts_says_how_many_comparisons_it_added(llama):
    """MEMIT's CounterFact gives a request several paraphrases and neighbourhood prompts: the outcomes
    say which comparisons belong to which request (the paired intervals count a request once)."""
    from betaedit_plugin.data.formats import memit_counterfact_request

    model, tok = llama
    pool = load_counterfact(n=8)
    spare = [p for r in pool[3:] for p in r.locality_prompts]
    records = [{"case_id": i, "requested_rewrite": {"prompt": r.template, "subject": r.subject,
                                                    "target_new": {"str": r.target_new}, "target_true": {"str": r.ground_truth}},
                "paraphrase_prompts": list(r.rephrase_prompts) + [pool[3 + i].rephrase_prompts[0]] * (i == 0),
                "neighborhood_prompts": [spare[i]] + spare[3:3 + 2 * (i != 1)]} for i, r in enumerate(pool[:3])]
    reqs = [memit_counterfact_request(r, i, "memit-format") for i, r in enumerate(records)]
    ref = locality_reference(model, tok, reqs)
    out = edit_metrics(model, tok, reqs, locality_ref=ref)
    assert out["outcomes"]["groups"] == {"generality": "2 1 1", "specificity": "3 1 3", "rephrase_acc": "2 1 1",
                                         "locality_acc": "3 1 3"}
    # the comparisons in request order: the same as scoring each request alone, one after another
    alone = [edit_metrics(model, tok, [r], locality_ref=[x])["outcomes"] for r, x in zip(reqs, ref)]
    for metric in ("efficacy", "generality", "specificity"):
        assert out["outcomes"][metric] == "".join(o[metric] for o in alone)
    for metric in ("rewrite_acc", "rephrase_acc", "locality_acc"):
        assert out["outcomes"][metric] == " ".join(o[metric] for o in alone)
    assert "groups" not in alone[1] and alone[0]["groups"] == {"generality": "2", "specificity": "3", "rephrase_acc": "2",
                                                               "locality_acc": "3"}
    no_reference = edit_metrics(model, tok, reqs)["outcomes"]  # no token locality without the reference
    assert no_reference["groups"] == {"generality": "2 1 1", "specificity": "3 1 3", "rephrase_acc": "2 1 1"}


def test_locality_acc_drops_when_the_model_changes(llama):
    model, tok = llama
    reqs = load_counterfact(n=3)
    ref = locality_reference(model, tok, reqs)
    other, _ = __import__("betaedit_plugin.models.tiny", fromlist=["build_tiny"]).build_tiny("llama", seed=1)
    out = edit_metrics(other, tok, reqs, locality_ref=ref)
    assert out["locality_acc"] < 1.0
    # each prompt's tokens as kept in the outcomes, by hand from the other model's argmax against the reference
    hand = []
    for req, refs in zip(reqs, ref):
        for prompt, answer, tokens in zip(req.locality_prompts, req.locality_ground_truth, refs):
            argmax = _hand_logprobs(other, tok, prompt, answer)[1]
            hand.append("".join("1" if a == b else "0" for a, b in zip(argmax, tokens)))
    assert out["outcomes"]["locality_acc"] == " ".join(hand) and "0" in " ".join(hand)
    assert token_scores(out["outcomes"]["locality_acc"]) == [h.count("1") / len(h) for h in hand]
    assert out["locality_acc"] == pytest.approx(sum(h.count("1") / len(h) for h in hand) / len(hand), rel=1e-12)
    assert token_scores("") == [] and token_scores("10 1 ") == [0.5, 1.0, 0.0]  # a prompt without tokens: 0


def test_ngram_entropy_by_hand():
    # "a b a b": bigrams ab, ba, ab -> p = (2/3, 1/3); trigrams aba, bab -> p = (1/2, 1/2)
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    h3 = 1.0
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2)
    assert ngram_entropy("") == 0.0
    assert ngram_entropy("the the the the the") == 0.0  # a repetitive text has no entropy
    with pytest.raises(ValueError, match="one weight per order"):
        ngram_entropy("a b", ns=(2, 3), weights=(1.0,))


def test_greedy_generation_is_padding_independent(llama):
    model, tok = llama
    prompts = ["The mother tongue of Danielle Darrieux is", "Paris"]
    batched = greedy_generate(model, tok, prompts, max_new_tokens=5, batch_size=2)
    alone = [greedy_generate(model, tok, [p], max_new_tokens=5, batch_size=1)[0] for p in prompts]
    assert batched == alone


def test_perplexity_is_exp_of_the_mean_nll_by_hand(llama):
    model, tok = llama
    ids = heldout_token_ids(tok, 150)
    assert ids.shape == (150,)
    out = perplexity(model, ids, window=64, batch_size=2)
    nll, count = 0.0, 0
    for start in range(0, 150, 64):
        chunk = ids[start:start + 64]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=chunk[None]).logits[0].double(), -1)
        for i in range(1, len(chunk)):
            nll -= float(lp[i - 1, chunk[i]])
            count += 1
    assert out["n_tokens"] == count == 150 - 3
    assert out["nll"] == pytest.approx(nll / count, rel=1e-6)
    assert out["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-6)
    # each window's summed NLL and count (what pairs two models' perplexities), the last one short
    assert [n for _, n in out["windows"]] == [63, 63, 21]
    for (window_nll, _), start in zip(out["windows"], range(0, 150, 64)):
        chunk = ids[start:start + 64]
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=chunk[None]).logits[0].double(), -1)
        assert window_nll == pytest.approx(-sum(float(lp[i - 1, chunk[i]]) for i in range(1, len(chunk))), rel=1e-9)


def test_perplexity_rejects_bad_input(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="window=1"):
        perplexity(model, torch.arange(10), window=1)
    with pytest.raises(ValueError, match="1-D"):
        perplexity(model, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="n_tokens=1"):
        heldout_token_ids(tok, 1)


def test_mmlu_accuracy_matches_argmax_by_hand(llama):
    model, tok = llama
    spread = load_mmlu(40)
    assert len({r["subject"] for r in spread}) > 20  # spread over the file, not the first subject only
    # questions that fit in the tiny model's 256-token context (longer ones keep their end)
    records = [r for r in spread if len(tok(mmlu_prompt(r))["input_ids"]) < 250][:6]
    out = mmlu_accuracy(model, tok, 6, records=records)
    correct = 0
    for r in records:
        lps = [_hand_logprobs(model, tok, mmlu_prompt(r), letter) for letter in "ABCD"]
        means = [total / len(encode_pair(tok, mmlu_prompt(r), letter)[1]) for (total, _), letter in zip(lps, "ABCD")]
        correct += int(max(range(4), key=lambda i: means[i]) == r["answer"])
    assert out["mmlu_acc"] == pytest.approx(correct / 6)
    assert out["mmlu_chance"] == 0.25 and out["mmlu_n"] == 6
    with pytest.raises(ValueError, match="n=0"):
        load_mmlu(0)


def test_leakage_and_perturbation_equal_the_trace_formulas():
    g = torch.Generator().manual_seed(0)
    d_v, d_k = 5, 7
    D = torch.randn(d_v, d_k, generator=g, dtype=torch.float32)
    W0 = torch.randn(d_v, d_k, generator=g)
    X = torch.randn(d_k, 50, generator=g, dtype=torch.float64)
    C0 = X @ X.T / 50
    out = layer_diagnostics(D, C0, W0)
    Dd, Wd = D.double(), W0.double()
    assert out["leakage"] == pytest.approx(float(torch.trace(Dd @ C0 @ Dd.T)), rel=1e-12)
    assert out["rel_leakage"] == pytest.approx(float(torch.trace(Dd @ C0 @ Dd.T) / torch.trace(Wd @ C0 @ Wd.T)), rel=1e-12)
    assert out["perturbation"] == pytest.approx(float(torch.linalg.norm(Dd)), rel=1e-12)
    # leakage is the mean squared output change on the keys behind C0
    assert out["leakage"] == pytest.approx(float(((Dd @ X) ** 2).sum() / 50), rel=1e-10)

    both = weight_diagnostics({3: D, 4: 2 * D}, {3: C0, 4: C0}, {3: W0, 4: W0})
    assert both["leakage/L4"] == pytest.approx(4 * both["leakage/L3"])
    assert both["leakage"] == pytest.approx(5 * both["leakage/L3"])
    assert both["perturbation"] == pytest.approx(math.sqrt(5) * both["perturbation/L3"])
    with pytest.raises(ValueError, match="same d_k"):
        layer_diagnostics(D, torch.eye(3))
    with pytest.raises(KeyError, match="no prior covariance for layer 9"):
        weight_diagnostics({9: D}, {3: C0})


def test_score_targets_rejects_mismatched_lists(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        score_targets(model, tok, ["a", "b"], ["c"])


def test_long_prompts_are_cut_to_the_context(llama):
    model, tok = llama
    long_prompt = "The capital of France is Paris. " * 200
    (score,) = score_targets(model, tok, [long_prompt], ["Rome"])
    # reference: the prompt's last (context - target) tokens, scored by hand in float64
    p_ids, t_ids = encode_pair(tok, long_prompt, "Rome")
    limit = model.config.max_position_embeddings
    assert len(p_ids) + len(t_ids) > limit  # the prompt is really cut
    ids = torch.tensor([p_ids[len(p_ids) + len(t_ids) - limit:] + t_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    want = sum(float(lp[limit - len(t_ids) - 1 + i, t]) for i, t in enumerate(t_ids))
    assert score.sum_logprob == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_one_tokenisation_for_every_token_accuracy(llama):
    """The runner's scores and EasyEdit's token metrics read the same tokens, with or without a
    leading space on the target (the space is added once, never twice)."""
    model, tok = llama
    prompt = "The mother tongue of Danielle Darrieux is"
    assert encode_pair(tok, prompt, "French") == encode_pair(tok, prompt, " French")
    for target in ("French", " French"):
        (s,) = score_targets(model, tok, [prompt], [target])
        assert predicted_target_tokens(model, tok, prompt, target) == (list(s.argmax), list(s.target_ids))
        assert target_token_accuracy(model, tok, prompt, target) == s.token_accuracy
