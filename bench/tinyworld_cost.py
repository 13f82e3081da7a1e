"""Cost of the tiny-world teacher's UNet on this machine: forward and forward+backward per batch.

Prints wall time AND process CPU time (the second is what a shared, busy machine cannot
inflate), min over repeats, for each batch size and thread count, plus the ratio to the
first row as the baseline.  Usage::

    python bench/tinyworld_cost.py --batches 8 16 64 --threads 1 2 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("_wadi_bootstrap", ROOT / "_bootstrap.py")
_boot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_boot)
_boot.register()

import torch  # noqa: E402
from wadi_lorad.trainer.tinyworld.metrics import DEFAULT_TEACHER  # noqa: E402
from wadi_lorad.trainer.tinyworld.models import load_pipeline  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_TEACHER))
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    pipe = load_pipeline(Path(args.model))
    unet = pipe.unet
    c = unet.config
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"UNet {n_params / 1e6:.2f}M params, latents {c.in_channels}x{c.sample_size}x{c.sample_size}, "
          f"text {pipe.tokenizer.model_max_length}x{c.cross_attention_dim}")  # fmt: skip
    print(f"{'batch':>5} {'threads':>7} {'fwd wall ms':>12} {'fwd cpu ms':>11} {'fwd+bwd wall ms':>16} "
          f"{'fwd+bwd cpu ms':>15} {'ratio':>6}")  # fmt: skip
    base = None
    for b in args.batches:
        x = torch.randn(b, c.in_channels, c.sample_size, c.sample_size)
        t = torch.randint(0, 1000, (b,))
        text = torch.randn(b, pipe.tokenizer.model_max_length, c.cross_attention_dim)
        for th in args.threads:
            torch.set_num_threads(th)

            def fwd(x=x, t=t, text=text) -> None:
                with torch.no_grad():
                    unet(x, t, text)

            def fwd_bwd(x=x, t=t, text=text) -> None:
                unet(x, t, text).sample.square().mean().backward()

            fw, fc = timed(fwd, args.repeats)
            bw, bc = timed(fwd_bwd, args.repeats)
            base = base or bw
            print(f"{b:>5} {th:>7} {fw * 1e3:>12.1f} {fc * 1e3:>11.1f} {bw * 1e3:>16.1f} {bc * 1e3:>15.1f} "
                  f"{bw / base:>6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
