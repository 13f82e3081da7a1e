"""Step time, trainable parameters and peak memory of WaDi distillation per student adapter kind.

Usage: python bench/distill_step_time.py [--base FOLDER] [--kinds lorad,lora,dora,full] [--steps 10]
                                         [--batch 16] [--student-rank 32] [--fake-rank 8] [--threads N]
                                         [--targets paper-student,all-linear-conv] [--set KEY=VALUE ...]

Each kind (and each student target set in --targets) runs in its own process (so peak RSS is
its own) on the same base, prompts, seeds, batch and ranks, with the same LoRaD fake score and
the same --set overrides.  Prints a table with the ratio of each row's step time to the first
LoRaD row's, measured side by side in one invocation.
Default base: the shipped tiny-world teacher (assets/tinyworld/teacher).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bootstrap() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("_wadi_bootstrap", ROOT / "_bootstrap.py")
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)
    boot.register()


def child(args: argparse.Namespace) -> None:
    """One kind: set up, warm up, time ``steps`` optimizer steps, print a JSON line."""
    _bootstrap()
    from wadi_lorad.trainer.config import DistillConfig, apply_overrides
    from wadi_lorad.trainer.distill import Distiller

    work = Path(args.work)
    prompts = work / "prompts.txt"
    cfg = apply_overrides(DistillConfig(), [
        ("model.base", args.base), ("data.prompts", str(prompts)), ("output.dir", str(work / args.kind)),
        ("data.cache_dir", str(work / "cache")), ("adapter.kind", args.kind),
        ("adapter.student_rank", str(args.student_rank)), ("adapter.fake_rank", str(args.fake_rank)),
        ("train.batch_size", str(args.batch)), ("output.sample_every", "0"), ("output.checkpoint_every", "0"),
        ("output.force", "true"), ("adapter.student_targets", args.targets),
    ] + [tuple(kv.split("=", 1)) for kv in args.set])
    d = Distiller(cfg, progress=False, log=lambda *a: None)
    d.setup()
    for _ in range(args.warmup):
        d.train_step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        d.train_step()
    dt = (time.perf_counter() - t0) / args.steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": args.kind, "targets": args.targets, "step_s": dt, "student_params": d.views.student.num_params(),
                      "fake_params": d.views.fake.num_params(), "peak_rss_mb": peak_mb}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default=str(ROOT / "assets" / "tinyworld" / "teacher"))
    p.add_argument("--kinds", default="lorad,lora,dora,full")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--student-rank", type=int, default=32)
    p.add_argument("--fake-rank", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = default)")
    p.add_argument("--targets", default="paper-student",
                   help="comma-separated student target sets (adapter.student_targets); one row per kind and set")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every row (repeatable), e.g. optim.conv_lr_scale=3")
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.kind:
        child(args)
        return 0
    if not (Path(args.base) / "model_index.json").is_file():
        print(f"error: {args.base} is not a diffusers folder", file=sys.stderr)
        return 2
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        print(f"error: --set expects KEY=VALUE, got {bad[0]!r}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        words = "a red blue green circle square triangle on the left right top of small big".split()
        (Path(work) / "prompts.txt").write_text("\n".join(" ".join(words[(i + j) % len(words)] for j in range(5))
                                                          for i in range(64)))
        for targets in args.targets.split(","):
            for kind in args.kinds.split(","):
                cmd = [sys.executable, __file__, "--kind", kind, "--work", work, "--base", args.base,
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
                       "--student-rank", str(args.student_rank), "--fake-rank", str(args.fake_rank),
                       "--targets", targets] + [a for kv in args.set for a in ("--set", kv)]
                r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if r.returncode:
                    print(f"{kind} on {targets}: failed\n{r.stderr[-2000:]}", file=sys.stderr)
                    continue
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    ref = next((r["step_s"] for r in rows if r["kind"] == "lorad"), None)
    extra = f"; overrides {' '.join(args.set)}" if args.set else ""
    print(f"base {args.base}; batch {args.batch}; student rank {args.student_rank}, fake rank {args.fake_rank} "
          f"(LoRaD fake for every kind); {args.steps} timed steps after {args.warmup} warm-up{extra}")
    print(f"{'kind':<7}{'targets':<18}{'student params':>16}{'step (s)':>11}{'vs lorad':>10}{'peak RSS (MB)':>15}")
    for r in rows:
        ratio = f"{r['step_s'] / ref:.2f}x" if ref else "-"
        print(f"{r['kind']:<7}{r['targets']:<18}{r['student_params']:>16,}{r['step_s']:>11.3f}{ratio:>10}"
              f"{r['peak_rss_mb']:>15.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
