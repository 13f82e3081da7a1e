"""VSD training step: our trainer's step vs an official-style loop (time and peak memory).

Ours: ``trainer.step.micro_step`` on ONE frozen base with LoRaD adapters "student"
(r 256, paper-student) and "fake" (r 32, paper-fake), teacher cond/uncond in one
batched forward, then clip + AdamW for both parts (what ``Distiller.train_step`` does).
Official-style: :mod:`official` (three copies, hooks, separate CFG passes).
Both get the same random draws and text embeddings::

    python bench/vsd_step.py                        # tiny world (if shipped) and an SD1.5-width UNet
    python bench/vsd_step.py --models sd15-lite --latent 32 --json vsd.json

Goal (issue 6): ours <= 0.7x the official-style time and <= 0.5x its peak memory.
"""

from __future__ import annotations

import sys

import harness
import torch

harness.load_package()
import models  # noqa: E402
import official  # noqa: E402

CANDS = ("ours", "ours-lora", "official")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse(argv=None):
    p = harness.base_parser(__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "sd15-lite"], help="tiny | sd15-lite | sd15")
    p.add_argument("--candidates", nargs="+", default=["ours", "official"], choices=CANDS,
                   help="ours-lora = our trainer with a PEFT LoRA student (fake stays LoRaD), the ablation setting")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--latent", type=int, default=16, help="latent side for the SD-width UNets (tiny: its own)")
    p.add_argument("--student-rank", type=int, default=256)
    p.add_argument("--fake-rank", type=int, default=32)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--autocast", default=None, choices=sorted(DTYPES))
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="dtype of the frozen weights")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--copies", default="auto", choices=["auto", "real", "shared"],
                   help="official loop in the timing process: real copies, or copies sharing the frozen "
                        "tensors (same arithmetic, less RAM; auto = real for tiny). Memory children: always real")
    return p.parse_args(argv)


def _dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def latent_side(args, unet) -> int:
    return int(unet.config.sample_size) if args.model == "tiny" else args.latent


class Ours:
    """Our trainer's real step on one base (needs ``trainer/`` from the distill work)."""

    def __init__(self, base, args, student_kind: str = "lorad") -> None:
        from wadi_lorad.lorad.onestep import alpha_bar_at, scaled_linear_alphas_cumprod
        from wadi_lorad.trainer import adapters, backbones
        from wadi_lorad.trainer import step as trainer_step
        from wadi_lorad.trainer.config import AdapterConfig

        self.trainer_step, self.backbones = trainer_step, backbones  # imported here: trainer/ may be absent
        self.unet = models.share_base_copy(base)
        ac = scaled_linear_alphas_cumprod()
        # SDXL's UNet also takes a pooled text vector (and size ids, which the backbone builds).
        sdxl = getattr(base.config, "addition_embed_type", None) == "text_time"
        self.bb = backbones.Backbone(folder=models.ROOT, kind="sdxl" if sdxl else "sd", index={}, denoiser=self.unet,
                                     vae=None, text=[], scheduler_config={}, alphas_cumprod=ac,
                                     prediction_type="epsilon")
        pooled_dim = int(base.config.projection_class_embeddings_input_dim or 0) - 6 * int(
            base.config.addition_time_embed_dim or 0) if sdxl else 0
        self.pooled = torch.randn(1, pooled_dim, generator=torch.Generator().manual_seed(2)) if sdxl else None
        cfg = AdapterConfig(kind=student_kind, student_rank=args.student_rank, fake_rank=args.fake_rank)
        self.views = adapters.build_views(self.unet, cfg)
        # Off zero (never time on zeros): LoRaD A, LoRA B start at 0.
        models._randomize([p for n, p in self.views.student.params.items() if n.endswith(".A") or "lora_B" in n], 1e-3, 0)
        models._randomize([p for n, p in self.views.fake.params.items() if n.endswith(".A")], 1e-3, 1)
        if args.gradient_checkpointing:
            self.bb.enable_gradient_checkpointing(self.unet)
        self.settings = trainer_step.StepSettings(timestep=999, alpha_bar_T=alpha_bar_at(ac, 999),
                                                  guidance=args.guidance, fake_guidance=args.guidance,
                                                  t_range=(20, 980), fake_t_range=(0, 999), null_prob=0.1)
        self.opt_s = torch.optim.AdamW(self.views.student.parameters(), lr=1e-4, weight_decay=0.0)
        self.opt_f = torch.optim.AdamW(self.views.fake.parameters(), lr=1e-2, weight_decay=0.0)
        dev = args.device
        ac_dtype = DTYPES.get(args.autocast) if args.autocast else None
        self.autocast = (lambda: torch.autocast(dev, dtype=ac_dtype)) if ac_dtype else None

    def step(self, d: official.Draw, cond, null) -> None:
        trainer_step, backbones = self.trainer_step, self.backbones
        batch = trainer_step.Batch(d.prompt_idx, d.z, d.t, d.noise, d.t_fake, d.noise_fake, d.drop)
        kw = {"autocast": self.autocast} if self.autocast else {}
        pool = None if self.pooled is None else self.pooled.to(cond.device)
        text = backbones.TextCond(cond, None if pool is None else pool.expand(cond.shape[0], -1))
        trainer_step.micro_step(self.bb, self.views, batch, text, backbones.TextCond(null, pool), self.settings, **kw)
        for params, opt in ((self.views.student.parameters(), self.opt_s), (self.views.fake.parameters(), self.opt_f)):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)


def trainer_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(f"wadi_lorad.trainer.{m}") for m in ("step", "adapters", "backbones"))


def make(kind: str, base, args, copies: bool):
    if kind == "ours":
        return Ours(base, args)
    if kind == "ours-lora":
        return Ours(base, args, student_kind="lora")
    ac = DTYPES.get(args.autocast) if args.autocast else None
    return official.OfficialLoop(base, args.student_rank, args.fake_rank, copies=copies, guidance=args.guidance,
                          alpha_bar_T=0.0047, autocast=ac, gradient_checkpointing=args.gradient_checkpointing)


def inputs(args, base):
    side = latent_side(args, base)
    lat = (int(base.config.in_channels), side, side)
    gen = torch.Generator().manual_seed(0)
    d = official.draw(gen, args.batch, lat)
    dim = int(base.config.cross_attention_dim)
    cond = torch.randn(args.batch, 77, dim, generator=gen)
    null = torch.randn(1, 77, dim, generator=gen)
    mv = lambda t: t.to(args.device)  # noqa: E731
    d = official.Draw(*(mv(getattr(d, f)) for f in official.Draw.__dataclass_fields__))
    return d, mv(cond), mv(null)


def mem_child(args) -> None:
    model, kind = args.mem_child.split(":")
    args.model = model
    models.preload()
    harness.child_start(args.device)
    base = models.build_unet(model, dtype=_dtype(args.dtype), device=args.device)
    d, cond, null = inputs(args, base)
    runner = make(kind, base, args, copies=True)
    del base  # the official loop holds its own three copies; ours holds the base via its views
    runner.step(d, cond, null)  # warm-up (optimizer state is created here)
    harness.child_report(harness.measure_peak(lambda: runner.step(d, cond, null), args.device))


def run_model(args, model: str) -> list[dict] | None:
    try:
        base = models.build_unet(model, dtype=_dtype(args.dtype), device=args.device)
    except FileNotFoundError as e:
        print(f"\n== {model}: skipped ({e}) ==")
        return None
    copies = args.copies == "real" or (args.copies == "auto" and model == "tiny")
    side = latent_side(args, base)
    load = harness.wait_for_quiet(args.max_load, args.wait)
    print(f"\n== {model}: latent {side}x{side}, batch {args.batch}, student r{args.student_rank} / fake "
          f"r{args.fake_rank}, CFG {args.guidance}, official copies {'real' if copies else 'shared'}, "
          f"load {load:.2f} ==", flush=True)
    d, cond, null = inputs(args, base)
    if not trainer_available():
        print("  ours / ours-lora skipped: the trainer (trainer/step.py, trainer/adapters.py) is not in this checkout")
        args.candidates = [k for k in args.candidates if not k.startswith("ours")]
    runners = {k: make(k, base, args, copies) for k in args.candidates}
    del base
    steps = {k: (lambda r=r: r.step(d, cond, null)) for k, r in runners.items()}
    times = harness.interleaved(steps, args.repeats, args.warmup, args.device)
    steps.clear()
    runners.clear()
    rows = harness.paired_rows(times, "official")
    if not args.no_mem:
        mem = harness.memory_by_subprocess(sys.argv[0], [f"{model}:{k}" for k in args.candidates], sys.argv[1:],
                                     args.device)
        harness.add_memory(rows, {k.split(":")[1]: v for k, v in mem.items()}, "official")
    table = [rows[k] for k in args.candidates]
    print(harness.fmt_table(table, "official"))
    return harness.rows_json(table)


def main(argv=None) -> int:
    args = parse(argv)
    info = harness.begin(args, mem_child)
    if info is None:  # a memory-measuring child
        return 0
    results = {}
    for model in args.models:
        args.model = model
        table = run_model(args, model)
        if table is not None:
            results[model] = table
    harness.write_json(args.json, {"machine": info, "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
