"""Projector and protected-matrix properties."""

import pytest
import torch

from betaedit_plugin.linalg import nullspace_basis, nullspace_projector, protected_cov


def random_cov(d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
    scales = torch.logspace(-4, 1, d, dtype=torch.float64)
    x = scales.sqrt()[:, None] * x
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = q @ x
    return x @ x.T / x.shape[1]


@pytest.mark.parametrize("threshold", [1e-3, 0.02, 0.5])
def test_projector_is_symmetric_idempotent_with_expected_rank(threshold):
    C = random_cov()
    P = nullspace_projector(C, threshold)
    expected_rank = int((torch.linalg.eigvalsh(C) < threshold).sum())
    assert 0 < expected_rank < C.shape[0]
    torch.testing.assert_close(P, P.T)
    torch.testing.assert_close(P @ P, P, rtol=0, atol=1e-10)
    assert torch.linalg.matrix_rank(P).item() == expected_rank
    assert round(torch.trace(P).item()) == expected_rank


def test_projector_annihilates_large_eigendirections():
    C = random_cov()
    vals, vecs = torch.linalg.eigh(C)
    P = nullspace_projector(C, 0.02)
    big = vecs[:, vals >= 0.02]
    assert (P @ big).abs().max() < 1e-10


def test_basis_is_orthonormal_and_spans_projector():
    C = random_cov()
    U = nullspace_basis(C, 0.02)
    torch.testing.assert_close(U.T @ U, torch.eye(U.shape[1], dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(U @ U.T, nullspace_projector(C, 0.02))


def test_projector_keeps_dtype():
    C = random_cov().float()
    assert nullspace_projector(C, 0.02).dtype == torch.float32


def test_protected_cov_formula():
    C0 = random_cov(seed=1)
    g = torch.Generator().manual_seed(2)
    K = torch.randn(40, 12, generator=g, dtype=torch.float64)
    H = K @ K.T
    S = protected_cov(H, 12, C0, lambda1=3000.0)
    torch.testing.assert_close(S, (H / 12 + 3000.0 * C0) / 3001.0)


def test_protected_cov_without_edits_is_scaled_prior():
    C0 = random_cov(seed=1)
    S = protected_cov(torch.zeros_like(C0), 0, C0, lambda1=4.0)
    torch.testing.assert_close(S, 0.8 * C0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_edits=-1), "n_edits=-1"),
        (dict(lambda1=-2.0), "lambda1=-2.0"),
        (dict(n_edits=0), "n_edits=0 but hist_cov is non-zero"),
    ],
)
def test_protected_cov_bad_input(kwargs, message):
    C0 = random_cov()
    args = dict(hist_cov=torch.eye(40, dtype=torch.float64), n_edits=3, prior_cov=C0, lambda1=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        protected_cov(**args)


def test_negative_threshold_is_named():
    with pytest.raises(ValueError, match="threshold=-0.1"):
        nullspace_projector(random_cov(), -0.1)


def test_nan_cov_is_named():
    C = random_cov()
    C[0, 0] = float("inf")
    with pytest.raises(ValueError, match="cov: contains NaN or Inf"):
        nullspace_projector(C)


def test_energy_share_is_the_trace_share_inside_the_span_against_float64_numpy():
    import numpy as np

    from betaedit_plugin.linalg.nullspace import energy_share, nullspace_split

    g = torch.Generator().manual_seed(3)
    keys = torch.randn(200, 12, generator=g, dtype=torch.float64) * torch.linspace(0.05, 2.0, 12, dtype=torch.float64)
    cov = keys.T @ keys / 200
    u, _ = nullspace_split(cov, 0.05)
    c, b = cov.numpy(), u.numpy()
    assert 0 < u.shape[1] < 12
    assert energy_share(u, cov) == pytest.approx(np.trace(b.T @ c @ b) / np.trace(c), rel=1e-12)
    full = torch.linalg.eigh(cov).eigenvectors
    assert energy_share(full, cov) == pytest.approx(1.0, rel=1e-12)  # the whole space holds all the energy
