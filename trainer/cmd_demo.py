"""``wadi demo``: the README's first command - distill the tiny-world teacher on this CPU and report."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from .cmd_distill import user_errors
    from .config import parse_override_args
    from .demo import DemoSettings, run_demo

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    s = DemoSettings(out=Path(args.out), steps=args.steps, seed=args.seed)
    if args.base:
        s.base = Path(args.base)
    try:
        s.overrides = parse_override_args(args.overrides)
        run_demo(s)
    except user_errors() as e:
        import sys

        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    from .demo import DemoSettings

    d = DemoSettings()
    p = sub.add_parser("demo", help="distill the embedded tiny-world teacher and compare it (offline, CPU, minutes)")
    p.add_argument("--out", default=str(d.out), help="output folder (default outputs/demo)")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="distillation steps (the learning rates' cosine spans twice as many: the run stops half-way "
                   "along it)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--base", help="teacher folder (default: the shipped tiny-world teacher)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default; use 1 on a machine busy with other work)")
    p.set_defaults(func=run, accepts_overrides=True)
    return p
