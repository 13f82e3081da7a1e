"""Adapter cost: forward+backward time and peak memory of LoRaD vs LoRA/DoRA/official hook.

A UNet at SD1.5 widths (320/640/1280/1280, cross-attention 768; one layer per block
by default so two CPU cores cope), the ``paper-student`` layers, equal rank for
every candidate.  All candidates share one frozen base and are timed interleaved::

    python bench/adapter_cost.py                      # r = 64 and 256, CPU defaults
    python bench/adapter_cost.py --latent 32 --ranks 256 --json out.json
    python bench/adapter_cost.py --flops-only         # FLOP table incl. full SD1.5 @ 512 px (meta device)

Goal (issue 6): LoRaD <= 1.1x LoRA time and <= 1.05x LoRA peak memory.
"""

from __future__ import annotations

import sys

import harness
import torch

harness.load_package()
import models  # noqa: E402  (needs the package registered first)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse(argv=None):
    p = harness.base_parser(__doc__.split("\n")[0])
    p.add_argument("--unet", default="sd15-lite", choices=sorted(models.UNET_CONFIGS))
    p.add_argument("--latent", type=int, default=16, help="latent side (16 = 128 px)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--ranks", type=int, nargs="+", default=[64, 256])
    p.add_argument("--candidates", nargs="+", default=list(models.CANDIDATES), choices=models.CANDIDATES)
    p.add_argument("--baseline", default="lora")
    p.add_argument("--preset", default="paper-student")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="dtype of the frozen base weights")
    p.add_argument("--autocast", default=None, choices=["bf16", "fp16"], help="mixed precision (base stays fp32)")
    p.add_argument("--flops", action="store_true", help="also count matmul FLOPs per candidate")
    p.add_argument("--flops-only", action="store_true", help="only the FLOP table (timed config + full SD1.5 512 px)")
    return p.parse_args(argv)


def build(args, base, kind: str, rank: int, device: str):
    unet = models.share_base_copy(base)
    params = models.apply_candidate(unet, kind, rank, args.preset)
    inputs = models.unet_inputs(unet, args.batch, args.latent, device=device)
    ac = DTYPES[args.autocast] if args.autocast else None
    return models.train_step_fn(unet, params, inputs, ac), params


def mem_child(args) -> None:
    kind, rank = args.mem_child.rsplit(":", 1)
    models.preload()
    harness.child_start(args.device)
    base = models.build_unet(args.unet, device=args.device, dtype=DTYPES[args.dtype])
    step, _ = build(args, base, kind, int(rank), args.device)
    step()  # warm-up: lazy inits and allocator caches are not part of the step's peak
    harness.child_report(harness.measure_peak(step, args.device))


def flop_table(args) -> list[dict]:
    """GEMM/conv/attention FLOPs of one fwd+bwd per candidate (elementwise ops not counted).

    Counted on the meta device (shapes only, no compute), so the full SD1.5 UNet at
    512 px, batch 16 costs nothing: that is the GPU training regime the CPU runs cannot reach.
    """
    from diffusers import UNet2DConditionModel

    out = []
    for unet_kind, latent, batch in [(args.unet, args.latent, args.batch), ("sd15", 64, 16)]:
        with torch.device("meta"):
            base = UNet2DConditionModel(**models.UNET_CONFIGS[unet_kind]).requires_grad_(False)
        for rank in args.ranks:
            for kind in args.candidates:
                unet = models.share_base_copy(base)
                with torch.device("meta"):
                    params = models.apply_candidate(unet, kind, rank, args.preset, randomize=False)
                x, t, enc = (v.to("meta") for v in models.unet_inputs(unet, batch, latent))

                def fb(unet=unet, x=x, t=t, enc=enc, params=params):
                    unet(x, t, encoder_hidden_states=enc).sample.float().square().mean().backward()
                    for p in params:
                        p.grad = None

                gf = harness.count_flops(fb) / 1e9
                out.append(dict(unet=unet_kind, latent=latent, batch=batch, rank=rank, candidate=kind, gflops=gf))
    return out


def print_flops(rows: list[dict], baseline: str) -> None:
    print("\nmatmul/conv/attention GFLOP per fwd+bwd (FlopCounterMode; elementwise rotation not counted)")
    print("| UNet | latent x batch | r | " + " | ".join(r for r in dict.fromkeys(x["candidate"] for x in rows)) + " |")
    keys = dict.fromkeys((x["unet"], x["latent"], x["batch"], x["rank"]) for x in rows)
    cands = list(dict.fromkeys(x["candidate"] for x in rows))
    print("|---" * (3 + len(cands)) + "|")
    for k in keys:
        vals = {x["candidate"]: x["gflops"] for x in rows if (x["unet"], x["latent"], x["batch"], x["rank"]) == k}
        b = vals.get(baseline)
        cells = [f"{vals[c]:.1f} ({vals[c] / b:.2f}x)" if b else f"{vals[c]:.1f}" for c in cands]
        print(f"| {k[0]} | {k[1]}x{k[2]} | {k[3]} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    args = parse(argv)
    info = harness.begin(args, mem_child)
    if info is None:  # a memory-measuring child
        return 0
    if args.flops_only:
        rows = flop_table(args)
        print_flops(rows, args.baseline)
        harness.write_json(args.json, {"machine": info, "args": vars(args), "flops": rows})
        return 0
    load = harness.wait_for_quiet(args.max_load, args.wait)
    print(f"UNet {args.unet}, latent {args.latent}x{args.latent}, batch {args.batch}, preset {args.preset}, "
          f"weights {args.dtype}, autocast {args.autocast or 'off'}; {args.repeats} interleaved rounds after {args.warmup} warm-up; "
          f"load avg at start {load:.2f}")
    base = models.build_unet(args.unet, device=args.device, dtype=DTYPES[args.dtype])
    results = {}
    for rank in args.ranks:
        print(f"\n== rank {rank} ==", flush=True)
        steps, counts = {}, {}
        for kind in args.candidates:
            steps[kind], params = build(args, base, kind, rank, args.device)
            counts[kind] = models.trainable_count(params)
        times = harness.interleaved(steps, args.repeats, args.warmup, args.device)
        del steps
        rows = harness.paired_rows(times, args.baseline)
        if not args.no_mem:
            mem = harness.memory_by_subprocess(sys.argv[0], [f"{k}:{rank}" for k in args.candidates], sys.argv[1:],
                                         args.device)
            harness.add_memory(rows, {k.split(":")[0]: v for k, v in mem.items()}, args.baseline)
        for k in rows:
            rows[k].extra["trainable M"] = f"{counts[k] / 1e6:.2f}"
        table = [rows[k] for k in args.candidates]
        print(harness.fmt_table(table, args.baseline, extra_cols=["trainable M"]))
        results[rank] = harness.rows_json(table)
    flops = flop_table(args) if args.flops else None
    if flops:
        print_flops(flops, args.baseline)
    harness.write_json(args.json, {"machine": info, "args": vars(args), "results": results, "flops": flops})
    return 0


if __name__ == "__main__":
    sys.exit(main())
