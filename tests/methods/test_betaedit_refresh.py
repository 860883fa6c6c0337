"""BetaEdit's projector refresh reports how much each projector changed; `apply(z_star=...)` writes
exactly what `apply` writes when given the targets it computed itself."""

from __future__ import annotations

import math

import torch

from betaedit_plugin.methods.betaedit import largest_principal_angle
from support.editing import REQS, make_editor


def test_largest_principal_angle_against_known_subspaces():
    e = torch.eye(4, dtype=torch.float64)
    a = e[:, :2]                                              # span(e1, e2)
    b = torch.stack([e[:, 0], (e[:, 1] + e[:, 2]) / math.sqrt(2)], 1)  # span(e1, (e2 + e3)/sqrt 2)
    assert largest_principal_angle(a, b) == pytest_approx(45.0)
    assert largest_principal_angle(a, e[:, :3]) == pytest_approx(0.0)   # contained: measured in the smaller one
    assert largest_principal_angle(a, e[:, 2:]) == pytest_approx(90.0)
    assert math.isnan(largest_principal_angle(None, a))
    # against a float64 reference: arccos of the smallest singular value of A^T B, random 50-dim subspaces of R^80
    g = torch.Generator().manual_seed(0)
    qa, _ = torch.linalg.qr(torch.randn(80, 50, generator=g, dtype=torch.float64))
    qb, _ = torch.linalg.qr(torch.randn(80, 50, generator=g, dtype=torch.float64))
    ref = math.degrees(math.acos(float(torch.linalg.svd(qa.T @ qb).S.min())))
    assert largest_principal_angle(qa, qb) == pytest_approx(ref)


def pytest_approx(x):
    import pytest

    return pytest.approx(x, abs=1e-9)


def test_a_refresh_reports_ranks_and_angles(tiny):
    # lambda1 small: S = (H/t + lambda1 C0)/(lambda1 + 1) is mostly the edits' keys, so P moves
    editor = make_editor(tiny, "BetaEdit", tau=2, lambda1=0.01)
    first = editor.apply([REQS[0]])
    assert not first["refreshed"] and "refresh" not in first
    before = {l: s.basis.clone() for l, s in editor.state.layers.items()}  # P from C0
    refresh = editor.apply([REQS[1]])["refresh"]
    assert sorted(refresh) == ["1", "2"]
    for layer, change in refresh.items():
        old, new = before[int(layer)], editor.state.layers[int(layer)].basis
        assert change["step"] == 2
        assert (change["rank_before"], change["rank_after"]) == (old.shape[1], new.shape[1])
        assert change["max_angle_deg"] == largest_principal_angle(old, new)
        assert change["max_angle_deg"] > 1.0  # H from two edits moved the protected matrix's null space


def test_apply_with_its_own_targets_writes_the_same_update(tiny):
    a, b = make_editor(tiny, "BetaEdit"), make_editor(tiny, "BetaEdit")
    for req in REQS[:3]:
        z = b.compute_targets([req])
        info_a = a.apply([req])
        info_b = b.apply([req], z_star=z)
        assert torch.equal(info_a["z_star"], z) and torch.equal(info_b["z_star"], z)
        for l in a.hparams.layers:
            assert torch.equal(a.layout.read_weight(a.model, l), b.layout.read_weight(b.model, l))
    import pytest

    with pytest.raises(ValueError, match=r"z_star: expected a tensor of shape \(\d+, 1\)"):
        b.apply([REQS[3]], z_star=z.repeat(1, 2))
