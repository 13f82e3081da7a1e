"""Extract LoRaD angles from a merged (rotated) model given its base.

The official WaDi release ships *merged* students (``rotated_unet-sdv1-5.safetensors``:
a full diffusers-key UNet state dict), not adapters.  For every weight row and
input pair the rotation angle is recoverable exactly: with base pair ``p = (a, b)``
and merged pair ``p' = (a', b')``::

    cross = a * b' - b * a' = |p| |p'| sin(theta)
    dot   = a * a' + b * b' = |p| |p'| cos(theta)
    theta = atan2(cross, dot)

This is independent of any norm change of the pair, so what a pure rotation does
not explain (the *non-rotational residual*) is measured separately:
``merged - rotate(base, theta)``, plus the per-row and per-pair norm changes.

The dense angles are then factored at rank ``r`` by truncated SVD with a balanced
split ``A = U_r sqrt(S_r)``, ``B = sqrt(S_r) V_r^T`` (balanced so neither factor
carries the whole scale, which keeps fp16 storage well conditioned).  Angles are
only defined modulo 2pi: a low-rank ``A @ B`` whose entries pass +-pi is stored
wrapped and is then *not* low rank any more.  Errors are therefore measured as
angular distances ``wrap(A @ B - theta)``, and where plain SVD misses, a
lift-and-refit (see :func:`factorize`) recovers the unwrapped low-rank angles when
only a small fraction of entries crossed +-pi.  Layers whose factors would be
larger than theta, or whose factored rotation differs from the dense one by more
than ``tol`` (relative Frobenius), are stored dense.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from . import functional

__all__ = [
    "LayerExtraction",
    "OtherDifference",
    "ExtractionResult",
    "pair_angles",
    "angular_error",
    "factorize",
    "extract_layer",
    "extract_state",
]

TWO_PI = 2 * math.pi


@dataclass
class LayerExtraction:
    """Per-layer extraction report (relative errors are Frobenius ratios to the merged weight)."""

    name: str
    shape: tuple[int, ...]
    pairs: int
    stored: str  # "factors" | "dense" | "skipped" (no rotation found)
    rank: int | None
    zero_pairs: int  # pairs whose base vector is ~0: angle undefined, set to 0
    max_abs_angle: float
    mean_abs_angle: float
    row_norm_change_max: float  # max_i | |w'_i| - |w_i| | / |w_i|
    row_norm_change_mean: float
    pair_norm_change_max: float  # same per input pair
    rotation_residual: float  # |merged - rotate(base, theta)| / |merged|: what no rotation explains
    theta_err_rel: float  # |wrap(A@B - theta)| / |theta|
    theta_err_max: float  # max |wrap(A@B - theta)|
    factor_weight_err: float  # |rotate(base, A@B) - rotate(base, theta)| / |merged|
    weight_err: float  # |stored reconstruction - merged| / |merged|
    energy_kept: float  # share of sum(S^2) of theta in the first r singular values
    unwrapped: bool = False  # the +-pi lift-and-refit was used


@dataclass
class OtherDifference:
    """A tensor that differs but is not extracted as a rotation (conv, norm, bias, ...)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    max_abs_diff: float
    rel_diff: float  # |merged - base| / |base| (inf where base is 0)
    note: str = ""


@dataclass
class ExtractionResult:
    layers: dict[str, dict[str, Tensor]]  # {module name: {"A", "B"} | {"theta"}} as inject.adapter_state
    reports: list[LayerExtraction]
    others: list[OtherDifference]
    unchanged: int  # tensors that are bit-identical
    settings: dict[str, object] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        stored = [r for r in self.reports if r.stored != "skipped"]
        return {
            "layers_extracted": len(stored),
            "factored": sum(r.stored == "factors" for r in stored),
            "dense_fallback": sum(r.stored == "dense" for r in stored),
            "skipped_no_rotation": sum(r.stored == "skipped" for r in self.reports),
            "zero_pairs": sum(r.zero_pairs for r in self.reports),
            "max_rotation_residual": max((r.rotation_residual for r in stored), default=0.0),
            "max_weight_err": max((r.weight_err for r in stored), default=0.0),
            "mean_weight_err": sum(r.weight_err for r in stored) / len(stored) if stored else 0.0,
            "max_theta_err": max((r.theta_err_max for r in stored), default=0.0),
            "other_differences": len(self.others),
            "unchanged_tensors": self.unchanged,
            **self.settings,
        }

    def report_rows(self) -> list[dict[str, object]]:
        rows = []
        for r in self.reports:
            d = asdict(r)
            d["shape"] = "x".join(map(str, r.shape))
            rows.append(d)
        return rows

    def other_rows(self) -> list[dict[str, object]]:
        rows = []
        for o in self.others:
            d = asdict(o)
            d["shape"] = "x".join(map(str, o.shape))
            rows.append(d)
        return rows


# -- angles -----------------------------------------------------------------------------


def _pairs64(w: Tensor) -> Tensor:
    return w.detach().to(torch.float64).reshape(w.shape[0], -1, 2)


def pair_angles(base: Tensor, merged: Tensor, zero_rel: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-pair rotation angles (float64, in ``[-pi, pi)``) and the mask of ~zero base pairs.

    A base pair with norm <= ``zero_rel`` times the layer's largest pair norm has
    no defined angle; it gets 0 (whatever the merged pair is shows up in the residual).
    """
    if base.shape != merged.shape:
        raise functional.LoRaDShapeError(f"base {tuple(base.shape)} and merged {tuple(merged.shape)} shapes differ")
    functional.check_pairable(base.shape)
    p, q = _pairs64(base), _pairs64(merged)
    a, b = p[..., 0], p[..., 1]
    a2, b2 = q[..., 0], q[..., 1]
    theta = torch.atan2(a * b2 - b * a2, a * a2 + b * b2)
    pn = torch.hypot(a, b)
    zero = pn <= zero_rel * pn.max() if pn.numel() else pn.bool()
    theta = torch.where(zero, torch.zeros_like(theta), theta)
    # atan2 gives (-pi, pi]; store the library's canonical [-pi, pi) (same rotation).
    return functional.wrap_angles(theta), zero


def angular_error(approx: Tensor, theta: Tensor) -> Tensor:
    """Elementwise angular distance ``|wrap(approx - theta)|`` (angles equal modulo 2pi)."""
    return functional.wrap_angles(approx - theta).abs()


# -- factorisation ----------------------------------------------------------------------


def _svd(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return torch.linalg.svd(t, full_matrices=False)


def _lowrank(t: Tensor, r: int) -> Tensor:
    u, s, vh = _svd(t)
    return (u[:, :r] * s[:r]) @ vh[:r]


def _lift_and_refit(theta: Tensor, r: int, fill_iters: int, lift_iters: int) -> Tensor:
    """Low-rank estimate of the *unwrapped* angles behind a wrapped ``theta``.

    1. Entries with |theta| < pi/2 are trusted (far from the cut); the rest are
       treated as missing and filled by iterated rank-r SVD (matrix completion).
    2. Every entry is then lifted by the multiple of 2pi closest to the estimate
       and the rank-r SVD refitted, a few times.
    Works when the crossing entries are a small minority; otherwise the caller
    sees a large error and falls back to dense.
    """
    trusted = theta.abs() < math.pi / 2
    est = _lowrank(theta * trusted, r)
    for _ in range(fill_iters):
        new = _lowrank(torch.where(trusted, theta, est), r)
        done = float((new - est).abs().max()) < 1e-9
        est = new
        if done:
            break
    for _ in range(lift_iters):
        lifted = theta + TWO_PI * torch.round((est - theta) / TWO_PI)
        est = _lowrank(lifted, r)
    return theta + TWO_PI * torch.round((est - theta) / TWO_PI)


def factorize(
    theta: Tensor,
    rank: int,
    unwrap: bool = True,
    tol_angle: float = 1e-4,
    fill_iters: int = 30,
    lift_iters: int = 8,
) -> tuple[Tensor, Tensor, dict[str, float | bool]]:
    """Rank-``rank`` factors ``A (out, r)``, ``B (r, pairs)`` with ``wrap(A @ B) ~= theta``.

    Returns float32 factors and ``{"energy_kept", "theta_err_rel", "theta_err_max",
    "unwrapped"}``.  With ``unwrap`` the +-pi lift-and-refit is tried when plain SVD
    leaves a max angular error above ``tol_angle`` and some angles lie beyond 3pi/4;
    the better of the two is kept.
    """
    t = theta.detach().to(torch.float64)
    r = max(1, min(int(rank), *t.shape))
    u, s, vh = _svd(t)
    energy = float((s[:r] ** 2).sum() / (s**2).sum()) if s.numel() and float(s[0]) > 0 else 1.0
    best_u, best_s, best_vh, unwrapped = u, s, vh, False
    err = angular_error((u[:, :r] * s[:r]) @ vh[:r], t)
    # Only angles close to the +-pi cut can be wrap artefacts; a rank that is simply too
    # low for the angles is no reason to spend ~40 extra SVDs per layer.
    if unwrap and float(err.max()) > tol_angle and float(t.abs().max()) > 0.75 * math.pi:
        lifted = _lift_and_refit(t, r, fill_iters, lift_iters)
        u2, s2, vh2 = _svd(lifted)
        err2 = angular_error((u2[:, :r] * s2[:r]) @ vh2[:r], t)
        if float(err2.norm()) < float(err.norm()):
            best_u, best_s, best_vh, err, unwrapped = u2, s2, vh2, err2, True
    root = best_s[:r].sqrt()
    a = (best_u[:, :r] * root).float().contiguous()
    b = (root[:, None] * best_vh[:r]).float().contiguous()
    tn = float(t.norm())
    info = {
        "energy_kept": energy,
        "theta_err_rel": float(err.norm()) / tn if tn > 0 else 0.0,
        "theta_err_max": float(err.max()) if err.numel() else 0.0,
        "unwrapped": unwrapped,
    }
    return a, b, info


# -- one layer --------------------------------------------------------------------------


def _rotate64(base: Tensor, theta: Tensor) -> Tensor:
    return functional.rotate(base.detach().to(torch.float64), theta.to(torch.float64))


def _rel(diff: Tensor, ref: Tensor) -> float:
    rn = float(ref.norm())
    dn = float(diff.norm())
    return dn / rn if rn > 0 else (0.0 if dn == 0 else math.inf)


def extract_layer(
    name: str,
    base: Tensor,
    merged: Tensor,
    rank: int | None,
    tol: float = 1e-3,
    zero_rel: float = 1e-6,
    unwrap: bool = True,
) -> tuple[dict[str, Tensor] | None, LayerExtraction]:
    """Angles of one layer: ``({"A","B"} | {"theta"} | None, report)``.

    ``rank=None`` stores dense angles.  A factored layer falls back to dense when
    the factors hold at least as many values as theta, or when
    ``factor_weight_err`` exceeds ``tol``.  A layer whose rotation moves the weight
    by no more than the merged dtype's rounding (``|rotate(base, theta) - base| <=
    eps(dtype) * |merged|``, e.g. a pure rescale, whose angles are rounding noise)
    stores nothing and is marked "skipped".
    """
    theta, zero = pair_angles(base, merged, zero_rel)
    w0 = base.detach().to(torch.float64)
    w1 = merged.detach().to(torch.float64)
    dense_rot = _rotate64(w0, theta)
    rows0 = w0.reshape(w0.shape[0], -1).norm(dim=1)
    rows1 = w1.reshape(w1.shape[0], -1).norm(dim=1)
    row_change = torch.where(rows0 > 0, (rows1 - rows0).abs() / rows0.clamp_min(1e-300), (rows1 > 0).double())
    p0 = _pairs64(w0).norm(dim=-1)
    p1 = _pairs64(w1).norm(dim=-1)
    pair_change = torch.where(~zero, (p1 - p0).abs() / p0.clamp_min(1e-300), torch.zeros_like(p0))
    out_f, pairs = theta.shape
    common = {
        "name": name,
        "shape": tuple(base.shape),
        "pairs": pairs,
        "zero_pairs": int(zero.sum()),
        "max_abs_angle": float(theta.abs().max()),
        "mean_abs_angle": float(theta.abs().mean()),
        "row_norm_change_max": float(row_change.max()),
        "row_norm_change_mean": float(row_change.mean()),
        "pair_norm_change_max": float(pair_change.max()),
        "rotation_residual": _rel(dense_rot - w1, w1),
    }
    noise = torch.finfo(merged.dtype).eps * float(w1.norm())
    if float((dense_rot - w0).norm()) <= noise:
        rep = LayerExtraction(
            stored="skipped", rank=None, theta_err_rel=0.0, theta_err_max=0.0, factor_weight_err=0.0,
            weight_err=_rel(w0 - w1, w1), energy_kept=1.0, **common,
        )
        return None, rep
    dense_rep = {
        "stored": "dense", "rank": None, "theta_err_rel": 0.0, "theta_err_max": 0.0, "factor_weight_err": 0.0,
        "weight_err": common["rotation_residual"], "energy_kept": 1.0,
    }
    if rank is None or functional.prefer_dense(out_f, pairs, rank):
        return {"theta": theta.float()}, LayerExtraction(**dense_rep, **common)
    a, b, info = factorize(theta, rank, unwrap=unwrap)
    approx = functional.angles(a.double(), b.double())
    fact_rot = _rotate64(w0, approx)
    factor_err = _rel(fact_rot - dense_rot, w1)
    if factor_err > tol:
        rep = LayerExtraction(**dense_rep, **common)
        rep.energy_kept = info["energy_kept"]
        return {"theta": theta.float()}, rep
    rep = LayerExtraction(
        stored="factors", rank=int(a.shape[1]), factor_weight_err=factor_err, weight_err=_rel(fact_rot - w1, w1),
        theta_err_rel=info["theta_err_rel"], theta_err_max=info["theta_err_max"],
        energy_kept=info["energy_kept"], unwrapped=bool(info["unwrapped"]), **common,
    )
    return {"A": a, "B": b}, rep


# -- whole state dicts ------------------------------------------------------------------


def _kind(name: str, t: Tensor) -> str:
    if t.dim() == 4:
        return "conv"
    if t.dim() == 2:
        return "linear"
    if name.endswith(".bias"):
        return "bias"
    if "norm" in name:
        return "norm"
    return f"{t.dim()}d"


def _diff(name: str, kind: str, a: Tensor, b: Tensor, note: str = "") -> OtherDifference:
    d = b.detach().double() - a.detach().double()
    return OtherDifference(
        name=name, kind=kind, shape=tuple(a.shape), max_abs_diff=float(d.abs().max()) if d.numel() else 0.0,
        rel_diff=_rel(d, a.detach().double()), note=note,
    )


def extract_state(
    base: Mapping[str, Tensor],
    merged: Mapping[str, Tensor],
    rank: int | None = 256,
    tol: float = 1e-3,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    include_conv: bool = False,
    zero_rel: float = 1e-6,
    unwrap: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> ExtractionResult:
    """Extract every rotated layer of ``merged`` against ``base`` (both full state dicts).

    Candidates are ``<module>.weight`` tensors with 2 dims (Linear; 4 dims too with
    ``include_conv``), an even row width and a module name that matches one of
    the ``include`` regexes (if any) and none of the ``exclude`` regexes
    (``re.search``; a preset's :class:`~.presets.Targets` supplies both).  Candidates that are bit-identical are left out;
    every other differing tensor (convs, norms, biases, untargeted or odd-width
    Linears) and any missing/extra key or shape mismatch is listed in ``others``.
    """
    pats = [re.compile(p) for p in include or ()]
    skip = [re.compile(p) for p in exclude or ()]
    layers: dict[str, dict[str, Tensor]] = {}
    reports: list[LayerExtraction] = []
    others: list[OtherDifference] = []
    unchanged = 0
    for key in sorted(set(merged) - set(base)):
        others.append(OtherDifference(key, "extra-in-merged", tuple(merged[key].shape), math.inf, math.inf))
    keys = list(base)  # model order
    for key in progress(keys) if progress else keys:
        w0 = base[key]
        if key not in merged:
            others.append(OtherDifference(key, "missing-in-merged", tuple(w0.shape), math.inf, math.inf))
            continue
        w1 = merged[key]
        if tuple(w0.shape) != tuple(w1.shape):
            others.append(OtherDifference(
                key, "shape-mismatch", tuple(w0.shape), math.inf, math.inf, note=f"merged {tuple(w1.shape)}"
            ))
            continue
        if not (w0.is_floating_point() and w1.is_floating_point()):
            if not torch.equal(w0, w1):
                others.append(OtherDifference(key, "non-float", tuple(w0.shape), math.inf, math.inf))
            else:
                unchanged += 1
            continue
        if torch.equal(w0.to(w1.dtype), w1):
            unchanged += 1
            continue
        kind = _kind(key, w0)
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        candidate = module is not None and (kind == "linear" or (include_conv and kind == "conv"))
        if candidate and (
            (pats and not any(p.search(module) for p in pats)) or any(p.search(module) for p in skip)
        ):
            others.append(_diff(key, kind, w0, w1, note="not targeted"))
            continue
        if candidate and functional.pair_width(w0.shape) % 2:
            others.append(_diff(key, kind, w0, w1, note="odd row width: cannot be a LoRaD rotation"))
            continue
        if not candidate:
            others.append(_diff(key, kind, w0, w1))
            continue
        tensors, rep = extract_layer(module, w0, w1, rank, tol=tol, zero_rel=zero_rel, unwrap=unwrap)
        reports.append(rep)
        if tensors is not None:
            layers[module] = tensors
    settings = {"rank": rank, "tol": tol, "include_conv": include_conv}
    return ExtractionResult(layers=layers, reports=reports, others=others, unchanged=unchanged, settings=settings)
