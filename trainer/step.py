"""One WaDi micro-step on the shared base: student VSD update direction, then the fake score's loss.

All random draws of a micro-batch are made for the *global* batch from one seeded
CPU generator and each process takes its slice, so N processes with batch B see
exactly the numbers one process with batch N*B sees (and a resumed run continues
the same stream).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from .adapters import ModelViews
from .backbones import Backbone, TextCond
from .regression import PairBatch, regression_loss
from .vsd import cfg_eps, fake_loss, noisy, one_step_x0, student_loss, vsd_direction

__all__ = ["Batch", "StepSettings", "draw_batch", "micro_step", "fake_micro_step", "student_sample"]


@dataclass
class Batch:
    prompt_idx: Tensor  # [B] indices into the prompt table
    z: Tensor  # [B, C, H, W] generator input noise
    t: Tensor  # [B] VSD timesteps
    noise: Tensor  # [B, C, H, W] VSD re-noising
    t_fake: Tensor  # [B] fake-score timesteps
    noise_fake: Tensor  # [B, C, H, W]
    drop: Tensor  # [B] bool: null prompt for the fake score
    # [B] indices into the regression pairs; None when the regression term is off
    pair_idx: Tensor | None = None

    def _map(self, fn) -> Batch:
        return Batch(*(None if getattr(self, f) is None else fn(getattr(self, f)) for f in self.__dataclass_fields__))

    def to(self, device) -> Batch:
        return self._map(lambda t: t.to(device))

    def part(self, micro: int, rank: int, world: int, per: int) -> Batch:
        """Micro-batch ``micro`` of process ``rank``: ``per`` samples of the step's draw."""
        start = (micro * world + rank) * per
        return self._map(lambda t: t[start: start + per])


@dataclass
class StepSettings:
    timestep: int  # T of the one-step generator
    alpha_bar_T: float
    guidance: float
    fake_guidance: float
    t_range: tuple[int, int]
    fake_t_range: tuple[int, int]
    null_prob: float
    weighting: str = "sigma2"  # "sigma2" (the paper's VSD) or "dmd" (DMD's per-sample normalisation)
    regression_weight: float = 0.0  # DMD's regression term on teacher pairs (trainer/regression.py); 0 = off
    fake_weighting: str = "alpha_bar"  # the fake's loss over t: "alpha_bar" (official) or "uniform" (DMD2)


def draw_batch(gen: torch.Generator, n_prompts: int, total: int, latent: tuple[int, int, int],
               s: StepSettings, n_pairs: int = 0) -> Batch:
    """Draw every sample of one optimizer step (all processes x all micro-batches) from ``gen``.

    Each process draws the same numbers and takes its :meth:`Batch.part`; every draw is per
    sample and the losses are means, so the update depends on the global batch only, not on
    how it is split into processes and micro-batches.  The regression pairs' indices are drawn
    last and only when there are pairs, so a run without them sees the stream it always did.
    """
    idx = torch.randint(0, n_prompts, (total,), generator=gen)
    z = torch.randn(total, *latent, generator=gen)
    t = torch.randint(s.t_range[0], s.t_range[1] + 1, (total,), generator=gen)
    n1 = torch.randn(total, *latent, generator=gen)
    t2 = torch.randint(s.fake_t_range[0], s.fake_t_range[1] + 1, (total,), generator=gen)
    n2 = torch.randn(total, *latent, generator=gen)
    drop = torch.rand(total, generator=gen) < s.null_prob
    pair_idx = torch.randint(0, n_pairs, (total,), generator=gen) if n_pairs > 0 else None
    return Batch(idx, z, t, n1, t2, n2, drop, pair_idx)


def _backward(loss: Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def micro_step(bb: Backbone, views: ModelViews, batch: Batch, cond: TextCond, null: TextCond, s: StepSettings,
               autocast=contextlib.nullcontext, scale: float = 1.0, scalers=(None, None),
               pairs: PairBatch | None = None) -> tuple[float, float]:
    """Accumulate student and fake gradients for one micro-batch; return (student loss, fake loss).

    ``scale`` divides the losses (1 / grad_accum).  Each backward runs inside its own
    view so gradient checkpointing recomputes the forward with the right adapters.  With
    ``pairs`` and ``s.regression_weight`` > 0 the student loss adds the weighted regression
    term on those pairs (its own forward: the pairs' noise is not the VSD batch's).
    """
    dev = batch.z.device
    T = torch.full((batch.z.shape[0],), s.timestep, device=dev, dtype=torch.long)
    # -- student: one-step x0 with gradient -------------------------------------------------
    with autocast(), views.student_view() as m:
        x0 = one_step_x0(bb.eps(m, batch.z, T, cond), batch.z, s.alpha_bar_T)
    # -- VSD direction from the frozen teacher and the fake score (no gradient) ---------------
    ab = bb.alpha_bar(batch.t)
    with torch.no_grad(), autocast():
        x_t = noisy(x0.detach(), batch.noise, ab)
        with views.teacher() as m:
            e_teacher = cfg_eps(partial(bb.eps, m), x_t, batch.t, cond, null, s.guidance)
        with views.fake_view() as m:
            e_fake = cfg_eps(partial(bb.eps, m), x_t, batch.t, cond, null, s.fake_guidance)
        g = vsd_direction(e_teacher, e_fake, ab, s.weighting, x0.detach(), x_t)
    loss_s = student_loss(x0, g)
    if pairs is not None and s.regression_weight > 0:
        T_r = torch.full((pairs.z.shape[0],), s.timestep, device=dev, dtype=torch.long)
        with autocast(), views.student_view() as m:
            x0_r = one_step_x0(bb.eps(m, pairs.z, T_r, pairs.cond), pairs.z, s.alpha_bar_T)
        loss_s = loss_s + s.regression_weight * regression_loss(x0_r, pairs.x0)
    with views.student_view():
        _backward(loss_s * scale, scalers[0])
    # -- fake score: denoising loss on the detached student sample ----------------------------
    loss_f = fake_micro_step(bb, views, x0.detach(), batch, cond, null, autocast, scale, scalers[1],
                             s.fake_weighting)
    return float(loss_s.detach()), loss_f


def fake_micro_step(bb: Backbone, views: ModelViews, x0: Tensor, batch: Batch, cond: TextCond, null: TextCond,
                    autocast=contextlib.nullcontext, scale: float = 1.0, scaler=None,
                    weighting: str = "alpha_bar") -> float:
    """Accumulate the fake score's gradient on the (detached) student sample ``x0``; return its loss."""
    ab2 = bb.alpha_bar(batch.t_fake)
    x_t2 = noisy(x0, batch.noise_fake, ab2)
    cond2 = cond.where(batch.drop, null)
    with views.fake_view() as m:
        with autocast():
            e = bb.eps(m, x_t2, batch.t_fake, cond2)
        loss_f = fake_loss(e, batch.noise_fake, ab2, weighting)
        _backward(loss_f * scale, scaler)
    return float(loss_f.detach())


@torch.no_grad()
def student_sample(bb: Backbone, views: ModelViews, batch: Batch, cond: TextCond, s: StepSettings,
                   autocast=contextlib.nullcontext) -> Tensor:
    """The student's one-step x0 for ``batch.z`` without gradient (extra fake-score updates)."""
    T = torch.full((batch.z.shape[0],), s.timestep, device=batch.z.device, dtype=torch.long)
    with autocast(), views.student_view() as m:
        return one_step_x0(bb.eps(m, batch.z, T, cond), batch.z, s.alpha_bar_T)
