"""The fused recompute-in-backward op against plain autograd."""

from __future__ import annotations

import pytest
import torch
from wadi_lorad.lorad.autograd import AngleTerm, ConvArgs, naive_forward, rotated_forward

F64 = dict(dtype=torch.float64)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gradcheck_linear_two_adapters():
    g = _gen()
    x = torch.randn(2, 3, 8, **F64, generator=g, requires_grad=True)
    w = torch.randn(6, 8, **F64, generator=g, requires_grad=True)
    bias = torch.randn(6, **F64, generator=g, requires_grad=True)
    a = torch.randn(6, 3, **F64, generator=g, requires_grad=True)
    b = torch.randn(3, 4, **F64, generator=g, requires_grad=True)
    dense = torch.randn(6, 4, **F64, generator=g, requires_grad=True)

    def f(x, w, bias, a, b, dense):
        return rotated_forward(x, w, bias, [AngleTerm(0.7, a, b), AngleTerm(-1.3, dense)])

    assert torch.autograd.gradcheck(f, (x, w, bias, a, b, dense))


def test_gradcheck_conv2d():
    g = _gen(1)
    x = torch.randn(2, 3, 5, 6, **F64, generator=g, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, **F64, generator=g, requires_grad=True)
    bias = torch.randn(4, **F64, generator=g, requires_grad=True)
    a = torch.randn(4, 2, **F64, generator=g, requires_grad=True)
    b = torch.randn(2, 9, **F64, generator=g, requires_grad=True)
    conv = ConvArgs((1, 2), (1, 0), (1, 1), 1)

    def f(x, w, bias, a, b):
        return rotated_forward(x, w, bias, [AngleTerm(1.0, a, b)], conv)

    assert torch.autograd.gradcheck(f, (x, w, bias, a, b))


@pytest.mark.parametrize("conv", [None, ConvArgs((1, 1), (1, 1), (1, 1), 1)])
def test_fused_equals_naive_forward_and_grads(conv):
    g = _gen(2)
    if conv is None:
        x = torch.randn(4, 10, 32, generator=g)
        w = torch.randn(48, 32, generator=g)
    else:
        x = torch.randn(2, 8, 6, 6, generator=g)
        w = torch.randn(12, 8, 3, 3, generator=g)
    pairs = w[0].numel() // 2
    bias = torch.randn(w.shape[0], generator=g)
    grads = []
    outs = []
    for fn in (rotated_forward, naive_forward):
        a = (torch.randn(w.shape[0], 4, generator=_gen(3)) * 0.3).requires_grad_()
        b = torch.randn(4, pairs, generator=_gen(4)).requires_grad_()
        xx = x.clone().requires_grad_()
        y = fn(xx, w, bias, [AngleTerm(1.0, a, b)], conv)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append((xx.grad, a.grad, b.grad))
    assert torch.equal(outs[0], outs[1])  # same rotation code, same op: bit-identical forward
    for got, ref in zip(grads[0], grads[1]):
        # fp32 sums in a different order: compare relative to the gradient's scale.
        assert (got - ref).abs().max() <= 2e-5 * ref.abs().max()


def _saved_bytes(fn, x, w, a, b):
    """Bytes of tensors autograd keeps for backward that are NOT the inputs/parameters themselves."""
    inputs = {t.data_ptr() for t in (x, w, a, b)}
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in inputs:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x, w, None, [AngleTerm(1.0, a, b)])
    return total, y


def test_fused_keeps_no_weight_sized_intermediates():
    g = _gen(5)
    x = torch.randn(8, 256, generator=g, requires_grad=True)
    w = torch.randn(512, 256, generator=g)
    a = torch.randn(512, 16, generator=g, requires_grad=True)
    b = torch.randn(16, 128, generator=g, requires_grad=True)
    fused, _ = _saved_bytes(rotated_forward, x, w, a, b)
    naive, _ = _saved_bytes(naive_forward, x, w, a, b)
    weight_bytes = w.numel() * 4
    assert fused == 0  # only x, W, A, B are saved: all alive anyway
    assert naive >= 2 * weight_bytes  # cos, sin (half size each), pair views and W' kept by plain autograd


def test_autocast_bf16_cpu():
    g = _gen(6)
    x = torch.randn(4, 64, generator=g)
    w = torch.randn(32, 64, generator=g)
    a = (torch.randn(32, 4, generator=g) * 0.2).requires_grad_()
    b = torch.randn(4, 32, generator=g).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rotated_forward(x, w, None, [AngleTerm(1.0, a, b)])
    assert y.dtype == torch.bfloat16
    ref = naive_forward(x, w, None, [AngleTerm(1.0, a, b)])
    assert (y.float() - ref).abs().max() < 0.05 * ref.abs().max()
    y.float().sum().backward()
    assert a.grad.dtype == torch.float32 and b.grad is not None  # angles stay fp32


def test_zero_init_is_base_and_gets_gradient():
    g = _gen(7)
    x = torch.randn(5, 16, generator=g)
    w = torch.randn(8, 16, generator=g)
    a = torch.zeros(8, 4, requires_grad=True)
    b = torch.randn(4, 8, generator=g, requires_grad=True)
    y = rotated_forward(x, w, None, [AngleTerm(1.0, a, b)])
    assert torch.allclose(y, x @ w.t(), atol=1e-6)
    y.sum().backward()
    assert a.grad.abs().sum() > 0  # A learns first (B's gradient is A^T dtheta = 0 at init)
    assert torch.count_nonzero(b.grad) == 0


@pytest.mark.parametrize("naive", [False, True])
def test_meta_device_forward_backward_shapes(naive):
    # Shape and FLOP checks of full-size models run on the meta device, which has no autocast.
    fn = naive_forward if naive else rotated_forward
    x = torch.empty(2, 5, 8, device="meta", requires_grad=True)
    w = torch.empty(6, 8, device="meta")
    a = torch.empty(6, 3, device="meta", requires_grad=True)
    b = torch.empty(3, 4, device="meta", requires_grad=True)
    y = fn(x, w, None, [AngleTerm(1.0, a, b)])
    assert y.shape == (2, 5, 6) and y.device.type == "meta"
    y.sum().backward()
    assert a.grad.shape == a.shape and b.grad.shape == b.shape and x.grad.shape == x.shape


def test_string_padding_is_refused_by_the_op_and_converted_by_the_layer():
    from torch import nn
    from wadi_lorad.lorad.layer import LoRaDLayer

    # The fused backward cannot take "same" (torch.nn.grad.conv2d_input needs numbers): a clear error.
    with pytest.raises(ValueError, match="padding='same'.*numeric"):
        ConvArgs((1, 1), "same", (1, 1), 1)
    # A Conv2d with padding="same" (odd kernel, stride 1) becomes the equal numeric padding, and the
    # adapted layer's output and gradients match the plain conv with the same rotation (naive path).
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding="same", dilation=2)
    outs, grads = [], []
    for naive in (False, True):
        layer = LoRaDLayer(conv, "c")
        ad = layer.add_adapter("s", rank=2, generator=_gen(5))
        with torch.no_grad():  # a non-zero rotation (B may start at zero)
            ad.A.copy_(torch.randn(ad.A.shape, generator=_gen(7)))
            ad.B.copy_(torch.randn(ad.B.shape, generator=_gen(8)))
        layer.active = ("s",)
        layer.naive = naive
        x = torch.randn(2, 4, 7, 7, generator=_gen(6), requires_grad=True)
        y = layer(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append(x.grad)
    assert layer.conv.padding == (2, 2) and outs[0].shape == (2, 6, 7, 7)
    assert torch.equal(outs[0], outs[1])
    assert (grads[0] - grads[1]).abs().max() <= 2e-5 * grads[1].abs().max()
    assert not torch.allclose(outs[0], conv(x.detach()), atol=1e-3)  # the rotation did something
    # "same" that pads unequally (even kernel) is refused naming the layer, before anything is changed.
    with pytest.raises(ValueError, match="even_k: padding='same'.*unequally"):
        LoRaDLayer(nn.Conv2d(4, 6, 2, padding="same"), "even_k")
