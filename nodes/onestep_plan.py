"""Pure timestep/sigma planning for the WaDi Sampler (torch only, no ComfyUI).

ComfyUI's KSampler picks timesteps from a sigma schedule and, at ``steps=1``,
quantises ``denoise`` (0.6-0.99 silently become a full denoise from t=999).  The
WaDi Sampler instead states the timesteps: the student's own ``T`` (and its
alpha_bar_T) for txt2img, and ``denoise * T`` exactly for img2img/hires.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..lorad.onestep import alpha_bar_at, multistep_timesteps, scaled_linear_alphas_cumprod, sigma_of

MAX_STEPS = 4


def plan_timesteps(steps: int, first_t: float, denoise: float = 1.0) -> list[float]:
    """Timesteps visited: ``multistep_timesteps`` from ``T`` for a full denoise, else from ``denoise * T``.

    A partial denoise spaces the later steps evenly down from ``t0 = denoise * T``
    (``t0 * (steps - i) / steps``), with no rounding anywhere.
    """
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be 1..{MAX_STEPS}, got {steps}")
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    if denoise == 1.0:
        if float(first_t).is_integer():
            return [float(t) for t in multistep_timesteps(steps, int(first_t))]
        return [first_t * (steps - i) / steps for i in range(steps)]
    t0 = denoise * first_t
    return [t0 * (steps - i) / steps for i in range(steps)]


def parse_timesteps(text: str, num_train_timesteps: int = 1000) -> list[float] | None:
    """User-chosen timesteps, e.g. ``"999, 749"``: 1-4 values, strictly decreasing, in (0, T]."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        ts = [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"timesteps {text!r}: expected comma-separated numbers like '999, 749'") from None
    if not 1 <= len(ts) <= MAX_STEPS:
        raise ValueError(f"timesteps {text!r}: give 1 to {MAX_STEPS} values, got {len(ts)}")
    if any(not 0 < t <= num_train_timesteps - 1 for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps {text!r}: values must be strictly decreasing and in (0, {num_train_timesteps - 1}]")
    return ts


def schedule_alphas_cumprod(sigmas: Tensor, linear_start: float | None, linear_end: float | None) -> Tensor:
    """alpha_bar per training step in float64.

    ComfyUI keeps the schedule as float32 sigmas; where they come from SD's
    scaled-linear betas we recompute that schedule in float64 (what diffusers and
    the trainer use), otherwise fall back to ``1 / (1 + sigma^2)``.
    """
    sig = sigmas.detach().double().cpu()
    if linear_start is not None and linear_end is not None:
        ac = scaled_linear_alphas_cumprod(len(sig), linear_start, linear_end)
        if torch.equal(((1 - ac) / ac).sqrt().float(), sigmas.detach().float().cpu()):
            return ac
    return 1.0 / (1.0 + sig**2)


def first_alpha_bar(denoise: float, metadata_alpha_bar: float | None, first_t: float | None = None,
                    student_t: float | None = None) -> float | None:
    """The student's alpha_bar_T applies to a full denoise from its own timestep only;
    anything else (partial denoise, other start) uses the schedule."""
    if denoise != 1.0 or (first_t is not None and student_t is not None and first_t != student_t):
        return None
    return metadata_alpha_bar


def sigma_table(
    timesteps: list[float], alphas_cumprod: Tensor, alpha_bar_first: float | None
) -> list[tuple[float, float, float]]:
    """``(t, alpha_bar, sigma as an exact float32 value)`` for each visited timestep."""
    out = []
    for i, t in enumerate(timesteps):
        ab = alpha_bar_first if (i == 0 and alpha_bar_first is not None) else alpha_bar_at(alphas_cumprod, t)
        s32 = float(torch.tensor(sigma_of(ab), dtype=torch.float32))
        out.append((t, ab, s32))
    return out


def k_scale(sigma32: float) -> float:
    """k-diffusion input scale ``sqrt(1 + sigma^2)`` (= 1/sqrt(alpha_bar))."""
    return math.sqrt(1.0 + sigma32 * sigma32)
