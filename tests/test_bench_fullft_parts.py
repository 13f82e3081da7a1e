"""bench/tinyworld_fullft_parts.py: the hybrids it scores are what their names say.

Checked against properties computed independently of the functions under test: pair norms and
pair directions (plain torch on (out, pairs, 2) views), row norms, and the angles a LoRaD layer's
factors give against the angles read back from the weight they rotate.
"""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(scope="module")
def parts(bench_import):
    return bench_import("tinyworld_fullft_parts")


def _pairs(w: torch.Tensor) -> torch.Tensor:
    return w.double().reshape(w.shape[0], -1, 2)


@pytest.mark.parametrize("shape", [(6, 8), (4, 2, 3, 3)])
def test_lorad_projection_keeps_base_pair_norms_and_takes_tuned_directions(parts, shape):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=g)
    tuned = torch.randn(shape, generator=g)
    proj = parts.lorad_projection(base, tuned)
    assert proj.shape == base.shape and proj.dtype == base.dtype
    p, b, t = _pairs(proj), _pairs(base), _pairs(tuned)
    torch.testing.assert_close(p.norm(dim=-1), b.norm(dim=-1), rtol=1e-5, atol=1e-6)
    cos = (p * t).sum(-1) / (p.norm(dim=-1) * t.norm(dim=-1))
    torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-5)


def test_lorad_projection_of_a_pure_rotation_is_that_rotation(parts):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(5, 12, generator=g)
    # rotate each pair by hand (angle phi[i, k], counter-clockwise in the (2k, 2k+1) plane), whatever
    # the library's sign convention: the projection must land on the same weight
    phi = (torch.rand(5, 6, generator=g) - 0.5) * 2 * math.pi * 0.9
    b = _pairs(base)
    c, s = phi.double().cos(), phi.double().sin()
    rotated = torch.stack([c * b[..., 0] - s * b[..., 1], s * b[..., 0] + c * b[..., 1]], -1).reshape(5, 12).float()
    torch.testing.assert_close(parts.lorad_projection(base, rotated), rotated, rtol=1e-5, atol=1e-5)


def test_with_row_norms_keeps_tuned_direction_at_base_norm(parts):
    g = torch.Generator().manual_seed(2)
    base, tuned = torch.randn(3, 4, 3, 3, generator=g), torch.randn(3, 4, 3, 3, generator=g) * 5
    out = parts.with_row_norms(base, tuned)
    rows = out.reshape(3, -1)
    torch.testing.assert_close(rows.norm(dim=1), base.reshape(3, -1).norm(dim=1))
    torch.testing.assert_close(rows / rows.norm(dim=1, keepdim=True),
                               tuned.reshape(3, -1) / tuned.reshape(3, -1).norm(dim=1, keepdim=True))


def _toy_unet_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"time_embedding.linear_1.weight": (8, 4), "time_embedding.linear_1.bias": (8,),
              "conv_in.weight": (4, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (4, 4, 3, 3),
              "down_blocks.0.attentions.0.proj_in.weight": (4, 4, 1, 1),
              "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": (4, 4),
              "up_blocks.0.resnets.0.conv_shortcut.weight": (4, 8, 1, 1), "conv_out.weight": (4, 4, 3, 3),
              "conv_norm_out.weight": (4,)}
    return {k: torch.randn(v, generator=g) for k, v in shapes.items()}


def test_hybrid_puts_back_only_what_it_keeps(parts):
    teacher, tuned = _toy_unet_state(0), _toy_unet_state(1)
    kinds = parts.layer_kinds(teacher)
    assert kinds["linear"] == {"time_embedding.linear_1.weight",
                               "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"}
    assert kinds["projections 1x1"] == {"down_blocks.0.attentions.0.proj_in.weight"}
    assert kinds["shortcuts 1x1"] == {"up_blocks.0.resnets.0.conv_shortcut.weight"}
    assert kinds["resnet 3x3"] == {"down_blocks.0.resnets.0.conv1.weight"}
    h = parts.hybrid(teacher, tuned, lambda k: k in kinds["conv"])
    for k in teacher:
        assert h[k] is (tuned[k] if k in kinds["conv"] else teacher[k]), k
    doubled = parts.hybrid(teacher, tuned, lambda k: True, lambda k: (lambda t, u: 2 * u) if k == "conv_in.weight" else None)
    torch.testing.assert_close(doubled["conv_in.weight"], 2 * tuned["conv_in.weight"])
    assert doubled["conv_out.weight"] is tuned["conv_out.weight"]
    built = dict(parts.variants(teacher, tuned))
    assert {"full FT (all changes)", "teacher (no changes)", "direction only (teacher's row norms)"} <= set(built)
    assert all(set(state) == set(teacher) for state in built.values())


def test_angle_rms_agrees_between_factors_and_the_weights_they_rotate(parts):
    from wadi_lorad.lorad import functional

    teacher = _toy_unet_state(0)
    g = torch.Generator().manual_seed(3)
    lorad, tuned = {}, dict(teacher)
    for name in ("down_blocks.0.resnets.0.conv1.weight",
                 "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"):
        w = teacher[name]
        module, pairs = name[: -len(".weight")], w[0].numel() // 2
        a, b = torch.randn(w.shape[0], 2, generator=g) * 0.5, torch.randn(2, pairs, generator=g) * 0.5
        lorad[f"{module}.A"], lorad[f"{module}.B"] = a, b
        tuned[name] = functional.rotate(w.double(), functional.angles(a.double(), b.double())).float()
    from_factors = parts.angle_rms(teacher, lorad=lorad)
    from_weights = parts.angle_rms(teacher, tuned=tuned)
    assert set(from_factors) == {"linear", "conv"}
    for kind in from_factors:
        assert from_factors[kind] > 0.05
        assert from_weights[kind] == pytest.approx(from_factors[kind], abs=2e-4)
