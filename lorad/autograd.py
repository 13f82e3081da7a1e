"""Memory-lean LoRaD forward/backward.

A naive autograd graph of ``F.linear(x, rotate(W, A @ B))`` keeps ``theta``,
``cos``, ``sin`` and the rotated weight alive per layer until backward (about
2.5x the layer's weight in fp32).  :class:`RotatedOp` fuses rotation and the
linear/conv op: forward saves only the input, the base weight and the factors
(all of which are alive anyway) and backward recomputes the rotation.  That is
the LyCORIS/PEFT LoHa trick (recompute dense products in backward) applied to
LoRaD.

Each adapter on a layer is a term ``strength * wrap(A @ B)`` or
``strength * Theta`` (dense); the terms add (see :mod:`.functional`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import functional

__all__ = ["AngleTerm", "ConvArgs", "numeric_padding", "rotated_forward", "naive_forward", "effective_angles"]


@dataclass(frozen=True)
class AngleTerm:
    """One adapter's contribution: ``strength * wrap(a @ b)`` (factored) or ``strength * wrap(a)`` (dense).

    Dense angles are wrapped too, so strength scales the same canonical angle in
    both forms (``s * wrap(theta)`` differs from ``s * theta`` when ``s != 1`` and
    ``|theta| > pi``); this is the ``.lorad`` file semantics (docs/lorad-format.md).
    """

    strength: float
    a: Tensor
    b: Tensor | None = None

    def theta(self) -> Tensor:
        return functional.angles(self.a, self.b) if self.b is not None else functional.wrap_angles(functional.up(self.a))


@dataclass(frozen=True)
class ConvArgs:
    """Static arguments of a Conv2d call.

    ``padding`` is numeric: the fused backward calls ``torch.nn.grad.conv2d_input/_weight``,
    which accept no ``"same"``/``"valid"`` (see :func:`numeric_padding` for converting them).
    """

    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.padding, str):
            raise ValueError(f"ConvArgs: padding={self.padding!r} is not supported (the LoRaD backward needs "
                             "numeric padding, e.g. (1, 1)); convert it with numeric_padding()")


def numeric_padding(padding: tuple[int, int] | str, kernel_size: tuple[int, int], stride: tuple[int, int],
                    dilation: tuple[int, int], where: str = "Conv2d") -> tuple[int, int]:
    """A Conv2d's padding as numbers: ``"valid"`` is 0; ``"same"`` is exact only where it pads both
    sides equally (stride 1 and an even ``dilation * (kernel - 1)``), which every SD-family conv does."""
    if not isinstance(padding, str):
        return tuple(int(p) for p in padding)
    if padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
    if padding == "same" and all(s == 1 for s in stride) and all(t % 2 == 0 for t in total):
        return (total[0] // 2, total[1] // 2)
    raise ValueError(f"{where}: padding={padding!r} with kernel {tuple(kernel_size)}, stride {tuple(stride)}, "
                     f"dilation {tuple(dilation)} pads the sides unequally, which LoRaD's Conv2d does not support "
                     "(expected numeric padding or 'same' with an odd effective kernel)")


def effective_angles(terms: Sequence[AngleTerm]) -> Tensor | None:
    """Sum of ``strength * theta`` over the terms (None when all strengths are 0)."""
    return functional.combine_angles([(t.strength, t.theta()) for t in terms])


def _op(x: Tensor, w: Tensor, bias: Tensor | None, conv: ConvArgs | None) -> Tensor:
    if conv is None:
        return F.linear(x, w, bias)
    return F.conv2d(x, w, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """dtype the matmul runs in: the autocast dtype if active, else the input's."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off; a no-op on devices without autocast (``meta`` for shape/FLOP checks)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _rotated32(weight: Tensor, terms: Sequence[AngleTerm]) -> Tensor:
    theta = effective_angles(terms)
    w32 = functional.up(weight).contiguous()
    if theta is None:
        return w32
    return functional.rotate_pairs(w32, torch.cos(theta), torch.sin(theta))


class _RotatedOp(torch.autograd.Function):
    """y = op(x, R(sum_i s_i theta_i) W, bias) with recompute-in-backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv, spec, *tensors):  # type: ignore[override]
        terms = _terms(spec, tensors)
        dtype = x.dtype
        w_rot = _rotated32(weight, terms).to(dtype)
        b = bias.to(dtype) if bias is not None else None
        ctx.conv, ctx.spec = conv, spec
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, *tensors)
        return _op(x, w_rot, b, conv)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, *tensors = ctx.saved_tensors
        terms = _terms(ctx.spec, tensors)
        conv = ctx.conv
        w_rot32 = _rotated32(weight, terms)
        w_rot = w_rot32.to(x.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if conv is None:
                grad_x = grad_out @ w_rot
            else:
                grad_x = torch.nn.grad.conv2d_input(
                    x.shape, w_rot, grad_out, conv.stride, conv.padding, conv.dilation, conv.groups
                )
        if ctx.has_bias and ctx.needs_input_grad[2]:
            dims = [d for d in range(grad_out.dim()) if d != (1 if conv is not None else grad_out.dim() - 1)]
            grad_b = grad_out.sum(dim=dims)
        need_terms = any(ctx.needs_input_grad[5:])
        if need_terms or ctx.needs_input_grad[1]:
            # Gradient w.r.t. the rotated weight: one full weight-gradient GEMM.
            if conv is None:
                g2 = grad_out.reshape(-1, grad_out.shape[-1])
                x2 = x.reshape(-1, x.shape[-1])
                g_wrot = functional.up(g2.t() @ x2)
            else:
                g_wrot = torch.nn.grad.conv2d_weight(
                    x, w_rot.shape, grad_out, conv.stride, conv.padding, conv.dilation, conv.groups
                )
                g_wrot = functional.up(g_wrot)
            grads_t = _term_grads(terms, tensors, w_rot32, g_wrot, ctx.needs_input_grad[5:]) if need_terms else [
                None
            ] * len(tensors)
            if ctx.needs_input_grad[1]:
                # W' = R W  =>  dL/dW = R^T dL/dW' = rotation by -theta of the gradient.
                theta = effective_angles(terms)
                g = g_wrot if theta is None else functional.rotate_pairs(g_wrot, torch.cos(theta), -torch.sin(theta))
                grad_w = g.to(weight.dtype)
        else:
            grads_t = [None] * len(tensors)
        if grad_b is not None and ctx.has_bias:
            grad_b = grad_b.to(grad_out.dtype)
        return (grad_x, grad_w, grad_b, None, None, *grads_t)


def _terms(spec: tuple[tuple[float, bool], ...], tensors: Sequence[Tensor]) -> list[AngleTerm]:
    out, i = [], 0
    for strength, factored in spec:
        if factored:
            out.append(AngleTerm(strength, tensors[i], tensors[i + 1]))
            i += 2
        else:
            out.append(AngleTerm(strength, tensors[i]))
            i += 1
    return out


def _term_grads(terms, tensors, w_rot32, g_wrot, needs) -> list[Tensor | None]:
    d_theta = functional.angle_grad(w_rot32, g_wrot)  # (out, pairs), d loss / d total angle
    grads: list[Tensor | None] = []
    i = 0
    for t in terms:
        ds = d_theta * t.strength if t.strength != 1 else d_theta
        if t.b is not None:
            # theta = wrap(A @ B); wrap has derivative 1 almost everywhere.
            ga = (ds @ functional.up(t.b).t()).to(t.a.dtype) if needs[i] else None
            gb = (functional.up(t.a).t() @ ds).to(t.b.dtype) if needs[i + 1] else None
            grads += [ga, gb]
            i += 2
        else:
            grads.append(ds.to(t.a.dtype) if needs[i] else None)
            i += 1
    return grads


def _flatten(terms: Sequence[AngleTerm]) -> tuple[tuple[tuple[float, bool], ...], list[Tensor]]:
    spec, tensors = [], []
    for t in terms:
        spec.append((float(t.strength), t.b is not None))
        tensors.append(t.a)
        if t.b is not None:
            tensors.append(t.b)
    return tuple(spec), tensors


def rotated_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, terms: Sequence[AngleTerm], conv: ConvArgs | None = None
) -> Tensor:
    """Linear (``conv=None``) or Conv2d with the weight rotated by the adapter terms.

    Rotation runs in float32; the op runs in the autocast dtype when autocast is on,
    otherwise in ``x``'s dtype.  Only ``x``, ``weight`` and the factors are saved.
    """
    dtype = _compute_dtype(x, weight)
    spec, tensors = _flatten(terms)
    # Autocast is handled here explicitly (the Function casts), so run it outside autocast.
    with _no_autocast(x.device.type):
        return _RotatedOp.apply(x.to(dtype), weight, bias, conv, spec, *tensors)


def naive_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, terms: Sequence[AngleTerm], conv: ConvArgs | None = None
) -> Tensor:
    """Reference path: plain autograd through the rotation (keeps cos/sin/W' for backward)."""
    theta = effective_angles(terms)
    w = functional.up(weight)
    if theta is not None:
        w32 = w.contiguous()
        w = functional.rotate_pairs(w32, torch.cos(theta), torch.sin(theta))
    dtype = _compute_dtype(x, weight)
    with _no_autocast(x.device.type):
        b = bias.to(dtype) if bias is not None else None
        return _op(x.to(dtype), w.to(dtype), b, conv)
