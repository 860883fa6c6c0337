"""Closed forms against textbook float64 expressions written out here."""

import pytest
import torch

from betaedit_plugin.linalg import (
    alphaedit_delta,
    betaedit_delta,
    memit_delta,
    nullspace_projector,
)

D_K, D_V, N = 48, 20, 3


def spd(d, n_samples=400, seed=0, rank=None):
    """Mean uncentred second moment of Gaussian samples (rank-deficient if rank < d)."""
    g = torch.Generator().manual_seed(seed)
    rank = rank or d
    mix = torch.randn(d, rank, generator=g, dtype=torch.float64)
    x = mix @ torch.randn(rank, n_samples, generator=g, dtype=torch.float64) / rank**0.5
    return x @ x.T / n_samples


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(D_K, N, generator=g, dtype=torch.float64)
    resid = torch.randn(D_V, N, generator=g, dtype=torch.float64)
    past = torch.randn(D_K, 10, generator=g, dtype=torch.float64)
    return keys, resid, spd(D_K), past @ past.T


def test_memit_matches_textbook(data):
    K, R, C0, H = data
    w = 7.5
    ref = R @ K.T @ torch.linalg.inv(K @ K.T + H + w * C0)
    torch.testing.assert_close(memit_delta(K, R, C0, H, w), ref, rtol=1e-10, atol=1e-12)


def test_alphaedit_matches_textbook(data):
    K, R, C0, H = data
    P = nullspace_projector(C0, threshold=0.3)
    ref = R @ K.T @ P @ torch.linalg.inv((K @ K.T + H) @ P + 10.0 * torch.eye(D_K, dtype=torch.float64))
    torch.testing.assert_close(alphaedit_delta(K, R, P, H, l2=10.0), ref, rtol=1e-10, atol=1e-12)


def test_betaedit_matches_textbook(data):
    K, R, C0, H = data
    P = nullspace_projector(C0, threshold=0.3)
    lam1, lam2 = 30.0, 2.0
    A = K @ K.T + H + lam1 * C0
    ref = R @ K.T @ P @ torch.linalg.inv(A @ P + lam2 * torch.eye(D_K, dtype=torch.float64))
    torch.testing.assert_close(betaedit_delta(K, R, P, C0, H, lam1, lam2), ref, rtol=1e-10, atol=1e-12)


def test_betaedit_with_zero_lambda1_is_alphaedit(data):
    K, R, C0, H = data
    P = nullspace_projector(C0, threshold=0.3)
    torch.testing.assert_close(
        betaedit_delta(K, R, P, C0, H, lambda1=0.0, lambda2=10.0), alphaedit_delta(K, R, P, H, l2=10.0)
    )


def test_alphaedit_with_identity_projector_is_ridge_memit(data):
    K, R, C0, H = data
    w = 15.0
    eye = torch.eye(D_K, dtype=torch.float64)
    torch.testing.assert_close(
        alphaedit_delta(K, R, eye, hist_cov=H + w * C0, l2=0.0), memit_delta(K, R, C0, H, mom2_update_weight=w)
    )


@pytest.mark.parametrize("method", ["alphaedit", "betaedit"])
def test_exact_null_space_gives_zero_leakage(method):
    """C0 of rank 30 in 48 dims: keys in C0's range must keep their outputs."""
    C0 = spd(D_K, rank=30, seed=3)
    g = torch.Generator().manual_seed(4)
    K = torch.randn(D_K, N, generator=g, dtype=torch.float64)
    R = torch.randn(D_V, N, generator=g, dtype=torch.float64)
    P = nullspace_projector(C0, threshold=1e-8)
    assert int(round(torch.trace(P).item())) == D_K - 30
    if method == "alphaedit":
        delta = alphaedit_delta(K, R, P, l2=1.0)
    else:
        delta = betaedit_delta(K, R, P, C0, lambda1=100.0, lambda2=1.0)
    in_range = C0 @ torch.randn(D_K, 25, generator=g, dtype=torch.float64)
    out_change = delta @ in_range
    assert out_change.abs().max() < 1e-9 * delta.abs().max() * in_range.abs().max()
    leakage = torch.trace(delta @ C0 @ delta.T)
    # trace(D C0 D^T) <= ||D||_F^2 ||C0||_2 for any D; here it is zero up to rounding.
    assert leakage.abs() < 1e-12 * delta.norm() ** 2 * torch.linalg.matrix_norm(C0, ord=2)
    assert delta.norm() > 1e-3  # it did edit something


@pytest.mark.parametrize("method", ["memit", "alphaedit", "betaedit"])
def test_history_protects_past_edits(method):
    """A new edit moves past keys' outputs far less when H holds them."""
    g = torch.Generator().manual_seed(5)
    C0 = spd(D_K, rank=16, seed=6)
    past = torch.randn(D_K, 8, generator=g, dtype=torch.float64) * 3
    H = past @ past.T
    K = torch.randn(D_K, 1, generator=g, dtype=torch.float64) * 3
    R = torch.randn(D_V, 1, generator=g, dtype=torch.float64)
    P = nullspace_projector(C0, threshold=1e-8)

    def delta(hist):
        if method == "memit":
            return memit_delta(K, R, C0, hist, mom2_update_weight=1.0)
        if method == "alphaedit":
            return alphaedit_delta(K, R, P, hist, l2=0.1)
        return betaedit_delta(K, R, P, C0, hist, lambda1=1.0, lambda2=0.1)

    without = (delta(None) @ past).norm()
    with_hist = (delta(H) @ past).norm()
    assert with_hist < 0.1 * without


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_solve_in_float64_and_keep_dtype(data, dtype):
    K, R, C0, H = data
    P = nullspace_projector(C0, threshold=0.3)
    ref = betaedit_delta(K, R, P, C0, H, 3.0, 1.0)
    out = betaedit_delta(K.to(dtype), R.to(dtype), P.to(dtype), C0.to(dtype), H.to(dtype), 3.0, 1.0)
    assert out.dtype == dtype and out.device == K.device
    tol = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 2e-1}[dtype]
    assert (out.double() - ref).norm() <= tol * ref.norm()


# ---------------------------------------------------------------- bad input
def test_mismatched_n_names_both_arguments(data):
    K, R, C0, _ = data
    with pytest.raises(ValueError, match=r"keys has shape \(48, 3\) and resid \(20, 2\)"):
        memit_delta(K, R[:, :2], C0)


def test_wrong_cov_shape_is_named(data):
    K, R, C0, _ = data
    with pytest.raises(ValueError, match=r"prior_cov: expected shape \(48, 48\)"):
        memit_delta(K, R, C0[:40, :40])


def test_non_square_projector_is_named(data):
    K, R, C0, _ = data
    with pytest.raises(ValueError, match="projector: expected a square"):
        alphaedit_delta(K, R, C0[:, :40])


def test_non_symmetric_cov_is_named(data):
    K, R, C0, _ = data
    bad = C0.clone()
    bad[0, 1] += 1.0
    with pytest.raises(ValueError, match="hist_cov: expected a symmetric matrix"):
        betaedit_delta(K, R, torch.eye(D_K, dtype=torch.float64), C0, hist_cov=bad)


@pytest.mark.parametrize("name", ["lambda1", "lambda2"])
def test_negative_lambda_is_named(data, name):
    K, R, C0, _ = data
    with pytest.raises(ValueError, match=f"{name}=-1.0"):
        betaedit_delta(K, R, torch.eye(D_K, dtype=torch.float64), C0, **{name: -1.0})


def test_non_finite_keys_are_named(data):
    K, R, C0, _ = data
    K = K.clone()
    K[3, 1] = float("nan")
    with pytest.raises(ValueError, match="keys: contains NaN or Inf"):
        memit_delta(K, R, C0)


def test_one_dimensional_keys_rejected(data):
    _, R, C0, _ = data
    with pytest.raises(ValueError, match=r"keys: expected a 2-D tensor, got shape \(48,\)"):
        memit_delta(torch.randn(D_K, dtype=torch.float64), R, C0)
