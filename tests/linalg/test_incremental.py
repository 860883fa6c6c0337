"""The incremental (Woodbury) solver against the dense formulas."""

import pytest
import torch

from betaedit_plugin.linalg import (
    IncrementalSolver,
    add_keys,
    alphaedit_delta,
    betaedit_delta,
    memit_delta,
    nullspace_basis,
    protected_cov,
)


def prior(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-3, 0.5, d, dtype=torch.float64)
    x = scales.sqrt()[:, None] * torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = q @ x
    return x @ x.T / x.shape[1]


def test_add_keys_matches_recomputation():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, n, generator=g, dtype=torch.float64) for n in (1, 3, 2)]
    H = torch.zeros(16, 16, dtype=torch.float64)
    for K in batches:
        H = add_keys(H, K)
    allk = torch.cat(batches, dim=1)
    torch.testing.assert_close(H, allk @ allk.T)


def test_betaedit_incremental_matches_dense_after_500_edits_with_refreshes():
    """d_k = 512, 500 single edits, projector refreshed every 200 edits from S."""
    d_k, d_v, lam1, lam2, tau, thr = 512, 24, 3000.0, 10.0, 200, 0.02
    C0 = prior(d_k)
    g = torch.Generator().manual_seed(1)
    U = nullspace_basis(C0, thr)
    H = torch.zeros(d_k, d_k, dtype=torch.float64)
    solver = IncrementalSolver(C0, U, H, lambda1=lam1, lambda2=lam2)
    worst = 0.0
    for t in range(500):
        K = torch.randn(d_k, 1, generator=g, dtype=torch.float64)
        R = torch.randn(d_v, 1, generator=g, dtype=torch.float64)
        fast = solver.delta(K, R)
        if t % 25 == 0 or t == 499:
            dense = betaedit_delta(K, R, U @ U.T, C0, H, lam1, lam2)
            worst = max(worst, ((fast - dense).norm() / dense.norm()).item())
        solver.add_keys(K)
        H = add_keys(H, K)
        if (t + 1) % tau == 0:
            U = nullspace_basis(protected_cov(H, t + 1, C0, lam1), thr)
            solver.refresh(U, H)
    assert worst <= 1e-6, worst


def test_batched_edits_match_dense():
    d_k, d_v = 64, 10
    C0 = prior(d_k, seed=2)
    g = torch.Generator().manual_seed(3)
    U = nullspace_basis(C0, 0.1)
    solver = IncrementalSolver(C0, U, None, lambda1=5.0, lambda2=1.0)
    H = torch.zeros(d_k, d_k, dtype=torch.float64)
    for n in (4, 1, 7):
        K = torch.randn(d_k, n, generator=g, dtype=torch.float64)
        R = torch.randn(d_v, n, generator=g, dtype=torch.float64)
        torch.testing.assert_close(solver.delta(K, R), betaedit_delta(K, R, U @ U.T, C0, H, 5.0, 1.0))
        solver.add_keys(K)
        H = add_keys(H, K)


def test_identity_basis_is_history_aware_memit():
    d_k, d_v, w = 32, 8, 15.0
    C0 = prior(d_k, seed=4)
    g = torch.Generator().manual_seed(5)
    solver = IncrementalSolver(C0, None, None, lambda1=w, lambda2=0.0)
    H = torch.zeros(d_k, d_k, dtype=torch.float64)
    for _ in range(20):
        K = torch.randn(d_k, 2, generator=g, dtype=torch.float64)
        R = torch.randn(d_v, 2, generator=g, dtype=torch.float64)
        torch.testing.assert_close(solver.delta(K, R), memit_delta(K, R, C0, H, w))
        solver.add_keys(K)
        H = add_keys(H, K)


def test_zero_lambda1_is_alphaedit():
    d_k, d_v = 32, 8
    C0 = prior(d_k, seed=6)
    U = nullspace_basis(C0, 0.05)
    g = torch.Generator().manual_seed(7)
    past = torch.randn(d_k, 5, generator=g, dtype=torch.float64)
    solver = IncrementalSolver(C0, U, past @ past.T, lambda1=0.0, lambda2=10.0)
    K = torch.randn(d_k, 1, generator=g, dtype=torch.float64)
    R = torch.randn(d_v, 1, generator=g, dtype=torch.float64)
    torch.testing.assert_close(solver.delta(K, R), alphaedit_delta(K, R, U @ U.T, past @ past.T, l2=10.0))


def test_float32_inputs_come_back_float32():
    d_k = 32
    C0 = prior(d_k).float()
    solver = IncrementalSolver(C0, nullspace_basis(C0, 0.05), None, lambda1=3.0, lambda2=1.0)
    out = solver.delta(torch.randn(d_k, 1), torch.randn(6, 1))
    assert out.dtype == torch.float32 and out.shape == (6, d_k)


def test_state_dict_round_trip_continues_identically():
    d_k, d_v = 32, 8
    C0 = prior(d_k)
    g = torch.Generator().manual_seed(8)
    keys = [torch.randn(d_k, 1, generator=g, dtype=torch.float64) for _ in range(6)]
    R = torch.randn(d_v, 1, generator=g, dtype=torch.float64)
    a = IncrementalSolver(C0, nullspace_basis(C0, 0.05), None, lambda1=3.0, lambda2=1.0)
    for K in keys[:3]:
        a.add_keys(K)
    b = IncrementalSolver(C0, None, None, lambda1=3.0, lambda2=1.0)
    b.load_state_dict(a.state_dict())
    for K in keys[3:]:
        a.add_keys(K)
        b.add_keys(K)
    assert torch.equal(a.delta(keys[0], R), b.delta(keys[0], R))


def test_state_with_other_lambda_refused():
    C0 = prior(16)
    a = IncrementalSolver(C0, None, None, lambda1=3.0, lambda2=1.0)
    b = IncrementalSolver(C0, None, None, lambda1=4.0, lambda2=1.0)
    with pytest.raises(ValueError, match="lambda1=3.0"):
        b.load_state_dict(a.state_dict())


def test_singular_system_explains_fix():
    C0 = prior(16)
    U = nullspace_basis(C0, 0.05)
    with pytest.raises(ValueError, match="use lambda2 > 0"):
        IncrementalSolver(C0, U, None, lambda1=0.0, lambda2=0.0)


def test_empty_basis_explains_fix():
    C0 = prior(16)
    with pytest.raises(ValueError, match="raise nullspace_threshold"):
        IncrementalSolver(C0, torch.zeros(16, 0, dtype=torch.float64), None, lambda1=1.0, lambda2=1.0)


def test_wrong_key_dim_is_named():
    C0 = prior(16)
    solver = IncrementalSolver(C0, None, None, lambda1=1.0)
    with pytest.raises(ValueError, match=r"keys: expected 16 rows"):
        solver.delta(torch.randn(12, 1, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64))
