"""LoRaD layers: several named adapters over one frozen Linear/Conv2d weight.

:class:`LoRaDLayer` replaces a ``nn.Linear``/``nn.Conv2d`` in place.  It keeps the
original module's ``weight`` and ``bias`` *parameters* (the same objects, so there
is still one copy of the base) and holds adapters in ``self.lorad[name]``.  Which
adapters take part in the forward is chosen by :meth:`LoRaDLayer.set_active`:
``()`` gives the base (a teacher view), ``("student",)`` the student, and
several names compose by adding angles.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional
from .autograd import AngleTerm, ConvArgs, naive_forward, numeric_padding, rotated_forward

__all__ = ["LoRaDAngles", "LoRaDLayer", "SUPPORTED_TYPES"]

SUPPORTED_TYPES = (nn.Linear, nn.Conv2d)


class LoRaDAngles(nn.Module):
    """Angles of one adapter on one layer: factors ``A (out, r)``, ``B (r, pairs)`` or dense ``theta``."""

    def __init__(
        self,
        out_features: int,
        pairs: int,
        rank: int | None,
        dense: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.strength = 1.0
        if dense:
            self.rank = None
            self.theta = nn.Parameter(torch.zeros(out_features, pairs, dtype=torch.float32, device=device))
            self.A = self.B = None
        else:
            if rank is None:
                raise ValueError("a factored LoRaD adapter needs a rank")
            self.rank = int(rank)
            a, b = functional.init_factors(out_features, pairs, self.rank, generator=generator, device=device)
            self.A, self.B = nn.Parameter(a), nn.Parameter(b)
            self.theta = None

    @property
    def dense(self) -> bool:
        return self.theta is not None

    def term(self, strength: float | None = None) -> AngleTerm:
        s = self.strength if strength is None else strength
        if self.dense:
            return AngleTerm(s, self.theta)
        return AngleTerm(s, self.A, self.B)

    def angles(self) -> Tensor:
        """Unscaled angles ``wrap(A @ B)`` (or the dense theta), float32."""
        return self.term(1.0).theta()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return "dense" if self.dense else f"rank={self.rank}"


class LoRaDLayer(nn.Module):
    """Drop-in replacement for a Linear/Conv2d with named LoRaD adapters."""

    def __init__(self, base: nn.Module, name: str = "") -> None:
        super().__init__()
        if not isinstance(base, SUPPORTED_TYPES):
            raise TypeError(f"{name or 'module'}: LoRaD supports {SUPPORTED_TYPES}, got {type(base).__name__}")
        self.layer_name = name
        self.base_type = type(base)
        self.pairs = functional.check_pairable(base.weight.shape, name or type(base).__name__)
        # Share the frozen parameters (no copy) so state-dict keys ``weight``/``bias`` stay put.
        self.weight = base.weight
        self.bias = base.bias
        if isinstance(base, nn.Conv2d):
            if base.padding_mode != "zeros":
                raise ValueError(f"{name}: LoRaD Conv2d supports padding_mode='zeros' only")
            padding = numeric_padding(base.padding, base.kernel_size, base.stride, base.dilation, name or "Conv2d")
            self.conv: ConvArgs | None = ConvArgs(base.stride, padding, base.dilation, base.groups)
            for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
                setattr(self, attr, getattr(base, attr))
        else:
            self.conv = None
            self.in_features, self.out_features = base.in_features, base.out_features
        self.lorad = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        self.merged: list[tuple[str, float]] = []
        self._unmerged_weight: Tensor | None = None
        self.naive = False  # use plain autograd (reference / benchmark) instead of the fused op

    # -- adapters -----------------------------------------------------------------
    def add_adapter(
        self,
        name: str,
        rank: int | None,
        dense: bool = False,
        generator: torch.Generator | None = None,
    ) -> LoRaDAngles:
        if name in self.lorad:
            raise ValueError(f"{self.layer_name}: adapter {name!r} already exists")
        ad = LoRaDAngles(self.weight.shape[0], self.pairs, rank, dense, generator, device=self.weight.device)
        if self.weight.device.type == "meta":
            ad = ad.to("meta")
        self.lorad[name] = ad
        return ad

    def remove_adapter(self, name: str, bake: bool = False) -> None:
        """Drop adapter ``name``.  If it is merged: ``bake`` keeps its rotation in the
        base weight (merge-then-bake); otherwise the layer is unmerged first."""
        if any(n == name for n, _ in self.merged):
            if not bake:
                raise RuntimeError(
                    f"{self.layer_name}: adapter {name!r} is merged; unmerge it first or remove with bake=True"
                )
            if len(self.merged) > 1:
                raise RuntimeError(f"{self.layer_name}: bake needs {name!r} to be the only merged adapter")
            self.merged = []
            self._unmerged_weight = None
        del self.lorad[name]
        self.active = tuple(n for n in self.active if n != name)

    def set_active(self, names: Iterable[str]) -> None:
        names = tuple(names)
        missing = [n for n in names if n not in self.lorad]
        if missing:
            raise KeyError(f"{self.layer_name}: no adapter named {missing} (have {list(self.lorad)})")
        self.active = names

    def terms(self, names: Sequence[str] | None = None) -> list[AngleTerm]:
        names = self.active if names is None else names
        merged = {n for n, _ in self.merged}
        return [self.lorad[n].term() for n in names if n not in merged and self.lorad[n].strength != 0]

    # -- forward ------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        terms = self.terms()
        if not terms:
            return self._base_forward(x)
        fn = naive_forward if self.naive else rotated_forward
        return fn(x, self.weight, self.bias, terms, self.conv)

    def _base_forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.linear(x, self.weight, self.bias)
        c = self.conv
        return F.conv2d(x, self.weight, self.bias, c.stride, c.padding, c.dilation, c.groups)

    def rotated_weight(self, names: Sequence[str] | None = None) -> Tensor:
        """The weight the forward would use (detached), in the base dtype."""
        with torch.no_grad():
            theta = functional.combine_angles([(t.strength, t.theta()) for t in self.terms(names)])
            return self.weight.detach().clone() if theta is None else functional.rotate(self.weight, theta)

    # -- merge --------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, names: Sequence[str] | None = None, keep_original: bool = True) -> None:
        """Rotate the base weight by the adapters; keep a copy for a bit-exact unmerge.

        Without ``keep_original`` unmerge rotates back by ``-theta`` (exact to float
        rounding, and no extra memory).  Non-finite results raise before any write.
        """
        names = [n for n in (self.active if names is None else names) if n not in {m for m, _ in self.merged}]
        if not names:
            return
        new = self.rotated_weight(names)
        if not torch.isfinite(new).all():
            raise ValueError(f"{self.layer_name}: non-finite values in the merged weight; nothing merged")
        if keep_original and self._unmerged_weight is None:
            self._unmerged_weight = self.weight.detach().clone()
        self.weight.data.copy_(new)
        self.merged += [(n, self.lorad[n].strength) for n in names]

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        if self._unmerged_weight is not None:
            self.weight.data.copy_(self._unmerged_weight)
        else:
            theta = functional.combine_angles([(s, self.lorad[n].angles()) for n, s in self.merged])
            if theta is not None:
                functional.rotate_(self.weight.data, theta, -1.0, self.layer_name)
        self._unmerged_weight = None
        self.merged = []

    def to_base(self) -> nn.Module:
        """A plain Linear/Conv2d holding the current weight (merged adapters stay merged)."""
        if self.conv is None:
            m = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        else:
            m = nn.Conv2d(
                self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                self.dilation, self.groups, bias=self.bias is not None, device="meta",
            )
        m.weight = self.weight
        m.bias = self.bias
        return m

    def extra_repr(self) -> str:
        return f"{self.layer_name or self.base_type.__name__}, active={list(self.active)}"
