"""``wadi demo``: WaDi distillation of the shipped tiny-world teacher, end to end, on a CPU.

Steps: write the domain prompts -> distill (LoRaD student + LoRaD fake over one
frozen teacher) -> generate the fixed evaluation prompts three ways with the
same seeds (teacher 1-step, teacher 25-step CFG, WaDi 1-step) -> score them with
the tiny world's classifier (alignment accuracy, Frechet distance) -> write
``outputs/demo/`` and print a plain-language summary.

The tiny world is 32x32 pixels (8x8 latents) with a ~4M-parameter UNet, so the
paper's ranks 256/32 would exceed most layers' widths; the demo uses ranks that
fit (see :data:`DEMO_OVERRIDES`) and says so in the summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import DistillConfig, apply_overrides

ROOT = Path(__file__).resolve().parent.parent
TEACHER = ROOT / "assets" / "tinyworld" / "teacher"

# Tiny-world settings (everything else is the paper's default: lrs 1e-4 / 1e-2, CFG 1.5,
# t ~ U{20..980}, abar_T from the scheduler, AdamW, clip 1.0).
DEMO_OVERRIDES: dict[str, str] = {
    "adapter.student_rank": "32",
    "adapter.fake_rank": "8",
    "train.batch_size": "16",
    "train.max_steps": "300",
    "output.checkpoint_every": "100",
    "output.sample_every": "100",
    "output.num_samples": "8",
}


@dataclass
class DemoSettings:
    out: Path = Path("outputs/demo")
    base: Path = TEACHER
    steps: int = 300
    num_prompts: int = 2000
    eval_seeds: int = 2  # images per evaluation prompt (one seed each)
    teacher_steps: int = 25
    teacher_cfg: float = 3.0
    seed: int = 0
    overrides: list[tuple[str, str]] = field(default_factory=list)


def _tinyworld():
    try:
        from . import tinyworld as tw

        return tw
    except ImportError as e:  # pragma: no cover - only before the tiny world is merged
        raise SystemExit(f"error: the tiny world package (trainer/tinyworld) is not available: {e}") from None


def demo_config(s: DemoSettings, prompts_file: Path) -> DistillConfig:
    pairs = list(DEMO_OVERRIDES.items()) + [
        ("model.base", str(s.base)), ("data.prompts", str(prompts_file)), ("output.dir", str(s.out / "run")),
        ("train.max_steps", str(s.steps)), ("train.seed", str(s.seed)), ("output.force", "true"),
        ("data.cache_dir", str(s.out / ".text_cache")), ("output.title", "WaDi tiny-world demo student"),
    ] + list(s.overrides)
    return apply_overrides(DistillConfig(), pairs)


@torch.no_grad()
def _generate_all(d, prompts: list[str], seeds: list[int], teacher_steps: int, teacher_cfg: float,
                  batch: int = 64) -> dict[str, torch.Tensor]:
    """Images [N,3,H,W] for the three methods, same prompts and seeds."""
    from tqdm.auto import tqdm

    from .sampling import one_step, seeded_noise, teacher_multistep

    bb, s = d.bb, d.settings
    out: dict[str, list[torch.Tensor]] = {"teacher_1step": [], f"teacher_{teacher_steps}step_cfg": [],
                                          "wadi_1step": []}
    cond_all = d.extra_cond  # encoded with the training prompts, before the encoders were released
    bar = tqdm(total=len(prompts), desc="evaluate: generate", unit="img")
    for i in range(0, len(prompts), batch):
        cond = cond_all.index(slice(i, i + batch)).to(d.acc.device)
        noise = seeded_noise(seeds[i: i + batch], d.latent).to(d.acc.device)
        null = d.null
        with d.views.teacher() as m:
            out["teacher_1step"].append(bb.decode(one_step(bb, m, cond, noise, s.alpha_bar_T, s.timestep,
                                                           null, teacher_cfg)))
            lat = teacher_multistep(bb, m, cond, null, noise, teacher_steps, teacher_cfg)
            out[f"teacher_{teacher_steps}step_cfg"].append(bb.decode(lat))
        with d.views.student_view() as m:
            out["wadi_1step"].append(bb.decode(one_step(bb, m, cond, noise, s.alpha_bar_T, s.timestep)))
        bar.update(len(cond))
    bar.close()
    return {k: torch.cat(v) for k, v in out.items()}


def run_demo(s: DemoSettings) -> dict:
    from .distill import Distiller
    from .fsutil import atomic_write_text
    from .sampling import save_grid

    tw = _tinyworld()
    t_start = time.perf_counter()
    if not (s.base / "model_index.json").is_file():
        raise SystemExit(f"error: the tiny-world teacher {s.base} is missing (model_index.json not found)")
    s.out.mkdir(parents=True, exist_ok=True)
    prompts_file = s.out / "prompts.txt"
    atomic_write_text(prompts_file, "\n".join(tw.sample_captions(s.num_prompts, s.seed)) + "\n")
    eval_prompts = list(tw.fixed_eval_prompts())
    eval_list = [p for p in eval_prompts for _ in range(s.eval_seeds)]
    seeds = [1000 + i for i in range(len(eval_list))]
    cfg = demo_config(s, prompts_file)
    cfg.output.sample_prompts = eval_prompts[: cfg.output.num_samples]
    d = Distiller(cfg, extra_prompts=eval_list)
    outputs = d.run()
    train_s = d.train_time_s
    images = _generate_all(d, eval_list, seeds, s.teacher_steps, s.teacher_cfg)
    metrics = {"settings": {"steps": s.steps, "batch": cfg.train.batch_size, "student_rank": cfg.adapter.student_rank,
                            "fake_rank": cfg.adapter.fake_rank, "teacher_steps": s.teacher_steps,
                            "teacher_cfg": s.teacher_cfg, "eval_images": len(eval_list),
                            "alpha_bar_T": d.settings.alpha_bar_T},
               "methods": {}}
    for name, imgs in images.items():
        metrics["methods"][name] = tw.evaluate_images(imgs, eval_list)
    lorad_path = s.out / "student.lorad.safetensors"
    lorad_path.write_bytes(Path(outputs["student"]).read_bytes())
    n = min(8, len(eval_prompts))
    idx = [i * s.eval_seeds for i in range(n)]
    rows = [images[k][idx] for k in images]
    grid = save_grid(rows, ["teacher 1-step", f"teacher {s.teacher_steps}-step CFG", "WaDi 1-step"],
                     s.out / "grid.png", captions=[eval_list[i] for i in idx])
    metrics["wall_time_s"] = {"total": round(time.perf_counter() - t_start, 1), "distill": round(train_s, 1)}
    metrics["files"] = {"lorad": str(lorad_path), "grid": str(grid), "run": str(cfg.output.dir)}
    atomic_write_text(s.out / "metrics.json", json.dumps(metrics, indent=2))
    print(summary(metrics, cfg))
    return metrics


def _fmt(m: dict, key: str) -> str:
    v = m.get(key)
    return f"{v:.3g}" if isinstance(v, (int, float)) else str(v)


def summary(metrics: dict, cfg: DistillConfig) -> str:
    st, ms = metrics["settings"], metrics["methods"]
    keys = [k for k in next(iter(ms.values())) if isinstance(next(iter(ms.values()))[k], (int, float))]
    lines = [
        "",
        "WaDi demo: what happened",
        "  The tiny-world teacher (a miniature Stable Diffusion 1.5, 32x32 pixels) was distilled into a one-step",
        f"  generator in {st['steps']} steps (batch {st['batch']}) with a rank-{st['student_rank']} LoRaD student and a "
        f"rank-{st['fake_rank']} fake score",
        "  (the paper's 256/32 exceed this model's layer widths, so smaller ranks are used; all other settings",
        "  are the paper's). Only rotation angles were trained: every weight row keeps its norm.",
        f"  Evaluation on {st['eval_images']} images (fixed prompts and seeds, same for every method):",
        "    " + f"{'method':<24}" + "".join(f"{k:>16}" for k in keys),
    ]
    for name, m in ms.items():
        lines.append("    " + f"{name:<24}" + "".join(f"{_fmt(m, k):>16}" for k in keys))
    lines += [
        f"  Wall time: {metrics['wall_time_s']['total']:.0f} s in all, {metrics['wall_time_s']['distill']:.0f} s of "
        "distillation.",
        f"  Files: {metrics['files']['lorad']}, {metrics['files']['grid']}, metrics.json; the run "
        f"(checkpoints, samples, events.jsonl) is in {metrics['files']['run']}.",
    ]
    return "\n".join(lines)
