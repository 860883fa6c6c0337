"""score_targets: logits computed at the scored positions only equal the full-logits path."""

from __future__ import annotations

import pytest

from betaedit_plugin.eval.scoring import score_targets
from betaedit_plugin.models.tiny import TINY_ARCHS

PROMPTS = ["The mother tongue of Danielle Darrieux is", "Michael Jordan plays", "A"]
TARGETS = ["English French", "basketball", "b c d e"]  # targets of different lengths in one batch


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_head_at_scored_positions_equals_full_logits(tiny, arch, monkeypatch):
    model, tok = tiny(arch)
    fast = score_targets(model, tok, PROMPTS, TARGETS, batch_size=2)
    monkeypatch.setattr(model, "get_output_embeddings", lambda: None)  # forces the full-logits path
    full = score_targets(model, tok, PROMPTS, TARGETS, batch_size=2)
    for a, b in zip(fast, full):
        assert a.argmax == b.argmax and a.target_ids == b.target_ids and a.n_tokens == b.n_tokens
        assert a.sum_logprob == pytest.approx(b.sum_logprob, rel=1e-6, abs=1e-9)
    assert len({s.n_tokens for s in fast}) > 1
