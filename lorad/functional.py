"""LoRaD math: pure functions on tensors (torch only, no modules, no I/O).

Convention (the paper's, as its official code implements it).  A weight ``W`` is
stored PyTorch-style, ``(out, in)`` for Linear and ``(out, in, kh, kw)`` for
Conv2d.  Flatten every output row to length ``n = in * kh * kw``; within row
``i`` the entries ``2k`` and ``2k+1`` form a pair ``(a, b)`` that is rotated by
``theta[i, k]``::

    a' = cos(theta) * a - sin(theta) * b
    b' = sin(theta) * a + cos(theta) * b

So ``theta`` has shape ``(out, n // 2)``.  A 2x2 rotation is orthogonal, hence
every output row keeps its L2 norm exactly and only its direction changes.

Low-rank angles: ``theta = wrap(A @ B)`` with ``A: (out, r)`` (zero init) and
``B: (r, n // 2)`` (Xavier init); ``wrap`` maps into ``[-pi, pi)``.  A strength
``s`` scales the angle, and rotations on the same pairs commute, so several
adapters on one layer compose by adding their (scaled) angles.

All rotation arithmetic runs in float32; the result is cast back to the input
weight's dtype (fp16/bf16 bases are rotated in fp32, as ComfyUI patches do).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "LoRaDShapeError",
    "up",
    "pair_width",
    "check_pairable",
    "wrap_angles",
    "angles",
    "combine_angles",
    "rotate_pairs",
    "rotate",
    "rotate_",
    "delta",
    "angle_grad",
    "row_norms",
    "init_factors",
    "factor_params",
    "dense_params",
    "prefer_dense",
]


class LoRaDShapeError(ValueError):
    """A weight or angle tensor does not fit the LoRaD pairing."""


def pair_width(weight_shape: Sequence[int]) -> int:
    """Number of input elements per output row (``in * kh * kw``)."""
    if len(weight_shape) < 2:
        raise LoRaDShapeError(f"LoRaD needs a weight with >= 2 dims, got shape {tuple(weight_shape)}")
    return int(math.prod(weight_shape[1:]))


def check_pairable(weight_shape: Sequence[int], name: str = "weight") -> int:
    """Return the number of pairs per row; raise naming ``name`` if the width is odd."""
    n = pair_width(weight_shape)
    if n % 2:
        raise LoRaDShapeError(
            f"{name}: LoRaD pairs input columns (2k, 2k+1) but the row width "
            f"{n} (shape {tuple(weight_shape)}) is odd"
        )
    return n // 2


def up(t: Tensor) -> Tensor:
    """Promote to the arithmetic dtype: float32, or float64 if already float64 (for gradcheck)."""
    return t if t.dtype == torch.float64 else t.float()


def wrap_angles(theta: Tensor) -> Tensor:
    """Map angles into ``[-pi, pi)``: ``((theta + pi) mod 2pi) - pi``.

    cos/sin are 2pi-periodic, so this changes nothing functionally; it keeps the
    stored and compared angles canonical (as the official code does).
    """
    y = theta + math.pi
    if y.device.type == "cpu" and y.numel():
        # torch.remainder on CPU is a scalar fmod (~20x slower than cos).  For y in
        # [0, 2pi) fmod returns y exactly, so when every angle is in range (the usual
        # case: |A @ B| < pi) ``y - pi`` is bit-identical and skips it.  One aminmax
        # pass decides; anything at or past the edges takes the remainder path.
        lo, hi = torch.aminmax(y.detach())
        if float(lo) >= 0.0 and float(hi) < 2 * math.pi:
            return y - math.pi
    return torch.remainder(y, 2 * math.pi) - math.pi


def angles(a: Tensor, b: Tensor, wrap: bool = True) -> Tensor:
    """``theta = wrap(A @ B)`` in float32, shape ``(out, pairs)``."""
    theta = up(a) @ up(b)
    if not wrap:
        return theta
    if theta.requires_grad or theta.device.type != "cpu" or not theta.numel():
        return wrap_angles(theta)
    # Without autograd the product is our own scratch: the in-range wrap runs in place (the same
    # ``+ pi`` and ``- pi`` roundings, two weight-sized temporaries fewer per layer when ComfyUI patches).
    theta += math.pi
    lo, hi = torch.aminmax(theta)
    if float(lo) >= 0.0 and float(hi) < 2 * math.pi:
        return theta.sub_(math.pi)
    return torch.remainder(theta, 2 * math.pi) - math.pi


def combine_angles(parts: Sequence[tuple[float, Tensor]]) -> Tensor | None:
    """Sum ``strength * theta`` over adapters on one layer (rotations on the same pairs add)."""
    total: Tensor | None = None
    for strength, theta in parts:
        if strength == 0:
            continue
        term = up(theta) if strength == 1 else up(theta) * strength
        total = term if total is None else total + term
    return total


def _pairs(w: Tensor) -> Tensor:
    """View ``w`` as ``(out, pairs, 2)`` (``w`` must be contiguous float32/float64)."""
    return w.reshape(w.shape[0], -1, 2)


def rotate_pairs(w32: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate a float32 weight by precomputed ``cos``/``sin`` of shape ``(out, pairs)``."""
    # A pair (a, b) is the complex number a + ib; rotating it by theta is multiplying by
    # cos + i sin: (a cos - b sin) + i (a sin + b cos).  One vectorised complex multiply
    # over contiguous memory replaces six strided elementwise ops and a stack (about 2x
    # faster on CPU) with the same arithmetic, so the result is bit-identical.
    wc = torch.view_as_complex(_pairs(w32))
    return torch.view_as_real(wc * torch.complex(cos, sin)).reshape(w32.shape)


def _check_theta(weight: Tensor, theta: Tensor, name: str) -> None:
    pairs = check_pairable(weight.shape, name)
    if tuple(theta.shape) != (weight.shape[0], pairs):
        raise LoRaDShapeError(
            f"{name}: angles have shape {tuple(theta.shape)}, expected "
            f"({weight.shape[0]}, {pairs}) for weight shape {tuple(weight.shape)}"
        )


def rotate(weight: Tensor, theta: Tensor, strength: float = 1.0, name: str = "weight") -> Tensor:
    """Return ``weight`` rotated by ``strength * theta`` (same dtype and shape).

    ``strength == 0`` returns a bit-exact copy of ``weight``.
    """
    _check_theta(weight, theta, name)
    if strength == 0:
        return weight.clone()
    return _rotated32(weight, theta, strength).to(weight.dtype)


def _rotated32(weight: Tensor, theta: Tensor, strength: float) -> Tensor:
    t = up(theta) if strength == 1 else up(theta) * strength
    w32 = up(weight).contiguous()
    return rotate_pairs(w32, torch.cos(t), torch.sin(t))


def rotate_(weight: Tensor, theta: Tensor, strength: float = 1.0, name: str = "weight", scratch: bool = False
             ) -> Tensor:
    """In-place :func:`rotate` (same bits); returns ``weight``.

    ``copy_`` casts the float32 result straight into ``weight``: the same rounding as
    ``.to(dtype)`` without the intermediate half-precision tensor (one pass less).
    ``scratch=True``: ``theta`` was made for this call (float32, no grad) and may be overwritten.
    """
    _check_theta(weight, theta, name)
    if strength != 0:
        with torch.no_grad():
            if weight.dtype == torch.float32 and weight.is_contiguous():
                # A float32 weight (ComfyUI patches a float32 copy) is multiplied in place as complex
                # pairs: the same kernel and bits as ``_rotated32``, without the weight-sized product
                # tensor and the pass that copies it back (about 20% of the rotation on a CPU).
                own = scratch and theta.dtype == torch.float32 and not theta.requires_grad
                t = up(theta) if strength == 1 else up(theta) * strength
                cos = torch.cos(t)
                sin = t.sin_() if own or t is not theta else torch.sin(t)  # a scratch tensor takes its sine in place
                torch.view_as_complex(_pairs(weight)).mul_(torch.complex(cos, sin))
            else:
                weight.copy_(_rotated32(weight, theta, strength))
    return weight


def delta(weight: Tensor, theta: Tensor, strength: float = 1.0, name: str = "weight") -> Tensor:
    """``rotate(W, s*theta) - W`` in float32 (a full-rank update in general)."""
    _check_theta(weight, theta, name)
    if strength == 0:
        return torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    t = up(theta) * strength
    w32 = up(weight).contiguous()
    return rotate_pairs(w32, torch.cos(t), torch.sin(t)) - w32


def angle_grad(w_rot32: Tensor, grad_w: Tensor) -> Tensor:
    """Gradient of a loss w.r.t. ``theta`` given the rotated weight and its gradient.

    With ``a' = c a - s b`` and ``b' = s a + c b``: ``da'/dtheta = -b'`` and
    ``db'/dtheta = a'``, so ``dL/dtheta = g_b * a' - g_a * b'``.
    """
    p = _pairs(w_rot32)
    g = _pairs(up(grad_w).contiguous())
    return g[..., 1] * p[..., 0] - g[..., 0] * p[..., 1]


def row_norms(weight: Tensor) -> Tensor:
    """L2 norm of every flattened output row, in float32 (what LoRaD preserves)."""
    return up(weight).reshape(weight.shape[0], -1).norm(dim=1)


def init_factors(
    out_features: int,
    pairs: int,
    rank: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Paper init: ``A`` zeros ``(out, r)``; ``B`` Xavier-uniform ``(r, pairs)`` (float32).

    ``A = 0`` makes ``theta = 0`` at step 0, so the adapted model starts as the base.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    a = torch.zeros(out_features, rank, dtype=torch.float32, device=device)
    bound = math.sqrt(6.0 / (rank + pairs))  # xavier_uniform_ with gain 1 on an (r, pairs) matrix
    # Draw on the generator's device, then move: a seeded CPU generator gives the same
    # init whether the model lives on CPU or CUDA (and CUDA tensors reject a CPU generator).
    gen_dev = generator.device if generator is not None else device
    b = torch.empty(rank, pairs, dtype=torch.float32, device=gen_dev)
    b.uniform_(-bound, bound, generator=generator)
    return a, b.to(device) if device is not None else b


def factor_params(out_features: int, pairs: int, rank: int) -> int:
    """Trainable values of the factored form: ``r * (out + in/2)``."""
    return rank * (out_features + pairs)


def dense_params(out_features: int, pairs: int) -> int:
    """Trainable values of a dense angle tensor: ``out * in/2``."""
    return out_features * pairs


def prefer_dense(out_features: int, pairs: int, rank: int) -> bool:
    """True where the factors would hold more values than theta itself."""
    return factor_params(out_features, pairs, rank) >= dense_params(out_features, pairs)
