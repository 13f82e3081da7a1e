"""``wadi eval``: tiny-world metrics (alignment, FD) of a model folder or of reference image sets.

Usage::

    wadi eval --mode multistep --steps 25 --guidance 3     # the shipped teacher, 25-step DDIM + CFG
    wadi eval --mode onestep                               # its x0 prediction at t=999 (one step)
    wadi eval --mode real|shuffled|noise|vae               # sanity references of the metric itself
    wadi eval --baselines --out baselines.json             # all of the above in one table
    wadi eval --mode onestep --lorad student.lorad.safetensors --out student.json   # a distilled student

Every mode uses the same fixed prompt set (``fixed_eval_prompts``) and, for
generators, the same initial noise per seed (``eval_noise``), so numbers of
different methods are comparable image for image.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..lorad.fsutil import atomic_write_text
from .tinyworld import metrics
from .tinyworld.data import render_prompts, step_generator

Generator = Callable[[list[str], int], Tensor]


# -- generators (images in [0, 1] for prompts at an eval seed) ------------------------------------
@torch.no_grad()
def encode_prompts(pipe: Any, prompts: list[str]) -> Tensor:
    """Text embeddings exactly as StableDiffusionPipeline computes them (no attention mask)."""
    embeds, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
    return embeds


@torch.no_grad()
def decode_latents(pipe: Any, latents: Tensor) -> Tensor:
    images = pipe.vae.decode(latents.to(pipe.device) / pipe.vae.config.scaling_factor).sample
    return ((images.float().cpu() + 1) / 2).clamp(0, 1)


def multistep_generator(pipe: Any, steps: int = 25, guidance: float = 3.0, scheduler: str = "ddim",
                        batch: int = 128) -> Generator:  # fmt: skip
    """The teacher through ``StableDiffusionPipeline.__call__`` (DDIM eta=0 by default, CFG on eps)."""
    if scheduler == "ddim":
        from diffusers import DDIMScheduler

        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    elif scheduler != "default":
        raise ValueError(f"scheduler {scheduler!r}: expected 'ddim' or 'default' (the folder's own)")
    pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def generate(prompts: list[str], seed: int) -> Tensor:
        shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        noise = metrics.eval_noise(len(prompts), seed, shape)
        out = []
        for i in range(0, len(prompts), batch):
            # The pipeline scales given latents by the scheduler's init_noise_sigma itself.
            latents = noise[i : i + batch].to(pipe.device)
            res = pipe(prompts[i : i + batch], latents=latents,
                       num_inference_steps=steps, guidance_scale=guidance, output_type="pt")  # fmt: skip
            out.append(res.images.float().cpu())
        return torch.cat(out)

    return generate


def onestep_generator(pipe: Any, guidance: float = 1.0, timestep: int = 999, batch: int = 256,
                      alpha_bar: float | None = None) -> Generator:
    """x0 = (z - sqrt(1-abar_T) eps(z, T)) / sqrt(abar_T) from pure noise: what WaDi's student learns to do.

    ``alpha_bar`` None takes abar_T from the schedule at ``timestep``.
    """
    from ..lorad.onestep import generate as onestep

    ac = pipe.scheduler.alphas_cumprod

    @torch.no_grad()
    def generate(prompts: list[str], seed: int) -> Tensor:
        shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
        noise = metrics.eval_noise(len(prompts), seed, shape).to(pipe.device)
        out = []
        for i in range(0, len(prompts), batch):
            cond = encode_prompts(pipe, prompts[i : i + batch])
            uncond = encode_prompts(pipe, [""] * cond.shape[0])

            def eps_fn(x: Tensor, t: int, cond: Tensor = cond, uncond: Tensor = uncond) -> Tensor:
                tt = torch.full((x.shape[0],), t, device=x.device)
                if guidance == 1.0:
                    return pipe.unet(x, tt, cond).sample
                e_u, e_c = pipe.unet(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, cond])).sample.chunk(2)
                return e_u + guidance * (e_c - e_u)

            x0 = onestep(eps_fn, noise[i : i + batch], ac, timesteps=(timestep,), alpha_bar_first=alpha_bar)
            out.append(decode_latents(pipe, x0))
        return torch.cat(out)

    return generate


def real_generator() -> Generator:
    """Fresh real renders of the prompts (another draw than the FD reference)."""
    return lambda prompts, seed: render_prompts(prompts, seed=10_000 + seed)


def noise_generator() -> Generator:
    return lambda prompts, seed: torch.rand((len(prompts), 3, 32, 32), generator=step_generator(seed, "eval-noise", 1))


def vae_roundtrip_generator(pipe: Any) -> Generator:
    """Real renders encoded and decoded by the VAE: the ceiling for anything decoded by it."""

    @torch.no_grad()
    def generate(prompts: list[str], seed: int) -> Tensor:
        x = render_prompts(prompts, seed=10_000 + seed).to(pipe.device)
        z = pipe.vae.encode(x * 2 - 1).latent_dist.mode() * pipe.vae.config.scaling_factor
        return decode_latents(pipe, z)

    return generate


def shuffled_evaluation(prompts: list[str], seeds: list[int], classifier: Path | None) -> dict[str, Any]:
    """Real images scored against a derangement of their prompts: alignment must collapse."""
    shifted = prompts[1:] + prompts[:1]
    per_seed = [metrics.evaluate_images(render_prompts(prompts, seed=10_000 + s), shifted, classifier) for s in seeds]
    return {"per_seed": per_seed, "summary": metrics.summarize(per_seed), "seeds": seeds, "n_prompts": len(prompts)}


# -- CLI ------------------------------------------------------------------------------------------
def run_mode(mode: str, args: argparse.Namespace, prompts: list[str], pipe: Any,
             one_step: tuple[int, float | None] = (999, None)) -> dict[str, Any]:
    """Score one generator; ``one_step`` is the one-step mode's (timestep, abar_T or None = the schedule's)."""
    seeds = list(args.seeds)
    if mode == "shuffled":
        return shuffled_evaluation(prompts, seeds, args.classifier)
    gens: dict[str, Callable[[], Generator]] = {
        "real": real_generator,
        "noise": noise_generator,
        "vae": lambda: vae_roundtrip_generator(pipe),
        "multistep": lambda: multistep_generator(pipe, args.steps, args.guidance, args.scheduler),
        "onestep": lambda: onestep_generator(pipe, args.guidance if args.onestep_cfg else 1.0, one_step[0],
                                             alpha_bar=one_step[1]),
    }
    if mode not in gens:
        raise ValueError(f"--mode {mode!r}: expected one of {sorted(gens) + ['shuffled']}")
    return metrics.evaluate_generator(gens[mode](), prompts, seeds, args.classifier)


BASELINES: list[tuple[str, str, dict[str, Any]]] = [
    ("real renders", "real", {}),
    ("real, shuffled prompts", "shuffled", {}),
    ("uniform noise", "noise", {}),
    ("VAE round trip", "vae", {}),
    ("teacher 25-step DDIM, CFG 1.5", "multistep", {"steps": 25, "guidance": 1.5}),
    ("teacher 25-step DDIM, CFG 3", "multistep", {"steps": 25, "guidance": 3.0}),
    ("teacher 25-step DDIM, CFG 5", "multistep", {"steps": 25, "guidance": 5.0}),
    ("teacher 25-step DDIM, no CFG", "multistep", {"steps": 25, "guidance": 1.0}),
    ("teacher 1-step (x0 at t=999)", "onestep", {"onestep_cfg": False}),
    ("teacher 1-step, CFG 3", "onestep", {"onestep_cfg": True, "guidance": 3.0}),
]


def _main(args: argparse.Namespace) -> int:
    from .tinyworld.models import load_pipeline

    prompts = metrics.fixed_eval_prompts(args.n)
    one_step: tuple[int, float | None] = (999, None)  # t = 999 and the schedule's abar, unless a file says else
    needs_model = args.baselines or args.mode in ("multistep", "onestep", "vae")
    pipe = load_pipeline(Path(args.model)).to(args.device) if needs_model else None
    if args.lorad:
        if pipe is None:
            raise ValueError(f"--lorad applies to the model's UNet; mode {args.mode!r} uses no model")
        from ..lorad.bridge import load_adapter
        from ..lorad.inject import set_active
        from ..lorad.io import load_lorad

        f = load_lorad(args.lorad)
        load_adapter(pipe.unet, "student", f)  # the file's own layout, validated against this UNet
        set_active(pipe.unet, "student")
        if f.one_step is not None:  # sample the student as it was trained (vsd.timestep, abar_T)
            one_step = (f.one_step.timestep, float(f.one_step.alpha_bar_T))
    jobs = BASELINES if args.baselines else [(args.mode, args.mode, {})]
    # names only, no local paths: the JSON is meant to be shared (e.g. beside a shipped student)
    results: dict[str, Any] = {"model": Path(args.model).name, "lorad": Path(args.lorad).name if args.lorad else None,
                               "n_prompts": args.n, "seeds": list(args.seeds), "rows": {}}
    if one_step[1] is not None:
        results["one_step"] = {"timestep": one_step[0], "alpha_bar_T": one_step[1]}
    for label, mode, overrides in jobs:
        ns = argparse.Namespace(**{**vars(args), **overrides})
        t0 = time.perf_counter()
        res = run_mode(mode, ns, prompts, pipe, one_step)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        res["settings"] = {k: getattr(ns, k) for k in ("steps", "guidance", "scheduler")} if mode == "multistep" else {}
        results["rows"][label] = res
        s = res["summary"]
        print(f"{label:34s} alignment {s['alignment_mean']:.3f} ± {s['alignment_std']:.3f}   "
              f"FD {s['fd_mean']:8.3f} ± {s['fd_std']:.3f} (mean shift {s['fd_shift_mean']:.1f}, "
              f"spread {s['spread_mean']:.2f})   ({res['wall_s']} s)", flush=True)  # fmt: skip
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(results, indent=2))
    return 0


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects comma-separated integers, got {text!r}") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="tiny-world metrics: prompt alignment and Frechet distance",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", default=str(metrics.DEFAULT_TEACHER), help="diffusers SD folder (default: shipped teacher)")
    p.add_argument("--mode", default="multistep", help="multistep | onestep | real | shuffled | noise | vae")
    p.add_argument("--lorad", default="", help="a .lorad student/adapter applied to the model's UNet "
                   "(e.g. wadi eval --mode onestep --lorad student.lorad.safetensors)")
    p.add_argument("--baselines", action="store_true", help="evaluate the whole baseline table")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--onestep_cfg", action="store_true", help="apply --guidance in one-step mode too")
    p.add_argument("--scheduler", default="ddim", help="ddim | default (the folder's scheduler)")
    p.add_argument("--n", type=int, default=256, help="number of fixed eval prompts")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated eval seeds")
    p.add_argument("--classifier", type=Path, default=None, help="classifier weights (default: shipped)")
    p.add_argument("--out", default="", help="write the results JSON here")
    p.add_argument("--device", default="cpu", help="torch device for the generators (the classifier runs on CPU)")
    p.set_defaults(func=_main)
    return p
