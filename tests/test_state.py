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


# ---------------------------------------------------------------- integrity of saved state files
def _rewrite_meta(path, **fields):
    """Rewrite metadata fields of a safetensors file in place, leaving its digests as they were."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    for name, value in fields.items():
        if value is None:
            meta.pop(name)
        else:
            meta[name] = json.dumps(value)
    save_file(tensors, str(path), metadata=meta)


def _flip(path, tensor, byte, bit=0):
    import json
    import struct

    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    start, _ = json.loads(raw[8:8 + n])[tensor]["data_offsets"]
    raw[8 + n + start + byte] ^= 1 << bit
    path.write_bytes(bytes(raw))


def _editor_snapshot(editor):
    sd = editor.state_dict()
    return {k: v.clone() for k, v in sd["tensors"].items()}, sd["meta"]


@pytest.mark.parametrize("damage, needle", [
    ("weight_bit", r"tensor 'layers.2.w' does not match the sha256 stored with it"),
    ("history_bit", r"tensor 'layers.1.hist_cov' does not match"),
    ("step", r"metadata field 'step' does not match"),
    ("fingerprint", r"metadata field 'fingerprint' does not match"),
    ("dropped_field", r"metadata field 'last_refresh' is missing"),
])
def test_a_damaged_state_file_is_refused_and_nothing_changes(tiny, tmp_path, damage, needle):
    from betaedit_plugin.state import IntegrityError

    from support.editing import REQS, assert_bit_equal, make_editor, params

    saved = make_editor(tiny)
    saved.apply(REQS[:2])
    path = saved.save_state(tmp_path / "state.safetensors")
    if damage == "weight_bit":
        _flip(path, "layers.2.w", 7, bit=3)
    elif damage == "history_bit":
        _flip(path, "layers.1.hist_cov", 0, bit=0)  # lowest mantissa bit: finite, symmetric enough to pass checks
    elif damage == "step":
        _rewrite_meta(path, step=3)
    elif damage == "fingerprint":
        fp = saved.fingerprint()
        _rewrite_meta(path, fingerprint={**fp, "hparams": {**fp["hparams"], "lambda1": 6.0}})
    else:
        _rewrite_meta(path, last_refresh=None)

    target = make_editor(tiny)
    target.apply(REQS[2:3])
    weights, (tensors, meta) = params(target.model), _editor_snapshot(target)
    with pytest.raises(IntegrityError, match=needle) as info:
        target.load_state(path)
    assert str(path) in str(info.value) and "nothing was loaded" in str(info.value)
    assert_bit_equal(params(target.model), weights)
    after_tensors, after_meta = _editor_snapshot(target)
    assert_bit_equal(after_tensors, tensors)
    assert after_meta == meta
    assert target.state.step == 1


def test_a_state_file_without_digests_needs_allow_unverified(tiny, tmp_path):
    """Files saved before digests existed: refused by default with the way out, loadable on request."""
    from betaedit_plugin.state import UnsealedFileError

    from support.editing import REQS, assert_bit_equal, make_editor, params

    saved = make_editor(tiny)
    saved.apply(REQS[:2])
    path = saved.save_state(tmp_path / "old.safetensors")
    _rewrite_meta(path, integrity=None)  # what the previous version wrote
    target = make_editor(tiny)
    before = params(target.model)
    with pytest.raises(UnsealedFileError, match=r"no content digests .* allow_unverified=True"):
        target.load_state(path)
    assert_bit_equal(params(target.model), before)
    target.load_state(path, allow_unverified=True)
    assert target.state.step == 2
    assert_bit_equal(params(target.model), params(saved.model))
    target.save_state(tmp_path / "resaved.safetensors")  # saving again adds the digests
    make_editor(tiny).load_state(tmp_path / "resaved.safetensors")
