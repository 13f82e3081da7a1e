"""Weight-space analysis between two checkpoints (the WaDi paper's Fig. 1).

Definitions (per output row ``i`` of a weight flattened to ``(out, n)``; ``s`` is
the "student"/fine-tuned checkpoint, ``t`` the "teacher"/base; DoRA-style, the
paper's exact formula is unverified, see docs/analysis.md):

* norm change       ``|‖w_s,i‖ − ‖w_t,i‖| / ‖w_t,i‖``
* direction change  ``1 − cos(w_s,i, w_t,i)``
* direction residual ``D = W_s / ‖W_s‖_row − W_t / ‖W_t‖_row`` (row-normalised
  difference: what changed in direction only), and its SVD energy kept at a
  fraction of full rank, ``sum_{j<k} S_j² / sum_j S_j²`` with
  ``k = floor(frac · min(out, n))`` (frac 0.3 gives the paper's 96/192/230/384).

Rows whose teacher norm is 0 have no defined change and are left out of the
statistics (counted in ``zero_rows``).  Layers are every floating tensor with
>= 2 dims present in both checkpoints with the same shape (Linear, Conv2d,
embeddings), optionally filtered by regexes.

Swaps (Fig. 1c): *norm-swapped* keeps the student's direction with the teacher's
row norms; *direction-swapped* keeps the teacher's direction with the student's
row norms.  Only the analysed weights are swapped; every other tensor (biases,
norms, ...) is the student's.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .fsutil import atomic_save, atomic_write_text

__all__ = [
    "LayerStats",
    "AnalysisResult",
    "row_changes",
    "direction_residual",
    "energy_curve",
    "energy_at",
    "analysis_keys",
    "analyze",
    "norm_swapped",
    "direction_swapped",
    "write_csv",
    "plot_norm_direction",
    "plot_svd_energy",
]


@dataclass
class LayerStats:
    """Per-layer statistics; changes are fractions (multiply by 100 for %)."""

    name: str
    shape: tuple[int, ...]
    rows: int
    zero_rows: int
    norm_mean: float
    norm_std: float
    dir_mean: float
    dir_std: float
    full_rank: int
    k: int  # rank kept for the energy figure
    energy_at_k: float  # share of squared singular-value energy of D in the first k
    residual_rms: float  # ‖D‖_F / sqrt(rows): ~0 means energy_at_k only measures rounding noise


@dataclass
class AnalysisResult:
    layers: list[LayerStats]
    curves: dict[str, Tensor] = field(default_factory=dict)  # name -> cumulative energy per rank (float64)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    frac: float = 0.3

    def summary(self) -> dict[str, float]:
        """All-layer means (mean of the per-layer means, as Fig. 1a's star) and the energy mean."""
        n = len(self.layers)
        if n == 0:
            return {"layers": 0}
        return {
            "layers": n,
            "norm_mean": sum(s.norm_mean for s in self.layers) / n,
            "norm_std_mean": sum(s.norm_std for s in self.layers) / n,
            "dir_mean": sum(s.dir_mean for s in self.layers) / n,
            "dir_std_mean": sum(s.dir_std for s in self.layers) / n,
            "energy_mean": sum(s.energy_at_k for s in self.layers) / n,
            "energy_min": min(s.energy_at_k for s in self.layers),
            "energy_max": max(s.energy_at_k for s in self.layers),
            "frac": self.frac,
        }


def _rows(w: Tensor) -> Tensor:
    return w.detach().to(torch.float64).reshape(w.shape[0], -1)


def row_changes(w_s: Tensor, w_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(norm_change, direction_change, valid)`` per output row (float64).

    ``valid`` is False where the teacher row is 0; where only the student row is 0
    the direction change is 1 (cosine taken as 0).
    """
    s, t = _rows(w_s), _rows(w_t)
    ns, nt = s.norm(dim=1), t.norm(dim=1)
    valid = nt > 0
    norm_change = (ns - nt).abs() / nt.where(valid, torch.ones_like(nt))
    denom = ns * nt
    cos = (s * t).sum(dim=1) / denom.where(denom > 0, torch.ones_like(denom))
    cos = torch.where(denom > 0, cos.clamp(-1.0, 1.0), torch.zeros_like(cos))
    return norm_change, 1.0 - cos, valid


def _unit_rows(m: Tensor) -> Tensor:
    n = m.norm(dim=1, keepdim=True)
    return m / n.where(n > 0, torch.ones_like(n))


def direction_residual(w_s: Tensor, w_t: Tensor) -> Tensor:
    """``W_s/‖W_s‖_row − W_t/‖W_t‖_row`` on the flattened ``(out, n)`` view (float64)."""
    return _unit_rows(_rows(w_s)) - _unit_rows(_rows(w_t))


def energy_curve(m: Tensor) -> Tensor:
    """Cumulative share of ``sum S²`` kept by the first 1..R singular values (R = min shape)."""
    m = m.to(torch.float64)
    # Squared singular values = eigenvalues of the smaller Gram matrix; in float64 this is
    # ~10x faster than svdvals on (1280, 5120) layers and exact to ~1e-14 of the total.
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    s2 = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0)
    total = s2.sum()
    if float(total) == 0:
        return torch.ones(s2.numel(), dtype=torch.float64)
    return torch.cumsum(s2, 0) / total


def rank_at(full_rank: int, frac: float) -> int:
    """``floor(frac * full_rank)``, at least 1 (tiny epsilon guards 0.3*320 = 95.999...)."""
    return max(1, int(math.floor(frac * full_rank + 1e-9)))


def energy_at(curve: Tensor, frac: float) -> tuple[int, float]:
    k = rank_at(curve.numel(), frac)
    return k, float(curve[k - 1])


def analysis_keys(
    student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], include: Sequence[str] | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Keys to analyse and ``(key, why)`` for every weight-like key left out."""
    pats = [re.compile(p) for p in include or ()]
    keep: list[str] = []
    skipped: list[tuple[str, str]] = []
    # Teacher order first (a state dict lists layers in model order), then student-only keys.
    for k in list(teacher) + [k for k in student if k not in teacher]:
        if k not in student or k not in teacher:
            skipped.append((k, "missing in " + ("student" if k not in student else "teacher")))
            continue
        a, b = student[k], teacher[k]
        if a.dim() < 2 or not a.is_floating_point():
            continue  # biases, norms, buffers: not weight matrices
        if tuple(a.shape) != tuple(b.shape):
            skipped.append((k, f"shape {tuple(a.shape)} vs {tuple(b.shape)}"))
            continue
        if pats and not any(p.search(k) for p in pats):
            continue
        keep.append(k)
    return keep, skipped


def analyze(
    student: Mapping[str, Tensor],
    teacher: Mapping[str, Tensor],
    include: Sequence[str] | None = None,
    frac: float = 0.3,
    keep_curves: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> AnalysisResult:
    """Per-layer norm/direction statistics and direction-residual SVD energy."""
    keys, skipped = analysis_keys(student, teacher, include)
    layers: list[LayerStats] = []
    curves: dict[str, Tensor] = {}
    for k in progress(keys) if progress else keys:
        ws, wt = student[k], teacher[k]
        nc, dc, valid = row_changes(ws, wt)
        if not bool(valid.any()):
            skipped.append((k, "all teacher rows are zero"))
            continue
        nc, dc = nc[valid], dc[valid]
        resid = direction_residual(ws, wt)
        curve = energy_curve(resid)
        kk, e = energy_at(curve, frac)
        # std over rows (population std: the spread of this layer's weight vectors)
        layers.append(LayerStats(
            name=k, shape=tuple(ws.shape), rows=int(valid.numel()), zero_rows=int((~valid).sum()),
            norm_mean=float(nc.mean()), norm_std=float(nc.std(unbiased=False)),
            dir_mean=float(dc.mean()), dir_std=float(dc.std(unbiased=False)),
            full_rank=curve.numel(), k=kk, energy_at_k=e, residual_rms=float(resid.norm()) / math.sqrt(ws.shape[0]),
        ))
        if keep_curves:
            curves[k] = curve
    return AnalysisResult(layers=layers, curves=curves, skipped=skipped, frac=frac)


# -- swaps ------------------------------------------------------------------------------


def _swap(direction_from: Tensor, norm_from: Tensor) -> Tensor:
    d = _rows(direction_from)
    n = _rows(norm_from).norm(dim=1, keepdim=True)
    out = _unit_rows(d) * n
    # A zero direction row has no direction to carry a norm: keep the row as it was.
    out = torch.where(d.norm(dim=1, keepdim=True) > 0, out, d)
    return out.reshape(direction_from.shape).to(direction_from.dtype)


def norm_swapped(
    student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], include: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Student directions with teacher row norms (Fig. 1c "norm from teacher")."""
    keys, _ = analysis_keys(student, teacher, include)
    out = dict(student)
    for k in keys:
        out[k] = _swap(student[k], teacher[k])
    return out


def direction_swapped(
    student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], include: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """Teacher directions with student row norms (Fig. 1c "direction from teacher")."""
    keys, _ = analysis_keys(student, teacher, include)
    out = dict(student)
    for k in keys:
        out[k] = _swap(teacher[k], student[k]).to(student[k].dtype)
    return out


# -- outputs ----------------------------------------------------------------------------

CSV_FIELDS = [
    "index", "name", "shape", "rows", "zero_rows", "norm_mean_pct", "norm_std_pct", "dir_mean_pct",
    "dir_std_pct", "full_rank", "k", "energy_at_k", "residual_rms",
]


def write_csv(result: AnalysisResult, path: str | os.PathLike) -> Path:
    """One row per layer, changes in percent (atomic write)."""
    path = Path(path)
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    w.writeheader()
    for i, s in enumerate(result.layers):
        d = asdict(s)
        w.writerow({
            "index": i, "name": s.name, "shape": "x".join(map(str, s.shape)), "rows": s.rows,
            "zero_rows": s.zero_rows, "norm_mean_pct": 100 * s.norm_mean, "norm_std_pct": 100 * s.norm_std,
            "dir_mean_pct": 100 * s.dir_mean, "dir_std_pct": 100 * s.dir_std,
            "full_rank": d["full_rank"], "k": d["k"], "energy_at_k": s.energy_at_k,
            "residual_rms": s.residual_rms,
        })
    return atomic_write_text(path, f.getvalue())


def _pyplot():
    import matplotlib  # lazily: plotting is optional

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path: Path) -> Path:
    return atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def plot_norm_direction(result: AnalysisResult, path: str | os.PathLike, title: str = "") -> Path:
    """Fig. 1a style: per-layer mean ± std (%) of norm and direction change; stars at the all-layer means."""
    plt = _pyplot()
    n = len(result.layers)
    x = list(range(n))
    fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, 0.12 * n + 4)), 4))
    for attr, label, color, dx in (("norm", "norm change", "tab:blue", -0.2), ("dir", "direction change", "tab:red", 0.2)):
        means = [100 * getattr(s, f"{attr}_mean") for s in result.layers]
        stds = [100 * getattr(s, f"{attr}_std") for s in result.layers]
        ax.bar([i + dx for i in x], means, width=0.4, yerr=stds, color=color, alpha=0.75, label=label,
               error_kw={"elinewidth": 0.6, "capsize": 0})
        if n:
            avg = sum(means) / n
            ax.plot([n + 1], [avg], marker="*", markersize=14, color=color, linestyle="none",
                    label=f"{label} all-layer mean {avg:.3g}%")
    ax.set_xlabel("layer index (see CSV)")
    ax.set_ylabel("change per weight row (%)")
    ax.set_title(title or "norm vs direction change per layer (mean ± std)")
    ax.legend(fontsize=8)
    ax.set_ylim(bottom=0)
    path = _save_fig(fig, Path(path))
    plt.close(fig)
    return path


def plot_svd_energy(result: AnalysisResult, path: str | os.PathLike, max_curves: int = 8, title: str = "") -> Path:
    """Fig. 1b style: cumulative SVD energy of the direction residual vs rank fraction + box of energy at k.

    The curves shown are the layers at evenly spaced quantiles of ``energy_at_k``
    (lowest to highest), so the spread across layers is visible.
    """
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    ranked = sorted((s for s in result.layers if s.name in result.curves), key=lambda s: s.energy_at_k)
    if len(ranked) > max_curves:
        idx = sorted({round(i * (len(ranked) - 1) / (max_curves - 1)) for i in range(max_curves)})
        ranked = [ranked[i] for i in idx]
    for s in ranked:
        c = result.curves[s.name].numpy()
        x = [(i + 1) / len(c) for i in range(len(c))]
        short = s.name if len(s.name) < 50 else "…" + s.name[-47:]
        (line,) = ax1.plot(x, c, linewidth=1, label=f"{short} (R={len(c)}, {s.energy_at_k:.2f})")
        ax1.plot([s.k / len(c)], [s.energy_at_k], marker="o", markersize=4, color=line.get_color())
    ax1.axvline(result.frac, color="gray", linestyle="--", linewidth=0.8)
    ax1.set_xlabel("rank / full rank R")
    ax1.set_ylabel("cumulative energy of direction residual")
    ax1.set_xlim(0, 1)
    ax1.set_ylim(0, 1.02)
    ax1.legend(fontsize=6, loc="lower right")
    ax1.set_title(title or f"SVD energy of the direction residual (dashed: {result.frac:.0%} of full rank)")
    vals = [s.energy_at_k for s in result.layers]
    if vals:
        ax2.boxplot(vals)
        mean = sum(vals) / len(vals)
        ax2.plot([1], [mean], marker="*", markersize=12, color="tab:red", linestyle="none", label=f"mean {mean:.3f}")
        ax2.legend(fontsize=8, loc="lower right")
    ax2.set_xticks([1], [f"energy at {result.frac:.0%} rank\n({len(vals)} layers)"])
    ax2.set_ylim(0, 1.02)
    path = _save_fig(fig, Path(path))
    plt.close(fig)
    return path
