"""One-step generation math shared by the trainer, ``wadi sample`` and the ComfyUI nodes.

WaDi's student maps pure noise ``z`` at ``t = T = 999`` to a clean latent with one
eps prediction::

    x0 = (z - sqrt(1 - abar_T) * eps(z, T)) / sqrt(abar_T)

``abar_T`` comes from the model's noise schedule (SD's scaled-linear schedule
gives 0.0046601 at t=999, what ComfyUI's samplers use); the official code
rounds it to 0.0047 (:data:`OFFICIAL_ALPHA_BAR_T`).  Either way the value used
is recorded in the ``.lorad`` metadata so inference matches training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "OFFICIAL_ALPHA_BAR_T",
    "DEFAULT_TIMESTEP",
    "scaled_linear_alphas_cumprod",
    "alpha_bar_at",
    "sigma_of",
    "predict_x0",
    "add_noise",
    "multistep_timesteps",
    "EpsFn",
    "generate",
]

OFFICIAL_ALPHA_BAR_T = 0.0047
DEFAULT_TIMESTEP = 999


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """SD's DDPM schedule (``beta_schedule="scaled_linear"``), float64 for exactness."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def alpha_bar_at(alphas_cumprod: Tensor, t: int | float) -> float:
    """``abar_t``; a fractional ``t`` interpolates log-sigma linearly (ComfyUI's convention)."""
    ac = alphas_cumprod.double()
    if float(t) == int(t):
        return float(ac[int(t)])
    lo, hi = int(math.floor(t)), int(math.ceil(t))
    w = float(t) - lo
    log_s = torch.log(((1 - ac) / ac) ** 0.5)
    s = torch.exp((1 - w) * log_s[lo] + w * log_s[hi])
    return float(1.0 / (1.0 + s**2))


def sigma_of(alpha_bar: float) -> float:
    """k-diffusion sigma of a DDPM level: ``sqrt((1 - abar) / abar)``."""
    return math.sqrt((1.0 - alpha_bar) / alpha_bar)


def predict_x0(z: Tensor, eps: Tensor, alpha_bar: float) -> Tensor:
    """``(z - sqrt(1 - abar) * eps) / sqrt(abar)``, computed in ``z``'s dtype."""
    return (z - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)


def add_noise(x0: Tensor, noise: Tensor, alpha_bar: float) -> Tensor:
    """Sample ``q(x_t | x0)``: ``sqrt(abar) x0 + sqrt(1 - abar) noise``."""
    return math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * noise


def multistep_timesteps(steps: int, first: int = DEFAULT_TIMESTEP, num_train_timesteps: int = 1000) -> list[int]:
    """Re-noising schedule for 1-4 step use of a one-step model.

    Evenly spaced from ``first`` down (999, 499 for 2 steps; 999, 666, 333 for 3;
    999, 749, 499, 249 for 4), the same points ComfyUI's ``simple`` scheduler visits.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [first - int(i * num_train_timesteps / steps) for i in range(steps)]


# Steps 2-4 re-noise with fresh noise: image j's re-noise before step i+1 (i = 1, 2, ...) is drawn from a CPU
# generator seeded ``seeds[j] + RENOISE_SEED_STRIDE * i``.  One rule for `wadi sample` and the WaDi Sampler node,
# so the same seed gives the same few-step image in both; the stride keeps it apart from the next image's seed.
RENOISE_SEED_STRIDE = 10_000


def renoise_noise(seeds: Sequence[int], shape: Sequence[int], steps: int, dtype: torch.dtype = torch.float32
                  ) -> list[Tensor]:
    """The ``steps - 1`` re-noise tensors (batch ``len(seeds)`` x ``shape``) that :func:`generate` takes."""
    return [
        torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(int(s) + RENOISE_SEED_STRIDE * i),
                                 dtype=dtype) for s in seeds])
        for i in range(1, steps)
    ]


# eps_fn(x_t, t) -> eps prediction; the caller binds conditioning, CFG and the model.
EpsFn = Callable[[Tensor, int], Tensor]


def generate(
    eps_fn: EpsFn,
    noise: Tensor,
    alphas_cumprod: Tensor,
    timesteps: Sequence[int] = (DEFAULT_TIMESTEP,),
    alpha_bar_first: float | None = None,
    renoise: Sequence[Tensor] | None = None,
    start_latent: Tensor | None = None,
) -> Tensor:
    """One-step (or few-step) generation: THE function the trainer, ``wadi sample`` and nodes share.

    Step 1 evaluates the model at ``timesteps[0]`` on ``x_t``: pure ``noise`` for
    txt2img, or ``add_noise(start_latent, noise)`` for img2img/hires refinement.
    Each later step re-noises the current x0 to ``timesteps[i]`` with
    ``renoise[i-1]`` (fresh noise) and predicts again (consistency-style).
    ``alpha_bar_first`` overrides the schedule's value at ``timesteps[0]`` (e.g. the
    official 0.0047 the model was distilled with); later steps use the schedule.
    """
    steps = list(timesteps)
    if renoise is not None and len(renoise) < len(steps) - 1:
        raise ValueError(f"need {len(steps) - 1} re-noise tensors for {len(steps)} steps, got {len(renoise)}")
    x0 = None
    for i, t in enumerate(steps):
        ab = alpha_bar_first if (i == 0 and alpha_bar_first is not None) else alpha_bar_at(alphas_cumprod, t)
        if i == 0:
            x_t = noise if start_latent is None else add_noise(start_latent, noise, ab)
        else:
            fresh = renoise[i - 1] if renoise is not None else torch.randn_like(noise)
            x_t = add_noise(x0, fresh, ab)
        x0 = predict_x0(x_t, eps_fn(x_t, t), ab)
    return x0
