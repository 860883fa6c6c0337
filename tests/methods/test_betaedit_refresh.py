"""BetaEdit's projector refresh reports how much each projector changed; `apply(z_star=...)` writes
exactly what `apply` writes when given the targets it computed itself."""

from __future__ import annotations

import math

import pytest
import torch

from betaedit_plugin.covariance import layer_second_moments
from betaedit_plugin.linalg import betaedit_delta
from betaedit_plugin.methods.betaedit import largest_principal_angle
from support.editing import LAYERS, REQS, assert_bit_equal, make_editor, params


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
    with pytest.raises(ValueError, match=r"z_star: expected a tensor of shape \(\d+, 1\)"):
        b.apply([REQS[3]], z_star=z.repeat(1, 2))


# ---------------------------------------------------------------------------- recollect_c0
#: the edited model's statistics in these tests: a few short texts of the bundled corpus; a tiny random
#: model's keys have no eigenvalue below the default threshold 0.02 (0.024-0.03 the smallest), 0.2 leaves
#: it a null space of about a third (and the random priors of make_editor half, as with 0.02)
_STATS = dict(mom2_n_samples=12, mom2_max_length=24, nullspace_threshold=0.2)


def _moments(editor):
    return layer_second_moments(editor.model, editor.tok, editor.layout, LAYERS, corpus="wiki_vital",  # as the editor
                                n_samples=_STATS["mom2_n_samples"], max_length=_STATS["mom2_max_length"],
                                progress=False, use_cache=False)


def test_recollect_c0_refreshes_from_the_edited_models_keys_against_float64_references(tiny):
    ed = make_editor(tiny, "BetaEdit", tau=2, recollect_c0=True, **_STATS)
    unedited = _moments(ed)
    first = ed.apply([REQS[0]])
    assert not first["refreshed"]
    old = {l: s.prior_cov for l, s in ed.state.layers.items()}  # the random priors of make_editor
    info = ed.apply([REQS[1]])
    assert info["refreshed"]
    now = _moments(ed)  # the model as edited by the two steps
    # the first edited layer reads keys that no edit moves (its down_proj input comes before its own
    # down_proj); the second reads keys the first layer's edits moved
    assert torch.equal(now[LAYERS[0]], unedited[LAYERS[0]])
    assert not torch.allclose(now[LAYERS[1]], unedited[LAYERS[1]], rtol=1e-6, atol=0)
    g = torch.Generator().manual_seed(1)
    for l, s in ed.state.layers.items():
        C, H = now[l], s.hist_cov
        assert torch.equal(s.prior_cov, C) and torch.equal(s.solver.prior_cov, C)
        change = info["refresh"][str(l)]
        assert change["c0_change"] == pytest_approx(float((C - old[l]).norm() / old[l].norm()))
        # P from S = (H / t + lambda1 C) / (lambda1 + 1), in float64: the eigenvectors below the threshold
        S = (H / 2 + 5.0 * C) / 6.0
        w, V = torch.linalg.eigh(0.5 * (S + S.T))
        U = V[:, w < ed.hparams.nullspace_threshold]
        assert s.basis.shape == U.shape and change["rank_after"] == U.shape[1]
        torch.testing.assert_close(s.basis @ s.basis.T, U @ U.T, rtol=0, atol=1e-8)
        # the next Delta against the closed form with the recollected C
        K = torch.randn(C.shape[0], 2, generator=g, dtype=torch.float64)
        R = torch.randn(ed.layout.value_dim(ed.model, l), 2, generator=g, dtype=torch.float64)
        torch.testing.assert_close(s.solver.delta(K, R), betaedit_delta(K, R, U @ U.T, C, hist_cov=H, lambda1=5.0, lambda2=1.0),
                                   rtol=1e-7, atol=1e-9)
    with pytest.raises(Exception, match=r"recollect_c0='yes': expected true or false"):
        make_editor(tiny, "BetaEdit", recollect_c0="yes")


def test_recollect_c0_leaves_weights_and_state_as_they_were_when_a_refresh_fails(tiny):
    ed = make_editor(tiny, "BetaEdit", tau=2, recollect_c0=True, **_STATS)
    ed.apply([REQS[0]])
    before_w = {l: ed.layout.read_weight(ed.model, l).clone() for l in LAYERS}
    before = {l: (s.prior_cov, s.hist_cov, s.basis.clone(), s.solver.g_inv.clone()) for l, s in ed.state.layers.items()}
    good = _moments(ed)
    bad = {  # the second layer's statistics not finite or of another shape (refused before any refresh), or
        # leaving S no null space (refused by its refresh, after the first layer's): the whole step is taken back
        r"recollect_c0: the key statistics of the edited model at layer 2, step 2, are not finite":
            torch.full_like(good[LAYERS[1]], float("nan")),
        r"recollect_c0: the key statistics of layer 2 have shape \(79, 79\), expected \(80, 80\)": good[LAYERS[1]][:-1, :-1],
        r"no eigenvalue of the protected matrix S of layer 2 at step 2 is below it": 1e6 * good[LAYERS[1]],
    }
    for message, second in bad.items():
        ed.current_priors = lambda: {LAYERS[0]: good[LAYERS[0]], LAYERS[1]: second}
        with pytest.raises(ValueError, match=message):
            ed.apply([REQS[1]])
        assert ed.step == 1 and ed.state.last_refresh == 0
        for l, s in ed.state.layers.items():
            prior, hist, basis, g_inv = before[l]
            assert s.prior_cov is prior and s.solver.prior_cov.data_ptr() == prior.data_ptr() and s.hist_cov is hist
            assert torch.equal(s.basis, basis) and torch.equal(s.solver.g_inv, g_inv)
            assert torch.equal(ed.layout.read_weight(ed.model, l), before_w[l])


def test_recollect_c0_resumes_bit_equal_from_a_saved_state(tiny, tmp_path):
    full = make_editor(tiny, "BetaEdit", tau=2, recollect_c0=True, **_STATS)
    for r in REQS[:4]:
        full.apply([r])
    first = make_editor(tiny, "BetaEdit", tau=2, recollect_c0=True, **_STATS)
    for r in REQS[:3]:
        first.apply([r])
    path = first.save_state(tmp_path / "state.safetensors")
    assert first.fingerprint()["hparams"]["recollect_c0"] is True
    plain = make_editor(tiny, "BetaEdit", tau=2, **_STATS)  # the paper's BetaEdit: another state
    assert "recollect_c0" not in plain.fingerprint()["hparams"]  # left out at false: older states still load
    with pytest.raises(ValueError, match=r"hparams.recollect_c0"):
        plain.load_state(path)
    resumed = make_editor(tiny, "BetaEdit", tau=2, recollect_c0=True, **_STATS)
    resumed.load_state(path)  # the C0 recollected at step 2 comes with the state
    assert all(torch.equal(resumed.state.layers[l].prior_cov, first.state.layers[l].prior_cov) for l in LAYERS)
    resumed.apply([REQS[3]])  # the refresh at 4 recollects again
    assert_bit_equal(params(full.model), params(resumed.model))
    for l in LAYERS:
        assert torch.equal(full.state.layers[l].prior_cov, resumed.state.layers[l].prior_cov)
