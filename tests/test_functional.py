"""LoRaD math against independent formulas (the official code's slicing form and a scalar loop)."""

from __future__ import annotations

import math

import pytest
import torch
from wadi_lorad.lorad import functional


def official_rotate(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The released training code's formula, written independently: W[:,0::2], W[:,1::2], wrapped theta."""
    theta = a @ b
    theta = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    odd, even = w[:, 0::2], w[:, 1::2]
    out = torch.empty_like(w)
    out[:, 0::2] = torch.cos(theta) * odd - torch.sin(theta) * even
    out[:, 1::2] = torch.sin(theta) * odd + torch.cos(theta) * even
    return out


def loop_rotate(w: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Scalar reference: one 2x2 rotation per (row, pair)."""
    out = w.clone()
    for i in range(w.shape[0]):
        for k in range(w.shape[1] // 2):
            x, y = float(w[i, 2 * k]), float(w[i, 2 * k + 1])
            c, s = math.cos(float(theta[i, k])), math.sin(float(theta[i, k]))
            out[i, 2 * k] = c * x - s * y
            out[i, 2 * k + 1] = s * x + c * y
    return out


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def test_equals_official_formula(gen):
    w = torch.randn(96, 160, generator=gen)
    a = torch.randn(96, 8, generator=gen)
    b = torch.randn(8, 80, generator=gen)  # large angles: wrapping matters
    ours = functional.rotate(w, functional.angles(a, b))
    ref = official_rotate(w, a, b)
    assert (ours - ref).abs().max() <= 1e-6 * max(1.0, float(w.abs().max()))


def test_matches_scalar_loop_on_non_square(gen):
    # 5 x 12: a transposed or half-split pairing would produce different numbers (or fail the shape check).
    w = torch.randn(5, 12, dtype=torch.float64, generator=gen)
    theta = torch.rand(5, 6, dtype=torch.float64, generator=gen) * 6 - 3
    assert torch.allclose(functional.rotate(w, theta), loop_rotate(w, theta), atol=1e-12)


def test_rotation_sign_and_pairing():
    # theta = +pi/2 maps the pair (1, 0) to (0, 1) and (0, 1) to (-1, 0): counter-clockwise.
    w = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    theta = torch.full((1, 2), math.pi / 2)
    out = functional.rotate(w, theta)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, -1.0, 0.0]]), atol=1e-7)
    # Only the paired neighbour mixes in: columns (0,1) never see columns (2,3).
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    theta = torch.tensor([[math.pi / 2, 0.0]])
    assert torch.allclose(functional.rotate(w, theta), torch.tensor([[-2.0, 1.0, 3.0, 4.0]]), atol=1e-6)


def test_row_norms_preserved(gen):
    w = torch.randn(64, 128, generator=gen)
    theta = torch.randn(64, 64, generator=gen) * 3
    assert torch.allclose(functional.row_norms(functional.rotate(w, theta)), functional.row_norms(w), rtol=1e-6)
    # ... but directions change.
    cos = torch.nn.functional.cosine_similarity(functional.rotate(w, theta), w, dim=1)
    assert float(cos.mean()) < 0.9


def test_identity_and_zero_strength_bit_exact(gen):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        w = torch.randn(16, 32, generator=gen).to(dtype)
        theta = torch.randn(16, 16, generator=gen)
        assert torch.equal(functional.rotate(w, theta, strength=0.0), w)
        assert torch.equal(functional.rotate(w, torch.zeros(16, 16)), w)


def test_inverse(gen):
    w = torch.randn(32, 48, generator=gen)
    theta = torch.randn(32, 24, generator=gen) * 2
    back = functional.rotate(functional.rotate(w, theta, 0.7), theta, -0.7)
    assert (back - w).abs().max() < 1e-5


def test_composition_adds_angles(gen):
    w = torch.randn(32, 48, generator=gen)
    t1 = torch.randn(32, 24, generator=gen)
    t2 = torch.randn(32, 24, generator=gen)
    seq = functional.rotate(functional.rotate(w, t1, 0.5), t2, 1.5)
    combined = functional.combine_angles([(0.5, t1), (1.5, t2)])
    assert torch.allclose(seq, functional.rotate(w, combined), atol=1e-5)


def test_strength_scales_angle(gen):
    w = torch.randn(8, 10, generator=gen)
    theta = torch.randn(8, 5, generator=gen)
    assert torch.allclose(functional.rotate(w, theta, 0.3), functional.rotate(w, 0.3 * theta), atol=1e-7)


def test_wrap_range_and_periodicity(gen):
    x = torch.randn(1000, generator=gen, dtype=torch.float64) * 50
    wrapped = functional.wrap_angles(x)
    assert float(wrapped.min()) >= -math.pi and float(wrapped.max()) < math.pi
    assert torch.allclose(torch.cos(wrapped), torch.cos(x), atol=1e-9)
    assert torch.allclose(torch.sin(wrapped), torch.sin(x), atol=1e-9)
    assert float(functional.wrap_angles(torch.tensor(math.pi, dtype=torch.float64))) == pytest.approx(-math.pi)


def test_conv_pairs_along_flattened_input(gen):
    w = torch.randn(6, 3, 3, 2, generator=gen)  # in*kh*kw = 18 -> 9 pairs
    theta = torch.randn(6, 9, generator=gen)
    out = functional.rotate(w, theta)
    assert out.shape == w.shape
    ref = loop_rotate(w.reshape(6, 18).double(), theta.double()).reshape(w.shape)
    assert torch.allclose(out.double(), ref, atol=1e-6)
    assert torch.allclose(functional.row_norms(out), functional.row_norms(w), rtol=1e-6)


def test_odd_width_names_layer():
    with pytest.raises(functional.LoRaDShapeError, match="down_blocks.0.proj.*odd"):
        functional.check_pairable((4, 7), "down_blocks.0.proj")
    with pytest.raises(functional.LoRaDShapeError, match="conv_in"):
        functional.check_pairable((4, 3, 3, 3), "conv_in")  # 27 is odd
    with pytest.raises(functional.LoRaDShapeError, match="expected"):
        functional.rotate(torch.zeros(4, 8), torch.zeros(8, 2), name="x")


def test_half_precision_rotated_in_fp32(gen):
    theta = torch.randn(16, 32, generator=gen)
    for dtype in (torch.float16, torch.bfloat16):
        w = torch.randn(16, 64, generator=gen).to(dtype)
        out = functional.rotate(w, theta)
        assert out.dtype == dtype
        assert torch.equal(out, functional.rotate(w.float(), theta).to(dtype))


def test_delta_and_angle_grad(gen):
    w = torch.randn(8, 12, dtype=torch.float64, generator=gen)
    theta = torch.randn(8, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    g = torch.randn(8, 12, dtype=torch.float64, generator=gen)
    rotated = functional.rotate(w, theta)
    (rotated * g).sum().backward()
    assert torch.allclose(functional.angle_grad(rotated.detach(), g), theta.grad, atol=1e-12)
    assert torch.allclose(functional.delta(w, theta.detach()), functional.rotate(w, theta.detach()) - w)


def test_init_factors_paper_init(gen):
    a, b = functional.init_factors(320, 640, 16, generator=gen)
    assert a.shape == (320, 16) and b.shape == (16, 640)
    assert torch.count_nonzero(a) == 0
    bound = math.sqrt(6 / (16 + 640))
    assert float(b.abs().max()) <= bound and float(b.abs().max()) > 0.9 * bound
    assert functional.factor_params(320, 640, 16) == 16 * (320 + 640)
    assert functional.prefer_dense(8, 4, 16) and not functional.prefer_dense(320, 640, 16)


def test_fast_paths_bit_identical_to_reference_formulas():
    # rotate_pairs (complex multiply) and wrap_angles (in-range shortcut) are speed-ups of
    # the plain formulas; they must give the very same bits, in and out of [-pi, pi).
    g = torch.Generator().manual_seed(3)
    w = torch.randn(48, 64, generator=g)
    for scale in (0.3, 10.0):  # all in range / many angles to wrap
        theta = torch.randn(48, 32, generator=g) * scale
        theta[0, :4] = torch.tensor([math.pi, -math.pi, math.pi - 1e-7, -math.pi + 1e-7])
        ref_wrap = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
        assert torch.equal(functional.wrap_angles(theta), ref_wrap)
        c, s = torch.cos(ref_wrap), torch.sin(ref_wrap)
        a, b = w[:, 0::2], w[:, 1::2]
        ref = torch.empty_like(w)
        ref[:, 0::2] = c * a - s * b
        ref[:, 1::2] = s * a + c * b
        assert torch.equal(functional.rotate_pairs(w, c, s), ref)
        assert torch.equal(functional.rotate(w, ref_wrap), ref)


def test_wrap_fast_path_keeps_nan_and_inf_like_remainder():
    theta = torch.tensor([0.1, float("nan"), -0.2, float("inf")])
    ref = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    torch.testing.assert_close(functional.wrap_angles(theta), ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rotate_inplace_same_bits_as_rotate(dtype):
    g = torch.Generator().manual_seed(5)
    w = (torch.randn(12, 20, generator=g) * 0.1).to(dtype)
    theta = torch.randn(12, 10, generator=g)
    for strength in (0.7, 1.0):
        expected = functional.rotate(w, theta, strength)
        out = w.clone()  # contiguous: float32 takes the in-place complex multiply
        assert functional.rotate_(out, theta, strength) is out
        assert torch.equal(out, expected)
        strided = w.t().contiguous().t()  # same values, not contiguous: the copy-back path
        functional.rotate_(strided, theta, strength)
        assert torch.equal(strided, expected)
        fused = torch.cat([w, w]).clone()  # ComfyUI narrows fused weights to the adapter's rows
        functional.rotate_(fused[12:], theta, strength)
        assert torch.equal(fused[12:], expected) and torch.equal(fused[:12], w)


@pytest.mark.parametrize("scale", [0.3, 10.0])  # in range (in-place wrap) / many angles to wrap (remainder)
def test_scratch_paths_same_bits(scale):
    """``angles`` wraps its own product in place and ``rotate_(scratch=True)`` takes the sine in place:
    the same bits as the out-of-place formulas, and the caller's tensors other than theta untouched."""
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(16, 4, generator=g) * scale, torch.randn(4, 12, generator=g)
    a.requires_grad_(True)
    with_grad = functional.angles(a, b)  # autograd: the out-of-place wrap
    with torch.no_grad():
        plain = functional.angles(a, b)
    assert torch.equal(plain, functional.wrap_angles(a.detach() @ b)) and torch.equal(plain, with_grad.detach())
    w = torch.randn(16, 24, generator=g)
    for strength in (1.0, 0.4):
        expected = functional.rotate(w, plain, strength)
        theta = plain.clone()
        out = functional.rotate_(w.clone(), theta, strength, scratch=True)
        assert torch.equal(out, expected)
        kept = plain.clone()
        functional.rotate_(w.clone(), kept, strength)  # not scratch: theta stays as it was
        assert torch.equal(kept, plain)
