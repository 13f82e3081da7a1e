"""One LoRaD layer as docs/lorad-format.md defines it: the only place that turns stored tensors into angles.

A layer is either factored (``A (out, r)``, ``B (r, pairs)``) or dense (``theta (out, pairs)``).
Its angles at strength ``s`` are ``s * wrap(A @ B)`` or ``s * wrap(theta)``: dense angles are
wrapped *before* scaling, exactly like factored ones (spec section 3.5), so a file means the
same rotation whoever reads it.  Every path uses this module: the file reader and
``lorad inspect``, ``merge_state`` (``lorad merge``), the trainer's modules (through
:func:`wrapped_angles`, which keeps gradients), export/``wadi sample`` (load into those
modules), and the ComfyUI weight adapter and resolver.

The rotation arithmetic itself is :mod:`.functional` (float32 complex multiply); this
module decides *what* is rotated by how much, and checks that a layer fits a weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from . import functional

__all__ = ["LayerSpecError", "LayerSpec", "wrapped_angles", "PART_NAMES"]

PART_NAMES = ("A", "B", "theta")
# Weights and factors the arithmetic accepts: files store F32/F16/BF16 (the reader checks
# that); float64 is allowed in memory for gradcheck and extraction.
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class LayerSpecError(functional.LoRaDShapeError):
    """A layer's tensors are malformed or do not fit a weight; the message names the key."""


def wrapped_angles(a: Tensor, b: Tensor | None = None) -> Tensor:
    """The canonical unscaled angles: ``wrap(A @ B)`` (factored) or ``wrap(theta)`` (dense, ``b=None``).

    Float32 (float64 stays float64), differentiable: the trainer's fused op calls this
    with its parameters.  Strength is applied by the caller *after* this wrap.
    """
    return functional.angles(a, b) if b is not None else functional.wrap_angles(functional.up(a))


def _scaled(theta: Tensor, strength: float) -> Tensor:
    # ``x * 1.0 == x`` bit for bit; skipping the multiply saves a pass over the angles.
    return theta if strength == 1 else theta * strength


class LayerSpec:
    """The tensors of one layer, checked: ``LayerSpec.from_parts({"A": a, "B": b}, key)``."""

    __slots__ = ("key", "a", "b", "theta")

    def __init__(self, key: str, *, a: Tensor | None = None, b: Tensor | None = None,
                 theta: Tensor | None = None) -> None:
        self.key = key
        self.a, self.b, self.theta = a, b, theta
        self._check()

    @classmethod
    def from_parts(cls, parts: Mapping[str, Tensor], key: str = "layer") -> LayerSpec:
        """From ``{"A", "B"}`` or ``{"theta"}`` (the reader's and adapter_state's layer dicts)."""
        names = set(parts)
        if names == {"theta"}:
            return cls(key, theta=parts["theta"])
        if names == {"A", "B"}:
            return cls(key, a=parts["A"], b=parts["B"])
        if names in ({"A"}, {"B"}):
            (have,) = names
            why = f"lorad_{have} without lorad_{'B' if have == 'A' else 'A'}"
        else:
            why = "got " + ", ".join(f"lorad_{n}" for n in sorted(names)) if names else "got no tensors"
        raise LayerSpecError(f"{key}: a LoRaD layer has exactly lorad_A + lorad_B, or lorad_theta; {why}")

    # -- structure ------------------------------------------------------------------
    def _check(self) -> None:
        k = self.key
        tensors = {"theta": self.theta} if self.theta is not None else {"A": self.a, "B": self.b}
        if self.theta is not None and (self.a is not None or self.b is not None):
            raise LayerSpecError(f"{k}: both factors and a dense theta given; a layer has one form")
        for name, t in tensors.items():
            if t is None:
                raise LayerSpecError(f"{k}: lorad_{name} is missing (factored layers need both A and B)")
            if t.dtype not in _FLOAT_DTYPES:
                raise LayerSpecError(f"{k}.lorad_{name}: dtype {t.dtype} is not a float dtype (F32, F16 or BF16)")
            if t.dim() != 2:
                raise LayerSpecError(f"{k}.lorad_{name}: shape {tuple(t.shape)} is not 2-D")
        if self.theta is None:
            if self.a.shape[1] != self.b.shape[0]:
                raise LayerSpecError(f"{k}: lorad_A {tuple(self.a.shape)} and lorad_B {tuple(self.b.shape)} "
                                     "disagree on the rank (A (out, r) @ B (r, pairs))")
            if self.a.shape[1] < 1:
                raise LayerSpecError(f"{k}: rank {self.a.shape[1]}; a factored layer needs rank >= 1")

    @property
    def dense(self) -> bool:
        return self.theta is not None

    @property
    def rank(self) -> int | None:
        """The factor rank, None for a dense layer."""
        return None if self.dense else int(self.a.shape[1])

    @property
    def out(self) -> int:
        return int((self.theta if self.dense else self.a).shape[0])

    @property
    def pairs(self) -> int:
        return int((self.theta if self.dense else self.b).shape[1])

    def parts(self) -> dict[str, Tensor]:
        return {"theta": self.theta} if self.dense else {"A": self.a, "B": self.b}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LayerSpec:
        """A copy with the tensors moved/cast (the same object where nothing changes)."""
        moved = {n: t.to(device=device, dtype=dtype) for n, t in self.parts().items()}
        if all(moved[n] is t for n, t in self.parts().items()):
            return self
        return LayerSpec.from_parts(moved, self.key)

    # -- fit --------------------------------------------------------------------------
    def check_fit(self, weight_shape: Sequence[int], dtype: torch.dtype | None = None, what: str = "") -> None:
        """Raise :class:`LayerSpecError` naming the key unless this layer can rotate such a weight."""
        shape = tuple(int(d) for d in weight_shape)
        k = self.key + (f" ({what})" if what else "")
        if len(shape) < 2:
            raise LayerSpecError(f"{k}: target weight shape {shape} is not a Linear/Conv weight (needs >= 2 dims)")
        width = functional.pair_width(shape)
        if width % 2:
            raise LayerSpecError(f"{k}: target row width {width} (weight {shape}) is odd; LoRaD pairs (2k, 2k+1)")
        want = (shape[0], width // 2)
        if (self.out, self.pairs) != want:
            got = (f"theta {tuple(self.theta.shape)}" if self.dense
                   else f"A {tuple(self.a.shape)}, B {tuple(self.b.shape)}")
            exp = f"theta {want}" if self.dense else f"A ({want[0]}, r), B (r, {want[1]})"
            raise LayerSpecError(f"{k}: {got} do not fit weight {shape}; expected {exp}")
        if dtype is not None and dtype not in _FLOAT_DTYPES:
            raise LayerSpecError(f"{k}: target weight dtype {dtype} is not a float dtype")

    # -- angles and rotation ------------------------------------------------------------
    def angles(self, strength: float = 1.0, device: torch.device | str | None = None) -> Tensor:
        """``strength * wrap(theta_raw)``, float32, shape ``(out, pairs)`` (on ``device`` if given)."""
        spec = self if device is None else self.to(device)
        return _scaled(wrapped_angles(spec.a, spec.b) if not spec.dense else wrapped_angles(spec.theta), strength)

    def rotated(self, weight: Tensor, strength: float = 1.0) -> Tensor:
        """A new tensor: ``weight`` rotated by ``strength * wrap(theta_raw)``, in ``weight``'s dtype.

        ``strength == 0`` returns a bit-exact copy.  Math in float32 (spec section 3.4).
        """
        self.check_fit(weight.shape, weight.dtype)
        if strength == 0:
            return weight.clone()
        return functional.rotate(weight, self.angles(strength, weight.device), 1.0, name=self.key)

    def rotate_(self, weight: Tensor, strength: float = 1.0) -> Tensor:
        """In-place :meth:`rotated` (same bits); returns ``weight``."""
        self.check_fit(weight.shape, weight.dtype)
        if strength != 0:
            functional.rotate_(weight, self.angles(strength, weight.device), 1.0, name=self.key, scratch=True)
        return weight
