"""EditorState: safetensors round trip, cheap snapshots, and refusal of broken files."""

from __future__ import annotations

import torch
import pytest

from betaedit_plugin.linalg import IncrementalSolver, add_keys, betaedit_delta, nullspace_basis
from betaedit_plugin.state import EditorState, LayerState, load_state_file, save_state_file

from support.editing import spd

D_K, D_V = 12, 6


def _solver(c0, basis=None, hist=None):
    return IncrementalSolver(c0, basis=basis, hist_cov=hist, lambda1=3.0, lambda2=0.5)


def _state(layers=(1, 2)) -> EditorState:
    out = {}
    for l in layers:
        c0 = spd(D_K, l)
        out[l] = LayerState(layer=l, prior_cov=c0, hist_cov=torch.zeros_like(c0),
                            w0=torch.randn(D_V, D_K, generator=torch.Generator().manual_seed(10 + l)),
                            solver=_solver(c0, basis=nullspace_basis(c0, 0.02)))
    return EditorState(method="BetaEdit", layers=out, context_templates=[["{}"], ["A. {}"]])


def _step(state: EditorState, seed: int, n: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    for s in state.layers.values():
        K = torch.randn(D_K, n, generator=g, dtype=torch.float64)
        s.hist_cov = add_keys(s.hist_cov, K)
        s.solver.add_keys(K)
        s.n_keys += n
    state.step += n


def _make_solver(layer, c0):
    return _solver(c0)


def test_roundtrip_through_safetensors_is_exact(tmp_path):
    st = _state()
    _step(st, 0)
    _step(st, 1)
    sd = st.state_dict()
    path = save_state_file(tmp_path / "s.safetensors", sd["tensors"], sd["meta"])
    tensors, meta = load_state_file(path)
    back = EditorState.from_state_dict({"tensors": tensors, "meta": meta}, [1, 2], _make_solver)
    assert back.step == 4 and back.method == "BetaEdit"
    assert back.context_templates == [["{}"], ["A. {}"]]
    K = torch.randn(D_K, 1, dtype=torch.float64)
    R = torch.randn(D_V, 1, dtype=torch.float64)
    for l in (1, 2):
        a, b = st.layers[l], back.layers[l]
        assert b.n_keys == 4
        for name in ("prior_cov", "hist_cov", "w0"):
            assert torch.equal(getattr(a, name), getattr(b, name))
        assert torch.equal(a.basis, b.basis)
        assert torch.equal(a.solver.delta(K, R), b.solver.delta(K, R))


def test_solver_in_state_matches_the_dense_formula():
    st = _state()
    _step(st, 3, n=3)
    s = st.layers[1]
    K = torch.randn(D_K, 2, dtype=torch.float64)
    R = torch.randn(D_V, 2, dtype=torch.float64)
    P = s.basis @ s.basis.T
    dense = betaedit_delta(K, R, P, s.prior_cov, hist_cov=s.hist_cov, lambda1=3.0, lambda2=0.5)
    torch.testing.assert_close(s.solver.delta(K, R), dense, rtol=1e-9, atol=1e-10)


def test_snapshot_restore_returns_to_the_same_state():
    st = _state()
    _step(st, 0)
    snap = st.snapshot()
    before = {l: (s.hist_cov.clone(), s.solver.g_inv.clone()) for l, s in st.layers.items()}
    _step(st, 1)
    assert st.step == 4
    st.restore(snap)
    assert st.step == 2
    for l, s in st.layers.items():
        assert torch.equal(s.hist_cov, before[l][0]) and torch.equal(s.solver.g_inv, before[l][1])
        assert s.n_keys == 2


def test_missing_layer_and_bad_format_raise(tmp_path):
    sd = _state(layers=(1,)).state_dict()
    with pytest.raises(ValueError, match="layer 2"):
        EditorState.from_state_dict(sd, [1, 2], _make_solver)
    bad = {"tensors": sd["tensors"], "meta": {**sd["meta"], "format": "other/1"}}
    with pytest.raises(ValueError, match="format"):
        EditorState.from_state_dict(bad, [1], _make_solver)


def test_non_finite_tensor_is_refused():
    sd = _state(layers=(1,)).state_dict()
    sd["tensors"]["layers.1.hist_cov"] = sd["tensors"]["layers.1.hist_cov"].clone().fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        EditorState.from_state_dict(sd, [1], _make_solver)


def test_corrupt_and_missing_files_raise(tmp_path):
    p = tmp_path / "broken.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_state_file(p)
    with pytest.raises(FileNotFoundError):
        load_state_file(tmp_path / "absent.safetensors")


# ---------------------------------------------------------------- placement and precision
def _solver32(c0, basis=None, hist=None):
    return IncrementalSolver(c0, basis=basis, hist_cov=hist, lambda1=3.0, lambda2=0.5, compute_dtype=torch.float32,
                             storage_device="cpu", refresh_every=3, inverse_form="auto")


def _state32(layers=(1, 2)) -> EditorState:
    out = {}
    for l in layers:
        c0 = spd(D_K, l)
        out[l] = LayerState(layer=l, prior_cov=c0, hist_cov=torch.zeros_like(c0), w0=torch.zeros(D_V, D_K),
                            solver=_solver32(c0, basis=nullspace_basis(c0, 0.02)))
    return EditorState(method="BetaEdit", layers=out)


def _step_with_history(state: EditorState, seed: int, n: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for s in state.layers.values():
        K = torch.randn(D_K, n, generator=g, dtype=torch.float64)
        s.hist_cov = add_keys(s.hist_cov, K)
        s.solver.add_keys(K, hist_cov=s.hist_cov)
        s.n_keys += n
    state.step += n


def test_float32_state_round_trip_continues_identically(tmp_path):
    st = _state32()
    for seed in range(2):
        _step_with_history(st, seed)
    sd = st.state_dict()
    path = save_state_file(tmp_path / "s.safetensors", sd["tensors"], sd["meta"])
    tensors, meta = load_state_file(path)
    back = EditorState.from_state_dict({"tensors": tensors, "meta": meta}, [1, 2], lambda l, c0: _solver32(c0))
    K = torch.randn(D_K, 1, dtype=torch.float64)
    R = torch.randn(D_V, 1, dtype=torch.float64)
    for seed in range(2, 6):  # crosses the float64 refresh every 3 keys
        _step_with_history(st, seed)
        _step_with_history(back, seed)
        for l in (1, 2):
            assert torch.equal(st.layers[l].solver.delta(K, R), back.layers[l].solver.delta(K, R))


def test_float64_file_loads_into_float32_solvers_and_back(tmp_path):
    st = _state()
    _step_with_history(st, 0, n=3)
    sd = st.state_dict()
    path = save_state_file(tmp_path / "s64.safetensors", sd["tensors"], sd["meta"])
    tensors, meta = load_state_file(path)
    as32 = EditorState.from_state_dict({"tensors": tensors, "meta": meta}, [1, 2], lambda l, c0: _solver32(c0))
    sd32 = as32.state_dict()
    path32 = save_state_file(tmp_path / "s32.safetensors", sd32["tensors"], sd32["meta"])
    tensors32, meta32 = load_state_file(path32)
    as64 = EditorState.from_state_dict({"tensors": tensors32, "meta": meta32}, [1, 2], _make_solver)
    K = torch.randn(D_K, 2, dtype=torch.float64)
    R = torch.randn(D_V, 2, dtype=torch.float64)
    for l in (1, 2):
        want = st.layers[l].solver.delta(K, R)
        got32 = as32.layers[l].solver.delta(K, R)
        assert ((got32 - want).norm() / want.norm()).item() <= 1e-5
        # float32 state into a float64 solver: recomputed in float64 from the saved H
        torch.testing.assert_close(as64.layers[l].solver.delta(K, R), want, rtol=1e-9, atol=1e-12)
        assert as64.layers[l].solver.g_inv.dtype == torch.float64


def test_snapshot_restore_with_float32_solvers():
    st = _state32()
    _step_with_history(st, 0)
    K = torch.randn(D_K, 1, dtype=torch.float64)
    R = torch.randn(D_V, 1, dtype=torch.float64)
    before = {l: s.solver.delta(K, R) for l, s in st.layers.items()}
    snap = st.snapshot()
    for seed in (1, 2, 3):  # crosses a refresh
        _step_with_history(st, seed)
    st.restore(snap)
    assert st.step == 1
    for l, s in st.layers.items():
        assert torch.equal(s.solver.delta(K, R), before[l]) and s.solver.keys_since_refresh == 1


def test_bytes_by_device_counts_each_tensor_once():
    st = _state32(layers=(1,))
    s = st.layers[1]
    got = s.bytes_by_device()
    c0_h_w0 = 2 * D_K * D_K * 8 + D_V * D_K * 4
    basis64 = s.basis.numel() * 8
    assert got == {"cpu": c0_h_w0 + basis64 + s.solver.device_bytes()}
