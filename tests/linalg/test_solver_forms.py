"""The solver's parts: the factory and the protocol, 'auto' switching form at a refresh, a
restore and a load, conversions between the forms, and the low-rank factor on its own.
References are the float64 dense formulas; everything runs on the CPU."""

import pytest
import torch

from betaedit_plugin.linalg import (
    AutoFormSolver,
    DenseSolver,
    FactoredSolver,
    IncrementalSolver,
    Placement,
    Solver,
    add_keys,
    betaedit_delta,
    nullspace_basis,
)
from betaedit_plugin.linalg.lowrank import LowRankFactor

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ForcedOffload(Placement):
    offloaded = True  # both devices are the CPU here; runs the parking code paths anyway


def problem(d=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    root = q * (2.0 / torch.arange(1, d + 1, dtype=torch.float64)).sqrt()
    x = root @ torch.randn(d, 4 * d, generator=g, dtype=torch.float64)
    C0 = x @ x.T / x.shape[1]
    return C0, (lambda n: root @ torch.randn(d, n, generator=g, dtype=torch.float64)), g


def test_factory_returns_one_class_per_form_all_following_the_protocol():
    C0, _, _ = problem(32)
    U = nullspace_basis(C0, 0.05)
    for form, cls in (("factored", FactoredSolver), ("dense", DenseSolver), ("auto", AutoFormSolver)):
        s = IncrementalSolver(C0, U, None, 3.0, 1.0, inverse_form=form)
        assert type(s) is cls and isinstance(s, Solver)
    s = IncrementalSolver(C0, None, None, 3.0, compute_dtype="float32", storage_device="cpu")
    assert s.placement == Placement(CPU, CPU, torch.float32) and s.refresh_every == 1000


@pytest.mark.parametrize("offload", [False, True])
def test_auto_switches_form_at_a_refresh_and_back_at_a_restore(offload):
    """m from 0.035 (factored) to 0.2 (dense) and back: each stretch equals the dense formula,
    the switched solver equals a fresh solver of that form bit for bit, and a snapshot taken
    before the switch restores exactly."""
    C0, keys, g = problem()
    U1, U2 = nullspace_basis(C0, 0.035), nullspace_basis(C0, 0.2)
    placement = ForcedOffload(CPU, CPU, torch.float32) if offload else Placement(CPU, CPU, torch.float32)
    s = AutoFormSolver(C0, U1, None, 30.0, 1.0, placement=placement, refresh_every=5)
    assert s.form == "factored"
    H = torch.zeros_like(C0)
    for _ in range(3):
        K = keys(1)
        H = add_keys(H, K)
        s.add_keys(K, hist_cov=H)
    probe, R = keys(2), torch.randn(4, 2, generator=g, dtype=torch.float64)
    snap, before = s.snapshot(), s.delta(probe, R)
    s.refresh(U2, H)
    assert s.form == "dense" and s.keys_since_refresh == 0
    fresh = DenseSolver(C0, U2, H, 30.0, 1.0, placement=Placement(CPU, CPU, torch.float32), refresh_every=5)
    assert torch.equal(s.delta(probe, R), fresh.delta(probe, R))
    for n in (1, 2, 3):  # crosses the periodic recomputation at 5 keys
        K = keys(n)
        want = betaedit_delta(K, R[:, :1].expand(-1, n), U2 @ U2.T, C0, H, 30.0, 1.0)
        got = s.delta(K, R[:, :1].expand(-1, n))
        assert ((got - want).norm() / want.norm()).item() <= 1e-5
        H = add_keys(H, K)
        s.add_keys(K, hist_cov=H)
        fresh.add_keys(K, hist_cov=H)
        assert torch.equal(s.delta(probe, R), fresh.delta(probe, R))
    after = s.snapshot()
    s.restore(snap)
    assert s.form == "factored" and s.keys_since_refresh == 3 and torch.equal(s.delta(probe, R), before)
    s.restore(after)
    assert s.form == "dense" and torch.equal(s.delta(probe, R), fresh.delta(probe, R))


def test_auto_load_takes_the_form_of_the_saved_basis():
    C0, keys, _ = problem()
    U = nullspace_basis(C0, 0.2)
    a = DenseSolver(C0, U, None, 3.0, 1.0, placement=Placement(CPU, CPU, torch.float32), refresh_every=6)
    H = torch.zeros_like(C0)
    for _ in range(4):
        K = keys(1)
        H = add_keys(H, K)
        a.add_keys(K, hist_cov=H)
    b = IncrementalSolver(C0, None, None, 3.0, 1.0, compute_dtype=torch.float32, refresh_every=6, inverse_form="auto")
    assert b.form == "factored"
    b.load_state_dict(a.state_dict(), hist_cov=H)
    assert b.form == "dense" and b.keys_since_refresh == 4
    assert b.state_dict().keys() == a.state_dict().keys()
    probe, R = keys(1), torch.ones(3, 1, dtype=torch.float64)
    assert torch.equal(a.delta(probe, R), b.delta(probe, R))


@pytest.mark.parametrize("saved_cls", [FactoredSolver, DenseSolver])
@pytest.mark.parametrize("target_cls", [FactoredSolver, DenseSolver])
def test_state_converts_between_forms_through_the_basis(saved_cls, target_cls):
    """Without hist_cov a state of the other form (and with a factor, into a solver without
    one) is converted through U; the result is the float64 dense formula's Delta."""
    C0, keys, g = problem(64, seed=3)
    U = nullspace_basis(C0, 0.02)
    a = saved_cls(C0, U, None, 3.0, 1.0, refresh_every=50)
    H = torch.zeros_like(C0)
    for _ in range(3):
        K = keys(1)
        H = add_keys(H, K)
        a.add_keys(K, hist_cov=H)
    b = target_cls(C0, None, None, 3.0, 1.0)
    b.load_state_dict(a.state_dict())
    assert b.form == target_cls.inverse_form and b.keys_since_refresh == 0
    K, R = keys(2), torch.randn(5, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(b.delta(K, R), betaedit_delta(K, R, U @ U.T, C0, H, 3.0, 1.0), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(b.g_inv, a.g_inv, rtol=1e-9, atol=1e-12)


def test_identity_basis_is_the_same_in_both_forms():
    """U = I: M = G^-1, so the dense class computes what the factored one does, bit for bit."""
    C0, keys, g = problem(48, seed=4)
    f, d = FactoredSolver(C0, None, None, 50.0, 0.0), DenseSolver(C0, None, None, 50.0, 0.0)
    assert f.form == d.form == "factored" and set(f.state_dict()) == set(d.state_dict())
    for _ in range(3):
        K, R = keys(2), torch.randn(3, 2, generator=g, dtype=torch.float64)
        assert torch.equal(f.delta(K, R), d.delta(K, R))
        f.add_keys(K)
        d.add_keys(K)
    assert torch.equal(f.g_inv, d.g_inv)


def test_low_rank_factor_applies_base_minus_f_ft_and_never_overwrites_a_snapshot():
    g = torch.Generator().manual_seed(5)
    fac = LowRankFactor(capacity=9, dtype=torch.float64, device=CPU)
    base = torch.randn(12, 12, generator=g, dtype=torch.float64)
    B = torch.randn(12, 2, generator=g, dtype=torch.float64)
    assert torch.equal(fac.correct(base @ B, B), base @ B) and fac.saved(12).shape == (12, 0)
    cols = [torch.randn(12, n, generator=g, dtype=torch.float64) for n in (2, 3)]
    for V in cols:
        fac.append(V)
    F = torch.cat(cols, dim=1)
    assert fac.columns == 5 and torch.equal(fac.view(), F)
    torch.testing.assert_close(fac.correct(base @ B, B), (base - F @ F.T) @ B, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fac.subtract_from64(base, CPU), base - F @ F.T, rtol=1e-12, atol=1e-12)
    snap = fac.snapshot()
    fac.append(torch.ones(12, 4, dtype=torch.float64))  # fills the capacity exactly
    later = fac.snapshot()
    fac.restore(snap)
    fac.append(torch.zeros(12, 1, dtype=torch.float64))  # must copy: `later` still uses column 5
    fac.restore(later)
    assert torch.equal(fac.view()[:, 5:], torch.ones(12, 4, dtype=torch.float64))
    fac.clear()
    assert fac.columns == 0 and fac.tensors() == [] and fac.nbytes() == 0
