"""Weight-space analysis (Fig. 1): statistics against independent formulas, swaps, outputs."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from wadi_lorad.lorad import analysis, functional


def _np_stats(ws: np.ndarray, wt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent per-row formulas in numpy (loops, no shared helpers)."""
    ws = ws.reshape(ws.shape[0], -1)
    wt = wt.reshape(wt.shape[0], -1)
    norm, direc = [], []
    for s, t in zip(ws, wt):
        ns, nt = math.sqrt(float(s @ s)), math.sqrt(float(t @ t))
        norm.append(abs(ns - nt) / nt)
        direc.append(1 - float(s @ t) / (ns * nt))
    return np.array(norm), np.array(direc)


def _pair(seed: int = 0, shape=(24, 40)):
    g = torch.Generator().manual_seed(seed)
    wt = torch.randn(*shape, generator=g, dtype=torch.float64)
    ws = wt + 0.1 * torch.randn(*shape, generator=g, dtype=torch.float64)
    return ws, wt


def test_row_changes_match_numpy():
    ws, wt = _pair()
    nc, dc, valid = analysis.row_changes(ws, wt)
    n2, d2 = _np_stats(ws.numpy(), wt.numpy())
    assert valid.all()
    np.testing.assert_allclose(nc.numpy(), n2, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dc.numpy(), d2, rtol=1e-9, atol=1e-14)


def test_layer_stats_mean_std_and_conv_rows():
    g = torch.Generator().manual_seed(1)
    wt = torch.randn(16, 4, 3, 3, generator=g)
    ws = wt * (1 + 0.05 * torch.randn(16, 1, 1, 1, generator=g)) + 0.02 * torch.randn(16, 4, 3, 3, generator=g)
    res = analysis.analyze({"c.weight": ws, "c.bias": torch.zeros(16)}, {"c.weight": wt, "c.bias": torch.ones(16)})
    (s,) = res.layers  # the bias is not a weight matrix
    n2, d2 = _np_stats(ws.double().numpy(), wt.double().numpy())
    assert s.norm_mean == pytest.approx(n2.mean(), rel=1e-6)
    assert s.norm_std == pytest.approx(n2.std(), rel=1e-6)
    assert s.dir_mean == pytest.approx(d2.mean(), rel=1e-5)
    assert s.dir_std == pytest.approx(d2.std(), rel=1e-5)
    assert s.full_rank == 16 and s.k == 4  # floor(0.3 * 16)


def test_exact_rotation_norm_zero_direction_one_minus_cos():
    g = torch.Generator().manual_seed(2)
    wt = torch.randn(32, 64, generator=g, dtype=torch.float64)
    row_angle = torch.rand(32, 1, generator=g, dtype=torch.float64) * 0.5
    theta = row_angle.expand(32, 32)  # one angle per row: cos(w_s, w_t) = cos(theta_i)
    ws = functional.rotate(wt, theta)
    res = analysis.analyze({"w": ws}, {"w": wt})
    (s,) = res.layers
    assert s.norm_mean < 1e-12 and s.norm_std < 1e-12
    expected = 1 - torch.cos(row_angle.squeeze(1))
    assert s.dir_mean == pytest.approx(float(expected.mean()), rel=1e-9)
    assert s.dir_std == pytest.approx(float(expected.std(unbiased=False)), rel=1e-7)
    # per-pair angles: direction change is 1 - sum |p|^2 cos(theta) / |w|^2
    theta2 = torch.rand(32, 32, generator=g, dtype=torch.float64)
    _, dc, _ = analysis.row_changes(functional.rotate(wt, theta2), wt)
    pn2 = wt[:, 0::2] ** 2 + wt[:, 1::2] ** 2
    assert torch.allclose(dc, 1 - (pn2 * torch.cos(theta2)).sum(1) / pn2.sum(1), atol=1e-12)


def test_scaled_only_weight_has_no_direction_change():
    g = torch.Generator().manual_seed(3)
    wt = torch.randn(20, 30, generator=g, dtype=torch.float64)
    scale = 1 + torch.rand(20, 1, generator=g, dtype=torch.float64)
    res = analysis.analyze({"w": wt * scale}, {"w": wt})
    (s,) = res.layers
    assert s.dir_mean < 1e-12
    assert s.norm_mean == pytest.approx(float((scale - 1).mean()), rel=1e-9)
    # the direction residual is rounding noise only
    assert s.residual_rms < 1e-14
    assert analysis.energy_curve(torch.zeros(4, 5)).tolist() == [1.0] * 4  # exactly zero: defined as fully kept


def test_svd_energy_against_numpy_and_low_rank_residual():
    ws, wt = _pair(shape=(40, 50))
    res = analysis.analyze({"w": ws}, {"w": wt})
    (s,) = res.layers
    d = ws.numpy() / np.linalg.norm(ws.numpy(), axis=1, keepdims=True) - wt.numpy() / np.linalg.norm(
        wt.numpy(), axis=1, keepdims=True
    )
    sv = np.linalg.svd(d, compute_uv=False)
    assert s.k == 12
    assert s.energy_at_k == pytest.approx(float((sv[:12] ** 2).sum() / (sv**2).sum()), rel=1e-9)
    curve = res.curves["w"].numpy()
    np.testing.assert_allclose(curve, np.cumsum(sv**2) / (sv**2).sum(), rtol=1e-9)
    # a rank-2 direction change keeps all energy at 30% rank
    g = torch.Generator().manual_seed(4)
    low = torch.randn(40, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 50, generator=g, dtype=torch.float64)
    res2 = analysis.analyze({"w": wt + 0.05 * low}, {"w": wt})
    # row normalisation adds a per-row rescale of W_t, so D = diag(a) W_t + diag(b) low: not exactly rank 2,
    # but the energy is dominated by few directions
    assert res2.layers[0].energy_at_k > 0.99


def test_rank_at_matches_paper_axis():
    assert [analysis.rank_at(n, 0.3) for n in (320, 640, 768, 1280)] == [96, 192, 230, 384]


def test_swaps():
    ws, wt = _pair(shape=(10, 12))
    ns = analysis.norm_swapped({"w": ws, "b": torch.ones(3)}, {"w": wt, "b": torch.zeros(3)})
    ds = analysis.direction_swapped({"w": ws, "b": torch.ones(3)}, {"w": wt, "b": torch.zeros(3)})
    # norm-swapped: student direction, teacher norms
    assert torch.allclose(ns["w"].norm(dim=1), wt.norm(dim=1), atol=1e-12)
    nc, dc, _ = analysis.row_changes(ns["w"], ws)
    assert dc.abs().max() < 1e-12
    # direction-swapped: teacher direction, student norms
    assert torch.allclose(ds["w"].norm(dim=1), ws.norm(dim=1), atol=1e-12)
    _, dc2, _ = analysis.row_changes(ds["w"], wt)
    assert dc2.abs().max() < 1e-12
    # non-matrix tensors come from the student
    assert torch.equal(ns["b"], torch.ones(3)) and torch.equal(ds["b"], torch.ones(3))
    # both swaps with identical inputs are the identity
    assert torch.allclose(analysis.norm_swapped({"w": ws}, {"w": ws})["w"], ws, atol=1e-12)


def test_zero_rows_and_skipped_keys():
    ws, wt = _pair(shape=(6, 8))
    wt[2] = 0
    res = analysis.analyze({"w": ws, "x": torch.ones(2, 2), "y": torch.ones(3, 3)}, {"w": wt, "y": torch.ones(2, 3)})
    (s,) = res.layers
    assert s.zero_rows == 1 and s.rows == 6
    n2, _ = _np_stats(np.delete(ws.numpy(), 2, 0), np.delete(wt.numpy(), 2, 0))
    assert s.norm_mean == pytest.approx(n2.mean(), rel=1e-9)
    why = dict(res.skipped)
    assert why["x"] == "missing in teacher" and why["y"].startswith("shape")


def test_include_filter_csv_and_plots(tmp_path):
    ws, wt = _pair(shape=(12, 16))
    st = {"down.attn.weight": ws, "down.conv.weight": ws.reshape(12, 4, 2, 2)}
    te = {"down.attn.weight": wt, "down.conv.weight": wt.reshape(12, 4, 2, 2)}
    res = analysis.analyze(st, te, include=[r"attn"])
    assert [s.name for s in res.layers] == ["down.attn.weight"]
    res = analysis.analyze(st, te)
    p = analysis.write_csv(res, tmp_path / "out" / "layers.csv")
    rows = list(csv.DictReader(open(p)))
    assert [r["name"] for r in rows] == ["down.attn.weight", "down.conv.weight"]
    assert float(rows[0]["dir_mean_pct"]) == pytest.approx(100 * res.layers[0].dir_mean, rel=1e-9)
    for fn in (analysis.plot_norm_direction, analysis.plot_svd_energy):
        png = fn(res, tmp_path / f"{fn.__name__}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert not list(tmp_path.glob("**/*.tmp"))
    summ = res.summary()
    assert summ["layers"] == 2 and summ["dir_mean"] == pytest.approx(
        (res.layers[0].dir_mean + res.layers[1].dir_mean) / 2
    )
