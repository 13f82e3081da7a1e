"""GPU check of the WaDi trainer: mixed precision, export round trip, and the paper-size step cost.

Usage (on a CUDA machine): python bench/distill_gpu_check.py [--out DIR] [--smoke]

1. fp16 and bf16 runs on a tiny random-init SD folder (frozen weights in half precision,
   LoRaD angles fp32, gradient checkpointing, EMA, 8-bit Adam requested): finite losses,
   fp32 adapter parameters, and the exported .lorad reproduces the student's one-step output.
2. One VSD step (student + teacher CFG + fake CFG + fake update) of a full-size, random-init
   SD1.5 UNet (860M) at the paper's per-GPU batch 16, 64x64 latents, ranks 256/32, bf16:
   seconds per step and peak GPU memory for the LoRaD, LoRA and full fine-tune students.
``--smoke`` shrinks everything so the script can be checked on a CPU first.
Prints a report and writes it as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models: the tests' tiny random-init folders


def _bootstrap() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_wadi_bootstrap", ROOT / "_bootstrap.py")
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)
    boot.register()


def mixed_precision_runs(work: Path, smoke: bool) -> dict:
    from tiny_models import WORDS, build_tiny
    from wadi_lorad.lorad import inject
    from wadi_lorad.trainer.backbones import load_backbone
    from wadi_lorad.trainer.cmd_sample import load_student
    from wadi_lorad.trainer.config import DistillConfig, apply_overrides
    from wadi_lorad.trainer.distill import Distiller
    from wadi_lorad.trainer.sampling import one_step, seeded_noise

    base = build_tiny(work / "tiny-sd", "sd")
    prompts = work / "p.txt"
    prompts.write_text("\n".join(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(4)) for i in range(32)))
    out = {}
    for mp in ("fp16", "bf16"):
        notes: list[str] = []
        cfg = apply_overrides(DistillConfig(), [
            ("model.base", str(base)), ("data.prompts", str(prompts)), ("output.dir", str(work / mp)),
            ("train.mixed_precision", mp), ("train.gradient_checkpointing", "true"), ("train.ema_decay", "0.9"),
            ("optim.adam_8bit", "true"), ("adapter.student_rank", "8"), ("adapter.fake_rank", "4"),
            ("train.batch_size", "4"), ("train.max_steps", "6"), ("vsd.fake_guidance_scale", "1.0"),
            ("output.sample_every", "3"), ("output.checkpoint_every", "3"),
        ])
        d = Distiller(cfg, progress=False, log=lambda *a, notes=notes: notes.append(" ".join(map(str, a))))
        res = d.run()
        from wadi_lorad.trainer.events import read_events

        steps = [e for e in read_events(work / mp / "events.jsonl") if e["event"] == "step"]
        base_dtype = str(next(d.bb.denoiser.parameters()).dtype)
        adapter_dtypes = sorted({str(p.dtype) for p in d.views.student.parameters() + d.views.fake.parameters()})
        noise = seeded_noise([1, 2], d.latent).to(d.acc.device)
        cond = d.sample_cond.index(slice(0, 2))
        with d.ema.applied(), d.views.student_view() as m, d.acc.autocast():
            ref = one_step(d.bb, m, cond, noise, d.settings.alpha_bar_T).float()
        bb2 = load_backbone(base, dtype=mp, text=False, vae=False).to(d.acc.device)
        load_student(bb2, res["student"])
        inject.set_active(bb2.denoiser, "student")
        with d.acc.autocast():
            got = one_step(bb2, bb2.denoiser, cond, noise, d.settings.alpha_bar_T).float()
        out[mp] = {
            "device": str(d.acc.device), "base_dtype": base_dtype, "adapter_dtypes": adapter_dtypes,
            "losses_finite": all(e["loss_student"] is not None and e["loss_fake"] is not None for e in steps),
            "last_losses": [steps[-1]["loss_student"], steps[-1]["loss_fake"]],
            "grad_scaler": d.scalers[0] is not None, "notes": notes[-3:],
            "export_max_abs_diff": float((got - ref).abs().max()), "ref_max_abs": float(ref.abs().max()),
        }
    return out


def _full_size_unet(smoke: bool):
    from diffusers import UNet2DConditionModel
    from wadi_lorad.lorad.archs import load_config

    cfg = {k: v for k, v in load_config("sd15", "unet").items() if not k.startswith("_")}
    if smoke:
        cfg.update(block_out_channels=[32, 64, 64, 64], cross_attention_dim=64, attention_head_dim=4,
                   norm_num_groups=8)
    return UNet2DConditionModel(**cfg)


def full_size_steps(kinds: list[str], smoke: bool, steps: int) -> dict:
    """Seconds per VSD step and peak memory of a paper-size SD1.5 setting, per student kind."""
    from wadi_lorad.lorad.onestep import scaled_linear_alphas_cumprod
    from wadi_lorad.trainer.adapters import build_views
    from wadi_lorad.trainer.backbones import Backbone, TextCond
    from wadi_lorad.trainer.config import AdapterConfig
    from wadi_lorad.trainer.step import StepSettings, draw_batch, micro_step

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, side, ctx = (2, 8, 64) if smoke else (16, 64, 768)
    ranks = (8, 4) if smoke else (256, 32)
    results = {}
    for kind in kinds:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with torch.device(dev):
            unet = _full_size_unet(smoke)
        unet.to(torch.bfloat16 if dev.type == "cuda" else torch.float32)
        base_params = sum(p.numel() for p in unet.parameters())
        unet.enable_gradient_checkpointing()
        views = build_views(unet, AdapterConfig(kind=kind, student_rank=ranks[0], fake_rank=ranks[1]))
        views.student_module.to(dev)
        if kind == "full":
            views.student_module.enable_gradient_checkpointing()
        sched = {"num_train_timesteps": 1000, "prediction_type": "epsilon"}
        bb = Backbone(Path("."), "sd", {}, unet, None, [], sched, scaled_linear_alphas_cumprod(), "epsilon", 8)
        params = views.student.parameters() + views.fake.parameters()
        opt = torch.optim.AdamW(params, lr=1e-5)
        s = StepSettings(999, 0.0046601, 1.5, 1.5, (20, 980), (0, 999), 0.1)
        gen = torch.Generator().manual_seed(0)
        cond = TextCond(torch.randn(batch, 77, ctx, device=dev))
        null = TextCond(torch.randn(1, 77, ctx, device=dev))

        def autocast():
            return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

        times = []
        for i in range(steps + 2):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            b = draw_batch(gen, batch, batch, (4, side, side), s).to(dev)
            micro_step(bb, views, b, cond, null, s, autocast)
            torch.nn.utils.clip_grad_norm_(views.student.parameters(), 1.0)
            torch.nn.utils.clip_grad_norm_(views.fake.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        results[kind] = {
            "step_s": sum(times) / len(times), "student_params": views.student.num_params(),
            "fake_params": views.fake.num_params(), "base_params": base_params,
            "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None,
        }
        del views, unet, opt, bb
    return results


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gpu_check")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--kinds", default="lorad,lora,full")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    _bootstrap()
    report = {"torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report["mixed_precision"] = mixed_precision_runs(Path(tmp), args.smoke)
        report["mixed_precision_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    report["full_size_sd15_step"] = full_size_steps(args.kinds.split(","), args.smoke, args.steps)
    report["full_size_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
