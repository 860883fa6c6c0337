"""IncrementalSolver placement and precision: float32 compute with float64 refresh, the dense form,
snapshots and saved states across precisions. References are float64; everything runs on the CPU."""

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
    memit_delta,
    nullspace_basis,
    solver_device_bytes,
)

D_K, D_V = 256, 24


@pytest.fixture(autouse=True)
def one_thread():
    """These are small matrices: one thread avoids OpenMP's overhead (large on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def problem(d=D_K, seed=0):
    """C0 from 4 d random keys with a power-law spectrum (2 / i: 2 down to 0.006, about 70% of
    the eigenvalues below 0.02, as SmolLM2's C0 has 60-78%), and a sampler of keys with that
    second moment."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    root = q * (2.0 / torch.arange(1, d + 1, dtype=torch.float64)).sqrt()
    x = root @ torch.randn(d, 4 * d, generator=g, dtype=torch.float64)
    C0 = x @ x.T / x.shape[1]

    def keys(n):
        return root @ torch.randn(d, n, generator=g, dtype=torch.float64)

    return C0, keys, g


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_float32_with_periodic_refresh_tracks_float64_over_400_edits():
    """BetaEdit (SmolLM2's lambda1 300, lambda2 1) in both forms and history-aware MEMIT (w 1000),
    float32 per-edit tensors refreshed in float64 every 100 keys, against float64 solvers."""
    C0, keys, g = problem()
    U = nullspace_basis(C0, 0.02)
    f32 = dict(compute_dtype=torch.float32, refresh_every=100)
    ref = {"beta": IncrementalSolver(C0, U, None, 300.0, 1.0), "memit": IncrementalSolver(C0, None, None, 1000.0, 0.0)}
    runs = {
        "beta-factored": ("beta", IncrementalSolver(C0, U, None, 300.0, 1.0, **f32, inverse_form="factored")),
        "beta-dense": ("beta", IncrementalSolver(C0, U, None, 300.0, 1.0, **f32, inverse_form="dense")),
        "memit": ("memit", IncrementalSolver(C0, None, None, 1000.0, 0.0, **f32)),
    }
    H = torch.zeros_like(C0)
    worst = dict.fromkeys(runs, 0.0)
    refreshes = 0
    for _ in range(400):
        K = keys(1)
        R = torch.randn(D_V, 1, generator=g, dtype=torch.float64)
        want = {name: s.delta(K, R) for name, s in ref.items()}
        for name, (which, s) in runs.items():
            worst[name] = max(worst[name], rel(s.delta(K, R), want[which]))
        H = H + K @ K.T
        for s in ref.values():
            s.add_keys(K)
        for _, s in runs.values():
            s.add_keys(K, hist_cov=H)
        refreshes += runs["memit"][1].keys_since_refresh == 0
    assert refreshes == 4
    assert runs["beta-dense"][1].form == "dense" and all(s.tensors()[-1].dtype == torch.float32 for _, s in runs.values())
    assert max(worst.values()) <= 1e-4, worst


def test_periodic_refresh_recomputes_the_float64_inverse():
    C0, keys, _ = problem(96, seed=1)
    U = nullspace_basis(C0, 0.02)
    s = IncrementalSolver(C0, U, None, 300.0, 1.0, compute_dtype="float32", refresh_every=7)
    H = torch.zeros_like(C0)
    for i in range(7):
        K = keys(1)
        H = add_keys(H, K)
        s.add_keys(K, hist_cov=H)
        assert s.keys_since_refresh == (i + 1) % 7
    fresh = IncrementalSolver(C0, U, H, 300.0, 1.0)
    torch.testing.assert_close(s.g_inv, fresh.g_inv.float().double(), rtol=0, atol=0)


def test_batched_keys_count_towards_refresh_every():
    C0, keys, _ = problem(64, seed=2)
    s = IncrementalSolver(C0, None, None, 50.0, 0.0, compute_dtype=torch.float32, refresh_every=5)
    H = torch.zeros_like(C0)
    for n, left in ((3, 3), (4, 0), (2, 2)):
        K = keys(n)
        H = add_keys(H, K)
        s.add_keys(K, hist_cov=H)
        assert s.keys_since_refresh == left


def test_placement_and_dtypes_are_as_asked():
    C0, keys, _ = problem(64, seed=3)
    U = nullspace_basis(C0.float(), 0.02)
    s = IncrementalSolver(
        C0.float(), U, None, 3.0, 1.0,
        compute_device="cpu", compute_dtype=torch.float32, storage_device="cpu", refresh_every=10,
    )
    assert s.storage_device == torch.device("cpu") and s.compute_device == torch.device("cpu")
    assert s.prior_cov.dtype == torch.float64 and s.basis.dtype == torch.float64
    H = add_keys(torch.zeros_like(C0), keys(2))
    s.add_keys(keys(2), hist_cov=H)
    for t in s.tensors()[2:]:  # U's compute copy, the inverse, the factor buffer
        assert t.dtype == torch.float32 and t.device == torch.device("cpu")
    out = s.delta(keys(1).float(), torch.randn(5, 1, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (5, 64)


def test_default_is_float64_on_the_prior_device_with_full_updates():
    C0, keys, _ = problem(48, seed=4)
    s = IncrementalSolver(C0, nullspace_basis(C0, 0.02), None, 3.0, 1.0)
    s.add_keys(keys(1))  # no hist_cov needed
    assert s.refresh_every is None and s.form == "factored" and s.keys_since_refresh == 0
    assert all(t.dtype == torch.float64 for t in s.tensors())
    assert s.basis is s.tensors()[2]  # one float64 U, shared by storage and compute


@pytest.mark.parametrize("refresh_every", [None, 9])
def test_dense_form_matches_the_dense_formula(refresh_every):
    C0, keys, g = problem(80, seed=5)
    U = nullspace_basis(C0, 0.02)
    s = IncrementalSolver(C0, U, None, 30.0, 1.0, inverse_form="dense", refresh_every=refresh_every)
    assert s.form == "dense" and s.tensors()[2].shape == (80, 80)  # M = U G^-1 U^T, no basis copy
    H = torch.zeros_like(C0)
    for n in (1, 3, 1, 2, 5, 1):
        K = keys(n)
        R = torch.randn(7, n, generator=g, dtype=torch.float64)
        torch.testing.assert_close(s.delta(K, R), betaedit_delta(K, R, U @ U.T, C0, H, 30.0, 1.0), rtol=1e-8, atol=1e-12)
        H = add_keys(H, K)
        s.add_keys(K, hist_cov=H)


def test_auto_form_picks_the_smaller_layout_and_bytes_are_predicted():
    C0, keys, _ = problem(100, seed=6)
    for thr, expect in ((0.035, "factored"), (0.2, "dense")):
        U = nullspace_basis(C0, thr)
        m = U.shape[1]
        s = IncrementalSolver(C0, U, None, 3.0, 1.0, inverse_form="auto", compute_dtype=torch.float32, refresh_every=10)
        assert s.form == expect, (m, s.form)
        assert s.device_bytes() == solver_device_bytes(100, m, torch.float32, expect)  # no factor yet
        s.add_keys(keys(1), hist_cov=C0)  # any symmetric H will do until the refresh
        both = [solver_device_bytes(100, m, torch.float32, f, factor_columns=9) for f in ("factored", "dense")]
        assert s.device_bytes() == solver_device_bytes(100, m, "float32", "auto", factor_columns=9) == min(both)
    assert solver_device_bytes(100, None, torch.float64, "dense") == 8 * 100 * 100  # U = I: G^-1 only


def _edit(s, H, K):
    H = add_keys(H, K)
    s.add_keys(K, hist_cov=H)
    return H


@pytest.mark.parametrize("form", ["factored", "dense"])
def test_snapshot_restore_is_exact_across_a_refresh(form):
    C0, keys, _ = problem(64, seed=7)
    U = nullspace_basis(C0, 0.02)
    s = IncrementalSolver(C0, U, None, 3.0, 1.0, compute_dtype=torch.float32, refresh_every=4, inverse_form=form)
    H = torch.zeros_like(C0)
    for _ in range(2):
        H = _edit(s, H, keys(1))
    probe, R = keys(1), torch.ones(3, 1, dtype=torch.float64)
    before, snap, H_snap = s.delta(probe, R), s.snapshot(), H
    for _ in range(3):  # crosses the refresh at 4 keys
        H = _edit(s, H, keys(1))
    s.restore(snap)
    assert s.keys_since_refresh == 2 and torch.equal(s.delta(probe, R), before)
    # after a restore, appending must not overwrite columns a later snapshot still uses
    K1 = keys(1)
    H1 = _edit(s, H_snap, K1)
    snap1, after1 = s.snapshot(), s.delta(probe, R)
    s.restore(snap)
    _edit(s, H_snap, keys(1))
    s.restore(snap1)
    assert torch.equal(s.delta(probe, R), after1)
    del H1


class ForcedOffload(Placement):
    """Both devices are the CPU here; this runs the offloaded code paths anyway."""

    offloaded = True


CPU = torch.device("cpu")


@pytest.mark.parametrize("cls", [FactoredSolver, DenseSolver])
def test_offloaded_solver_moves_replaced_inverses_off_the_compute_device(cls):
    """Old inverse parked on storage at a refresh, moved back by restore; results checked."""
    C0, keys, _ = problem(64, seed=8)
    U = nullspace_basis(C0, 0.02)
    s = cls(C0, U, None, 3.0, 1.0, placement=ForcedOffload(CPU, CPU, torch.float32), refresh_every=3)
    ref = IncrementalSolver(C0, U, None, 3.0, 1.0)
    H = torch.zeros_like(C0)
    probe, R = keys(1), torch.ones(3, 1, dtype=torch.float64)
    snaps = []
    for _ in range(7):
        snaps.append((s.snapshot(), s.delta(probe, R)))
        K = keys(1)
        H = _edit(s, H, K)
        ref.add_keys(K)
        assert rel(s.delta(probe, R), ref.delta(probe, R)) <= 1e-5
    for snap, expect in reversed(snaps):
        s.restore(snap)
        assert torch.equal(s.delta(probe, R), expect)


def test_float32_state_round_trip_continues_identically():
    C0, keys, _ = problem(64, seed=9)
    U = nullspace_basis(C0, 0.02)
    opts = dict(compute_dtype=torch.float32, refresh_every=8, inverse_form="dense")
    a = IncrementalSolver(C0, U, None, 3.0, 1.0, **opts)
    H = torch.zeros_like(C0)
    for _ in range(5):
        H = _edit(a, H, keys(1))
    b = IncrementalSolver(C0, None, None, 3.0, 1.0, **opts)
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()}, hist_cov=H)
    assert b.keys_since_refresh == 5
    probe, R = keys(1), torch.ones(3, 1, dtype=torch.float64)
    for _ in range(6):  # crosses the refresh at 8 keys
        K = keys(1)
        H = add_keys(H, K)
        a.add_keys(K, hist_cov=H)
        b.add_keys(K, hist_cov=H)
        assert torch.equal(a.delta(probe, R), b.delta(probe, R))


def test_float64_state_loads_into_a_float32_solver():
    C0, keys, _ = problem(64, seed=10)
    a = IncrementalSolver(C0, nullspace_basis(C0, 0.02), None, 3.0, 1.0)
    for _ in range(4):
        a.add_keys(keys(1))
    b = IncrementalSolver(C0, None, None, 3.0, 1.0, compute_dtype=torch.float32, inverse_form="auto")
    b.load_state_dict(a.state_dict())
    probe, R = keys(2), torch.randn(3, 2, dtype=torch.float64)
    assert rel(b.delta(probe, R), a.delta(probe, R)) <= 1e-5


def test_float32_state_into_a_float64_solver_is_recomputed_from_history():
    C0, keys, _ = problem(64, seed=11)
    U = nullspace_basis(C0, 0.02)
    a = IncrementalSolver(C0, U, None, 3.0, 1.0, compute_dtype=torch.float32, inverse_form="dense")
    H = torch.zeros_like(C0)
    for _ in range(4):
        H = _edit(a, H, keys(1))
    b = IncrementalSolver(C0, None, None, 3.0, 1.0)
    b.load_state_dict(a.state_dict(), hist_cov=H)
    torch.testing.assert_close(b.g_inv, IncrementalSolver(C0, U, H, 3.0, 1.0).g_inv, rtol=1e-10, atol=1e-12)
    c = IncrementalSolver(C0, None, None, 3.0, 1.0)
    with pytest.warns(UserWarning, match="pass hist_cov"):
        c.load_state_dict(a.state_dict())
    probe, R = keys(1), torch.ones(3, 1, dtype=torch.float64)
    assert rel(c.delta(probe, R), b.delta(probe, R)) <= 1e-5


def test_memit_float32_matches_memit_delta():
    C0, keys, g = problem(64, seed=12)
    s = IncrementalSolver(C0, None, None, 1000.0, 0.0, compute_dtype=torch.float32, refresh_every=5)
    H = torch.zeros_like(C0)
    for _ in range(12):
        K, R = keys(1), torch.randn(5, 1, generator=g, dtype=torch.float64)
        assert rel(s.delta(K, R), memit_delta(K, R, C0, H, 1000.0)) <= 1e-5
        H = _edit(s, H, K)


def test_bad_options_name_the_argument_and_the_fix():
    C0, keys, _ = problem(16, seed=13)
    with pytest.raises(ValueError, match=r"compute_dtype=torch.bfloat16: expected torch.float64 or torch.float32"):
        IncrementalSolver(C0, None, None, 1.0, compute_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"refresh_every=0: expected None or an int >= 1"):
        IncrementalSolver(C0, None, None, 1.0, refresh_every=0)
    with pytest.raises(ValueError, match=r"inverse_form='packed': expected one of"):
        IncrementalSolver(C0, None, None, 1.0, inverse_form="packed")
    s = IncrementalSolver(C0, None, None, 1.0, compute_dtype="float32")
    with pytest.raises(ValueError, match=r"hist_cov=None, but refresh_every=\d+ .* pass hist_cov=H"):
        s.add_keys(keys(1))
    with pytest.raises(ValueError, match=r"hist_cov has shape \(4, 4\); expected \(16, 16\)"):
        s.add_keys(keys(1), hist_cov=torch.zeros(4, 4, dtype=torch.float64))
    assert s.keys_since_refresh == 0  # nothing changed


def test_add_keys_checks_the_history_cheaply_and_the_keys_fully():
    H = torch.zeros(8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"hist_cov: expected a square floating \(d_k, d_k\) tensor, got Tensor \(8, 4\)"):
        add_keys(H[:, :4], torch.ones(8, 1))
    with pytest.raises(ValueError, match="keys: contains NaN"):
        add_keys(H, torch.full((8, 1), float("nan")))
    K = torch.arange(16, dtype=torch.float64).reshape(8, 2)
    assert torch.equal(add_keys(H, K), H + K @ K.T)
