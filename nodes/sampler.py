"""WaDi Sampler: one step exactly as distilled (1-4 with re-noising), exact ``denoise``.

The math is ``lorad.onestep.generate`` (shared with the trainer and ``wadi sample``).
Its ``eps_fn`` goes through ComfyUI's sampling stack (``comfy.sample.sample_custom``
with a custom KSAMPLER), so CFG, ControlNet, model patches, LoRAs and lowvram all
apply.  ComfyUI derives the UNet timestep from sigma by rounding to the nearest
training step; a model_sampling object patch pins our sigmas to the exact
(possibly fractional) timesteps instead.
"""

from __future__ import annotations

import copy

import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import torch

from ..lorad.onestep import generate, renoise_noise
from .lorad_file import OneStep
from .onestep_plan import (
    MAX_STEPS,
    first_alpha_bar,
    k_scale,
    parse_timesteps,
    plan_timesteps,
    schedule_alphas_cumprod,
    sigma_table,
)
from .v3 import CATEGORY, OneStepType, io


class _PinnedTimestep:
    """``model_sampling.timestep`` that maps our exact float32 sigmas to exact timesteps."""

    def __init__(self, base_timestep, table: list[tuple[float, float]]):
        self.base = base_timestep
        self.table = table  # (sigma32, t)

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        out = self.base(sigma).float()
        for s, t in self.table:
            out = torch.where(sigma == s, torch.full_like(out, t), out)
        return out


_PINNED = "_wadi_pinned_clone"


def pinned_model(model, table: list[tuple[float, float, float]]):
    """Clone of ``model`` whose model_sampling evaluates our sigmas at our timesteps.

    One clone per incoming MODEL, kept on it and reused with a new table each run: a fresh
    clone every run would make ComfyUI unpatch and re-patch every weight (LoRaD rotations
    included) on each prompt, and two WaDi Samplers on one model (hires) would alternate.
    """
    pins = [(s, t) for t, _ab, s in table]
    cached = getattr(model, _PINNED, None)
    if cached is None:
        base = model.get_model_object("model_sampling")
        ms = copy.copy(base)  # shares the schedule buffers; only ``timestep`` differs
        ms.timestep = _PinnedTimestep(base.timestep, pins)
        clone = model.clone()
        clone.add_object_patch("model_sampling", ms)
        cached = (clone, ms.timestep)
        setattr(model, _PINNED, cached)
    clone, pinned = cached
    pinned.table = pins
    return clone, pinned


def check_prediction(ms, onestep: OneStep | None) -> None:
    """Refuse an eps-distilled student on a v-prediction model (or vice versa): the output would be noise."""
    if onestep is None:
        return
    kind = "v_prediction" if isinstance(ms, comfy.model_sampling.V_PREDICTION) else (
        "epsilon" if isinstance(ms, comfy.model_sampling.EPS) else None
    )
    want = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}.get(
        onestep.prediction_type.lower()
    )
    if kind and want and kind != want:
        raise ValueError(
            f"the LoRaD student was distilled for {want} but the model samples as {kind}; "
            "use the matching base checkpoint (or ComfyUI's ModelSamplingDiscrete node to set it)"
        )


def wadi_sample(model, positive, negative, latent: dict, seed: int, steps: int, cfg: float, denoise: float,
                onestep: OneStep | None, timesteps: list[float] | None = None) -> dict:
    base_ms = model.get_model_object("model_sampling")
    # Only settings that came from a file are checked: the default (no ONESTEP connected) claims no
    # prediction type, so a v-prediction base (SD2.1 768-v) samples without a student too.
    check_prediction(base_ms, onestep)
    onestep = onestep or OneStep()
    ts = timesteps or plan_timesteps(steps, onestep.timestep, denoise)
    ac = schedule_alphas_cumprod(base_ms.sigmas, getattr(base_ms, "linear_start", None), getattr(base_ms, "linear_end", None))
    ab_first = first_alpha_bar(denoise, onestep.alpha_bar, ts[0], onestep.timestep)
    table = sigma_table(ts, ac, ab_first)
    pinned, _ = pinned_model(model, table)  # table set for this run (nodes run one at a time)

    latent_image = comfy.sample.fix_empty_latent_channels(pinned, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    # fresh noise for steps 2-4: image j of the batch as `wadi sample --seed <seed + j>` would draw it
    renoise = renoise_noise([seed + j for j in range(noise.shape[0])], noise.shape[1:], len(ts), noise.dtype)
    sigma_of_t = {t: s for t, _ab, s in table}
    pbar = comfy.utils.ProgressBar(len(ts))

    def sampler_fn(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        s_in = x.new_ones([x.shape[0]])

        def eps_fn(x_t, t):
            s = sigma_of_t[t]
            x_k = x_t * k_scale(s)  # ComfyUI divides by sqrt(1+sigma^2): the UNet sees x_t
            denoised = model_k(x_k, s * s_in, **extra_args)
            pbar.update(1)
            return (x_k - denoised) / s  # eps for EPS and V models alike

        start = model_k.latent_image if denoise < 1.0 else None
        dev = [r.to(x.device, x.dtype) for r in renoise]
        return generate(eps_fn, model_k.noise.to(x.dtype), ac, ts, ab_first, renoise=dev, start_latent=start)

    sigmas = torch.tensor([s for _t, _ab, s in table] + [0.0], dtype=torch.float32)
    neg = negative if negative is not None else positive
    samples = comfy.sample.sample_custom(
        pinned, noise, cfg, comfy.samplers.KSAMPLER(sampler_fn), sigmas, positive, neg, latent_image,
        noise_mask=latent.get("noise_mask"), disable_pbar=True, seed=seed,
    )
    out = latent.copy()
    out["samples"] = samples
    return out


class WaDiSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="WaDiSampler",
            display_name="WaDi Sampler",
            category=CATEGORY,
            description="One UNet evaluation at the student's timestep (1-4 steps with re-noising). "
            "denoise < 1 starts exactly at t = denoise * T (img2img / hires refine), with no rounding.",
            inputs=[
                io.Model.Input("model", tooltip="the student (WaDi Checkpoint Loader or Load LoRaD)"),
                io.Conditioning.Input("positive", tooltip="the prompt"),
                io.Latent.Input("latent_image", tooltip="an empty latent (sets the size), or the latent to refine "
                                "when denoise < 1"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="the noise; steps 2-4 re-noise from seed + 10000 * step (as `wadi sample`)"),
                io.Int.Input("steps", default=1, min=1, max=MAX_STEPS, tooltip="1 = the distilled one step"),
                io.Float.Input("cfg", default=1.0, min=1.0, max=30.0, step=0.1, round=0.01,
                               tooltip="1 = off (as distilled); > 1 needs a negative"),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="< 1: start at t = denoise * T from the input latent"),
                io.Conditioning.Input("negative", optional=True, tooltip="used only with cfg > 1"),
                OneStepType.Input("onestep", optional=True, tooltip="from Load LoRaD / WaDi Checkpoint Loader"),
                io.String.Input("timesteps", default="", optional=True,
                                tooltip="optional: your own 1-4 timesteps, e.g. '999, 749' (overrides steps and the "
                                "denoise spacing; with denoise < 1 the first one is where the input latent is noised to)"),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="the denoised latent (x0): connect to VAE Decode")],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, seed, steps, cfg, denoise, negative=None, onestep=None,
                timesteps="") -> io.NodeOutput:
        if cfg > 1.0 and negative is None:
            raise ValueError("WaDi Sampler: cfg > 1 needs a negative conditioning")
        ts = parse_timesteps(timesteps)
        out = wadi_sample(model, positive, negative, latent_image, seed, steps, cfg, denoise, onestep, ts)
        return io.NodeOutput(out)
