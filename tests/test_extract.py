"""Extraction of LoRaD angles from a merged model: exact angles, factors, residuals, others."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from wadi_lorad.lorad import extract, functional, inject


class TinyUNet(nn.Module):
    """Block names like diffusers' UNet so the paper-student preset matches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(4, 8, 3, padding=1)
        self.time_embedding = nn.Linear(8, 32)
        self.down_blocks = nn.ModuleList([nn.ModuleDict({
            "to_q": nn.Linear(32, 48), "to_out": nn.Linear(48, 32), "norm": nn.LayerNorm(32),
        })])
        self.up_blocks = nn.ModuleList([nn.ModuleDict({"ff": nn.Linear(32, 96), "conv": nn.Conv2d(8, 8, 3)})])


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # A LoRaDLayer keeps the base's ``weight``/``bias`` keys; its adapter tensors live under ``.lorad.``.
    return {k: v.detach().clone() for k, v in model.state_dict().items() if ".lorad." not in k}


def _rotated_pair(rank: int = 4, scale: float = 0.5, seed: int = 0):
    """(base state, merged state, {module: theta}) with known rank-``rank`` angles, via inject + merge."""
    torch.manual_seed(seed)
    model = TinyUNet()
    base = _plain_state(model)
    inject.inject(model, "s", "paper-student", rank=rank)
    g = torch.Generator().manual_seed(seed + 1)
    thetas = {}
    with torch.no_grad():
        for name, layer in inject.lorad_layers(model):
            ad = layer.lorad["s"]
            ad.A.copy_(torch.randn(ad.A.shape, generator=g) * scale)
            thetas[name] = functional.angles(ad.A, ad.B)
    inject.set_active(model, "s")
    inject.merge(model, keep_original=False)
    return base, _plain_state(model), thetas


def test_pair_angles_exact_against_independent_formula():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 10, generator=g, dtype=torch.float64)
    theta = (torch.rand(6, 5, generator=g, dtype=torch.float64) * 2 - 1) * 3.0
    # independent construction: complex multiplication of (a + ib) by e^{i theta}
    z = torch.complex(w[:, 0::2], w[:, 1::2]) * torch.exp(1j * theta)
    merged = torch.empty_like(w)
    merged[:, 0::2], merged[:, 1::2] = z.real, z.imag
    got, zero = extract.pair_angles(w, merged)
    assert not zero.any()
    assert torch.allclose(got, theta, atol=1e-12)
    # a per-pair norm change does not move the angle
    got2, _ = extract.pair_angles(w, merged * 1.7)
    assert torch.allclose(got2, theta, atol=1e-12)


def test_extract_recovers_angles_factors_and_weights():
    base, merged, thetas = _rotated_pair(rank=4)
    res = extract.extract_state(base, merged, rank=4)
    assert set(res.layers) == set(thetas) == {"down_blocks.0.to_q", "down_blocks.0.to_out", "up_blocks.0.ff"}
    for rep in res.reports:
        theta = thetas[rep.name].double()
        dense, _ = extract.pair_angles(base[rep.name + ".weight"], merged[rep.name + ".weight"])
        assert (extract.angular_error(dense, theta)).max() < 1e-5
        assert rep.stored == "factors" and rep.rank == 4
        t = res.layers[rep.name]
        approx = functional.angles(t["A"], t["B"]).double()
        assert extract.angular_error(approx, theta).max() < 1e-5
        w = functional.rotate(base[rep.name + ".weight"], approx.float())
        assert torch.allclose(w, merged[rep.name + ".weight"], atol=1e-5)
        assert rep.rotation_residual < 1e-6 and rep.weight_err < 1e-5 and rep.row_norm_change_max < 1e-6
        assert rep.energy_kept > 1 - 1e-9
    # convs, the norm, biases and the untargeted Linear are untouched by the merge
    assert res.others == []
    assert res.summary()["dense_fallback"] == 0


def test_lower_rank_truncates_and_dense_fallback():
    base, merged, thetas = _rotated_pair(rank=6, scale=0.3)
    res = extract.extract_state(base, merged, rank=2, tol=1e-12)
    # rank 2 cannot reproduce rank-6 angles: every layer falls back to dense (tol is tiny)
    assert all(r.stored == "dense" for r in res.reports)
    assert all("theta" in t for t in res.layers.values())
    res2 = extract.extract_state(base, merged, rank=2, tol=10.0)
    for rep in res2.reports:
        assert rep.stored == "factors" and rep.rank == 2
        theta = thetas[rep.name].double()
        s = torch.linalg.svdvals(theta)
        # Eckart-Young: the rank-2 SVD error of theta is the tail energy
        assert rep.theta_err_rel == pytest.approx(float(s[2:].norm() / s.norm()), rel=1e-4)
        assert rep.energy_kept == pytest.approx(float((s[:2] ** 2).sum() / (s**2).sum()), rel=1e-6)
        assert rep.factor_weight_err > 1e-4
    # factors bigger than theta itself -> dense regardless of the error
    res3 = extract.extract_state(base, merged, rank=64)
    assert all(r.stored == "dense" for r in res3.reports)
    for name, t in res3.layers.items():
        assert extract.angular_error(t["theta"].double(), thetas[name].double()).max() < 1e-5


def test_norm_change_is_reported_as_residual():
    base, merged, _ = _rotated_pair()
    key = "down_blocks.0.to_q.weight"
    merged[key] = merged[key].clone()
    merged[key][3] *= 1.1  # one row 10% longer: angles unchanged, residual appears
    res = extract.extract_state(base, merged, rank=4)
    rep = next(r for r in res.reports if r.name == "down_blocks.0.to_q")
    assert rep.row_norm_change_max == pytest.approx(0.1, rel=1e-5)
    assert rep.pair_norm_change_max == pytest.approx(0.1, rel=1e-5)
    rows = merged[key].double().norm(dim=1)
    expected = 0.1 / 1.1 * float(rows[3]) / float(merged[key].double().norm())
    assert rep.rotation_residual == pytest.approx(expected, rel=1e-4)
    assert rep.stored == "factors"  # angles are still exactly rank 4
    others = [r for r in res.reports if r.name != "down_blocks.0.to_q"]
    assert all(r.rotation_residual < 1e-6 for r in others)


def test_changed_conv_bias_norm_and_untargeted_reported():
    base, merged, _ = _rotated_pair()
    merged["conv_in.weight"] = merged["conv_in.weight"] + 0.01
    merged["down_blocks.0.to_q.bias"] = merged["down_blocks.0.to_q.bias"] * 2
    merged["down_blocks.0.norm.weight"] = merged["down_blocks.0.norm.weight"] + 1
    merged["time_embedding.weight"] = merged["time_embedding.weight"].flip(1)
    res = extract.extract_state(base, merged, rank=4, include=[r"blocks"])
    kinds = {o.name: (o.kind, o.note) for o in res.others}
    assert kinds["conv_in.weight"][0] == "conv"
    assert kinds["down_blocks.0.to_q.bias"][0] == "bias"
    assert kinds["down_blocks.0.norm.weight"][0] == "norm"
    assert kinds["time_embedding.weight"] == ("linear", "not targeted")
    conv = next(o for o in res.others if o.name == "conv_in.weight")
    assert conv.max_abs_diff == pytest.approx(0.01, rel=1e-4)
    assert "conv_in" not in res.layers and len(res.layers) == 3
    res_x = extract.extract_state(base, merged, rank=4, include=[r"blocks"], exclude=[r"to_out$"])
    assert sorted(res_x.layers) == ["down_blocks.0.to_q", "up_blocks.0.ff"]
    # with include_conv the changed conv is a candidate (a +0.01 shift is no rotation: large residual)
    res2 = extract.extract_state(base, merged, rank=4, include_conv=True, include=[r"conv_in"])
    rep = next(r for r in res2.reports if r.name == "conv_in")
    assert rep.rotation_residual > 1e-3


def test_missing_extra_and_shape_mismatch_keys():
    base, merged, _ = _rotated_pair()
    merged.pop("conv_in.bias")
    merged["extra.weight"] = torch.zeros(2, 2)
    merged["up_blocks.0.conv.weight"] = torch.zeros(8, 8, 1, 1)
    kinds = {o.name: o.kind for o in extract.extract_state(base, merged, rank=4).others}
    assert kinds == {"conv_in.bias": "missing-in-merged", "extra.weight": "extra-in-merged",
                     "up_blocks.0.conv.weight": "shape-mismatch"}


def test_zero_base_pairs_count_and_get_angle_zero():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 12, generator=g)
    w[2, 4:6] = 0.0  # one pair exactly zero
    w[5, 0:2] = 0.0
    theta = torch.full((8, 6), 0.3)
    merged = functional.rotate(w, theta)
    tensors, rep = extract.extract_layer("x", w, merged, rank=None)
    assert rep.zero_pairs == 2 and rep.stored == "dense"
    t = tensors["theta"]
    assert t[2, 2] == 0 and t[5, 0] == 0
    mask = torch.ones_like(t, dtype=torch.bool)
    mask[2, 2] = mask[5, 0] = False
    assert torch.allclose(t[mask], theta[mask], atol=1e-6)


def test_angles_near_pi_round_trip():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(40, 64, generator=g, dtype=torch.float64)
    # exactly +-pi and just inside: the dense angles come back modulo 2pi
    theta = torch.full((40, 32), math.pi - 1e-7, dtype=torch.float64)
    theta[::2] = -math.pi + 1e-7
    theta[1, 1] = math.pi
    dense, _ = extract.pair_angles(w, functional.rotate(w, theta))
    assert extract.angular_error(dense, theta).max() < 1e-9
    assert dense.min() >= -math.pi and dense.max() < math.pi
    # rank-3 angles up to ~1.4 pi: a few entries cross the cut, so the stored (wrapped)
    # theta is not low rank; the lift-and-refit finds the unwrapped rank-3 factors
    a = torch.randn(40, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, 32, generator=g, dtype=torch.float64)
    raw = a @ b
    raw = raw / raw.abs().max() * 1.4 * math.pi
    assert (raw.abs() > math.pi).any()
    merged = functional.rotate(w, functional.wrap_angles(raw))
    tensors, rep = extract.extract_layer("x", w, merged, rank=3, tol=1e-6)
    assert rep.stored == "factors" and rep.unwrapped
    approx = functional.angles(tensors["A"].double(), tensors["B"].double())
    assert extract.angular_error(approx, raw).max() < 1e-5
    assert torch.allclose(functional.rotate(w, approx), merged, atol=1e-5)
    # without the lift the same layer needs dense storage
    _, rep2 = extract.extract_layer("x", w, merged, rank=3, tol=1e-6, unwrap=False)
    assert rep2.stored == "dense"


def test_unchanged_layers_left_out_and_pure_rescale_skipped():
    torch.manual_seed(0)
    model = TinyUNet()
    base = _plain_state(model)
    merged = dict(base)
    merged["up_blocks.0.ff.weight"] = base["up_blocks.0.ff.weight"] * 1.5
    res = extract.extract_state(base, merged, rank=4)
    assert res.layers == {}
    (rep,) = res.reports
    assert rep.stored == "skipped" and rep.row_norm_change_mean == pytest.approx(0.5, rel=1e-6)
    assert res.unchanged == len(base) - 1
    # in fp16 the rescale's rounding noise shows up as ~1e-3 "angles": still no rotation
    half = {k: v.half() for k, v in base.items()}
    res16 = extract.extract_state(half, {**half, "up_blocks.0.ff.weight": half["up_blocks.0.ff.weight"] * 1.5}, rank=4)
    assert res16.layers == {} and res16.reports[0].max_abs_angle > 1e-5


def test_fp16_merged_model():
    base, merged, thetas = _rotated_pair(rank=4)
    merged16 = {k: v.half() for k, v in merged.items()}
    base16 = {k: v.half() for k, v in base.items()}
    res = extract.extract_state(base16, merged16, rank=4, tol=5e-3)
    assert res.summary()["dense_fallback"] == 0
    for rep in res.reports:
        approx = functional.angles(res.layers[rep.name]["A"], res.layers[rep.name]["B"]).double()
        # fp16 rounding of the merged weight limits the recovered angle to ~1e-3
        assert extract.angular_error(approx, thetas[rep.name].double()).max() < 2e-2
        assert rep.weight_err < 2e-3
