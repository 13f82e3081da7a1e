"""Exact timestep planning of the WaDi Sampler (no ComfyUI rounding) and the schedule values."""

from __future__ import annotations

import math

import pytest
import torch
from wadi_lorad.lorad.onestep import scaled_linear_alphas_cumprod, sigma_of
from wadi_lorad.nodes import onestep_plan


def test_full_denoise_uses_the_students_timesteps():
    assert onestep_plan.plan_timesteps(1, 999) == [999.0]
    assert onestep_plan.plan_timesteps(2, 999) == [999.0, 499.0]
    assert onestep_plan.plan_timesteps(4, 999) == [999.0, 749.0, 499.0, 249.0]


@pytest.mark.parametrize("denoise", [0.99, 0.75, 0.6, 0.45, 0.3])
def test_partial_denoise_is_exact_not_quantised(denoise):
    # ComfyUI's KSampler at steps=1 maps 0.6-0.99 to t=999 and 0.45 to t=499; we start at denoise*T.
    assert onestep_plan.plan_timesteps(1, 999, denoise) == [denoise * 999]
    two = onestep_plan.plan_timesteps(2, 999, denoise)
    assert two == [denoise * 999, denoise * 999 / 2]


@pytest.mark.parametrize("bad", [(0, 999, 1.0), (5, 999, 1.0), (1, 999, 0.0), (1, 999, 1.5)])
def test_bad_plans_are_refused(bad):
    with pytest.raises(ValueError):
        onestep_plan.plan_timesteps(*bad)


def test_schedule_recomputed_in_float64_from_comfy_sigmas():
    ac = scaled_linear_alphas_cumprod()
    sigmas32 = ((1 - ac) / ac).sqrt().float()  # what ComfyUI's ModelSamplingDiscrete stores
    got = onestep_plan.schedule_alphas_cumprod(sigmas32, 0.00085, 0.012)
    assert got.dtype == torch.float64 and torch.equal(got, ac)
    assert abs(float(got[999]) - 0.0046601) < 5e-8  # the true abar_999 of SD's schedule, not the rounded 0.0047
    other = onestep_plan.schedule_alphas_cumprod(sigmas32 * 1.01, 0.00085, 0.012)  # not that schedule: fall back
    assert torch.allclose(other, 1 / (1 + (sigmas32.double() * 1.01) ** 2))


def test_sigma_table_uses_metadata_alpha_bar_for_the_first_step_only():
    ac = scaled_linear_alphas_cumprod()
    table = onestep_plan.sigma_table([999.0, 499.0], ac, 0.0047)
    (t0, ab0, s0), (t1, ab1, s1) = table
    assert (t0, ab0) == (999.0, 0.0047) and s0 == float(torch.tensor(sigma_of(0.0047), dtype=torch.float32))
    assert ab1 == float(ac[499]) and t1 == 499.0
    assert onestep_plan.first_alpha_bar(0.5, 0.0047) is None and onestep_plan.first_alpha_bar(1.0, 0.0047) == 0.0047
    # the UNet input: x_t * sqrt(1 + s^2) / sqrt(1 + s^2) = x_t, and 1/sqrt(abar) = sqrt(1+sigma^2)
    assert math.isclose(onestep_plan.k_scale(s0), 1 / math.sqrt(0.0047), rel_tol=1e-7)


def test_user_timesteps():
    assert onestep_plan.parse_timesteps("") is None and onestep_plan.parse_timesteps("  ") is None
    assert onestep_plan.parse_timesteps("999, 749.5") == [999.0, 749.5]
    for bad in ["999, 999", "500, 700", "0", "1000", "a,b", "999,800,600,400,200"]:
        with pytest.raises(ValueError):
            onestep_plan.parse_timesteps(bad)
    # the student's alpha_bar_T only for a full denoise starting at its own timestep
    assert onestep_plan.first_alpha_bar(1.0, 0.0047, 999.0, 999.0) == 0.0047
    assert onestep_plan.first_alpha_bar(1.0, 0.0047, 899.0, 999.0) is None
    assert onestep_plan.first_alpha_bar(0.5, 0.0047, 999.0, 999.0) is None
