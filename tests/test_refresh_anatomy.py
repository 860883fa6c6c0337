"""results/refresh_anatomy.py: what a BetaEdit refresh changed, read from a saved editor state,
against float64 numpy references on a tiny model's real edits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from support.editing import LAYERS, REQS, make_editor
from support.runs import results_script


def _null(cov: np.ndarray, thr: float) -> np.ndarray:
    w, v = np.linalg.eigh(cov)
    return v[:, w < thr]


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    small, large = (a, b) if a.shape[1] <= b.shape[1] else (b, a)
    cos = np.linalg.svd(small.T @ large, compute_uv=False).min()
    return math.degrees(math.acos(min(1.0, cos)))


def _share(u: np.ndarray, h: np.ndarray) -> float:
    return float(np.trace(u.T @ h @ u) / np.trace(h))


def test_refresh_anatomy_of_a_saved_state_matches_float64_references(tiny, tmp_path):
    ra = results_script("refresh_anatomy")
    ed = make_editor(tiny, "BetaEdit", tau=3)
    for r in REQS[:4]:  # a refresh at step 3, one edit after it
        ed.apply([r])
    (tmp_path / "ck").mkdir()
    ed.save_state(tmp_path / "ck" / "editor_state.safetensors")

    meta, rows = ra.anatomy(tmp_path / "ck")
    assert (meta["method"], meta["step"], str(meta["last_refresh"])) == ("BetaEdit", 4, "3")
    assert [r["layer"] for r in rows] == sorted(LAYERS)
    hp = ed.hparams
    for row in rows:
        s = ed.state.layers[row["layer"]]
        c0, h, in_use = (x.double().numpy() for x in (s.prior_cov, s.hist_cov, s.basis))
        u0 = _null(c0, hp.nullspace_threshold)
        us = _null((h / 4 + hp.lambda1 * c0) / (hp.lambda1 + 1), hp.nullspace_threshold)
        assert (row["null(C0)"], row["null(S)"], row["P in use"]) == (u0.shape[1], us.shape[1], in_use.shape[1])
        assert row["angle"] == pytest.approx(_angle(u0, in_use), abs=1e-6)
        assert row["pre-trained keys in null(C0)"] == pytest.approx(_share(u0, c0), rel=1e-9)
        assert row["pre-trained keys in P"] == pytest.approx(_share(in_use, c0), rel=1e-9)
        assert row["edited keys in null(C0)"] == pytest.approx(_share(u0, h), rel=1e-9)
        assert row["edited keys in P"] == pytest.approx(_share(in_use, h), rel=1e-9)
        assert row["tr(H/t) / tr(C0)"] == pytest.approx(np.trace(h) / 4 / np.trace(c0), rel=1e-9)
        # C0's eigenvalues here are 1e-3 or far above the threshold, so adding the edited keys only
        # shrinks the null space (one direction per edit before the refresh at 3): no rotation, and
        # most of the edited keys' energy is out of the projector in use
        assert row["P in use"] == row["null(C0)"] - 3 and row["angle"] < 1e-3
        assert row["edited keys in P"] < 0.5 * row["edited keys in null(C0)"]
    text = ra.markdown(meta, rows)
    assert text.startswith("BetaEdit at step 4 (last refresh 3)") and text.count("\n| ") == len(rows) + 1


def test_a_folder_without_an_editor_state_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        results_script("refresh_anatomy").main([str(tmp_path)])
    assert f"checkpoint={str(tmp_path)!r} holds no editor_state.safetensors" in capsys.readouterr().err
