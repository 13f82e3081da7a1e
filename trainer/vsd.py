"""The VSD objective of WaDi (as its released training code computes it), as pure functions of eps predictions.

Student (one step at T):   x0 = (z - sqrt(1 - abar_T) eps_student(z, T)) / sqrt(abar_T)
VSD direction at t:        x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n,  t ~ U{t_min..t_max}
                           g   = sigma_t^2 (eps_teacher^cfg(x_t) - eps_fake^cfg(x_t)),  sigma_t^2 = 1 - abar_t
Student loss:              0.5 * MSE(x0, stopgrad(x0 - g))   =>  d loss / d x0 = g / numel
Fake score loss:           MSE(sqrt(abar_t) eps_fake(x_t'), sqrt(abar_t) n'),  x_t' from detached x0,
                           t ~ U{0..999}, the prompt replaced by the null prompt with probability p.

CFG on eps: eps_u + s (eps_c - eps_u), cond and uncond in ONE batched forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..lorad.onestep import predict_x0
from .backbones import TextCond

__all__ = ["EpsCall", "cfg_eps", "one_step_x0", "noisy", "vsd_direction", "student_loss", "fake_loss"]

# eps(x_t [B..], t [B], cond with batch B) -> eps [B..] (float32)
EpsCall = Callable[[Tensor, Tensor, TextCond], Tensor]


def _b(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1))).to(like.device, torch.float32)


def cfg_eps(eps: EpsCall, x_t: Tensor, t: Tensor, cond: TextCond, uncond: TextCond, scale: float) -> Tensor:
    """Classifier-free guided eps; uncond (batch 1 or B) and cond go through one batched call."""
    if scale == 1.0:
        return eps(x_t, t, cond)  # eps_u + 1 (eps_c - eps_u) = eps_c: no uncond pass needed
    b = x_t.shape[0]
    un = uncond.expand(b) if len(uncond) == 1 else uncond
    out = eps(torch.cat([x_t, x_t]), torch.cat([t, t]), TextCond.cat([un.to(cond.embeds.device), cond]))
    e_u, e_c = out.chunk(2)
    return e_u + scale * (e_c - e_u)


def one_step_x0(eps_student: Tensor, z: Tensor, alpha_bar_T: float) -> Tensor:
    """The generator's output from its eps at T (same formula as inference: lorad.onestep)."""
    return predict_x0(z.float(), eps_student.float(), alpha_bar_T)


def noisy(x0: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """q(x_t | x0) with a per-sample abar_t [B]."""
    ab = _b(alpha_bar, x0)
    return torch.sqrt(ab) * x0 + torch.sqrt(1 - ab) * noise


def vsd_direction(eps_teacher: Tensor, eps_fake: Tensor, alpha_bar: Tensor, weighting: str = "sigma2",
                  x0: Tensor | None = None, x_t: Tensor | None = None) -> Tensor:
    """The student's update direction in x0 space, non-finite entries zeroed (as the official code does).

    ``sigma2`` (the paper's VSD): g = (1 - abar_t)(eps_teacher - eps_fake).
    ``dmd`` (DMD's weighting, beyond the paper): the same difference as x0 predictions,
    g = (x0_fake - x0_teacher) / mean|x0 - x0_teacher|, per sample: every t and every sample
    gets a step of the same size, where (1 - abar_t) gives low-noise t (fine detail) almost none.
    """
    diff = eps_teacher.float() - eps_fake.float()
    if weighting == "sigma2":
        g = _b(1 - alpha_bar, eps_teacher) * diff
    elif weighting == "dmd":
        if x0 is None or x_t is None:
            raise ValueError("vsd_direction: weighting 'dmd' needs x0 and x_t")
        a, s = torch.sqrt(_b(alpha_bar, diff)), torch.sqrt(_b(1 - alpha_bar, diff))
        x0_teacher = (x_t.float() - s * eps_teacher.float()) / a
        norm = (x0.float() - x0_teacher).abs().mean(dim=tuple(range(1, diff.dim())), keepdim=True)
        g = (s / a) * diff / norm.clamp_min(1e-6)
    else:
        raise ValueError(f"vsd_direction: unknown weighting {weighting!r}; expected 'sigma2' or 'dmd'")
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def student_loss(x0: Tensor, g: Tensor) -> Tensor:
    """0.5 * MSE(x0, sg(x0 - g)): its gradient w.r.t. x0 is exactly g / x0.numel()."""
    target = (x0 - g).detach()
    return 0.5 * F.mse_loss(x0.float(), target.float(), reduction="mean")


def fake_loss(eps_pred: Tensor, noise: Tensor, alpha_bar: Tensor, weighting: str = "alpha_bar") -> Tensor:
    """The fake score's denoising loss.

    ``alpha_bar`` (the official code): eps-MSE weighted by abar_t, MSE(sqrt(abar) eps_pred, sqrt(abar) noise).
    At t = 999 that weight is 0.005, so the fake barely learns the high t where the student's VSD
    direction has its largest weight (1 - abar_t).  ``uniform`` (beyond the paper; DMD2 trains its
    fake with the plain denoising loss): the plain eps-MSE, every t weighted alike.
    """
    if weighting == "uniform":
        return F.mse_loss(eps_pred.float(), noise.float(), reduction="mean")
    if weighting != "alpha_bar":
        raise ValueError(f"fake_loss: unknown weighting {weighting!r}; expected 'alpha_bar' or 'uniform'")
    s = torch.sqrt(_b(alpha_bar, eps_pred))
    return F.mse_loss(s * eps_pred.float(), s * noise.float(), reduction="mean")
