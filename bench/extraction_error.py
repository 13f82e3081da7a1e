"""Extraction error on a synthetic merged model (the number issue 2 asks for).

A tiny UNet with SD1.5's block layout (diffusers ``UNet2DConditionModel``, small
widths, random init, no download) gets the ``paper-student`` LoRaD at rank 8 with
random angles, is merged, and then every output row is rescaled by
``1 + noise * N(0, 1)`` (a small non-rotational change, as fp16 export or EMA
would leave).  ``lorad.extract`` then recovers the angles from (base, merged) and
factors them at ranks 4, 8 and 16.  Printed per rank: max angle error of the
recovered dense angles, relative weight reconstruction error (stored factors vs
the merged weight; max and mean over layers), theta error, and dense fallbacks,
both with the default tolerance and with factors forced (tol = inf).

Run: ``python bench/extraction_error.py [--angle-std 0.3] [--noise 1e-4] [--fp16]``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import _bootstrap  # noqa: E402

_bootstrap.register()
from wadi_lorad.lorad import extract, functional, inject  # noqa: E402


def tiny_sd_unet(width: int = 64):
    from diffusers import UNet2DConditionModel

    w = (width, 2 * width, 2 * width, 2 * width)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=w, layers_per_block=2, cross_attention_dim=width,
        attention_head_dim=8, norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )


def synthetic_pair(rank: int, angle_std: float, noise: float, seed: int, width: int):
    torch.manual_seed(seed)
    unet = tiny_sd_unet(width)
    base = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    inject.inject(unet, "s", "paper-student", rank=rank, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    truth = {}
    with torch.no_grad():
        for name, layer in inject.lorad_layers(unet):
            ad = layer.lorad["s"]
            ad.A.normal_(generator=g)
            # scale A so this layer's angles have std ~angle_std
            ad.A.mul_(angle_std / float(functional.angles(ad.A, ad.B, wrap=False).std()))
            truth[name] = functional.angles(ad.A, ad.B).double()
    inject.set_active(unet, "s")
    inject.merge(unet, keep_original=False)
    merged = {k: v.detach().clone() for k, v in unet.state_dict().items() if ".lorad." not in k}
    for name in truth:
        w = merged[name + ".weight"]
        scale = 1 + noise * torch.randn(w.shape[0], *([1] * (w.dim() - 1)), generator=g)
        merged[name + ".weight"] = w * scale
    return base, merged, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--true-rank", type=int, default=8)
    ap.add_argument("--angle-std", type=float, default=0.3, help="std of the true angles (rad)")
    ap.add_argument("--noise", type=float, default=1e-4, help="relative per-row norm noise")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fp16", action="store_true", help="store base and merged in fp16 first")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, help="torch threads (1 avoids LAPACK oversubscription on a busy machine)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    base, merged, truth = synthetic_pair(a.true_rank, a.angle_std, a.noise, a.seed, a.width)
    if a.fp16:
        base = {k: v.half() for k, v in base.items()}
        merged = {k: v.half() for k, v in merged.items()}
    n_params = sum(v.numel() for v in base.values())
    print(f"tiny SD1.5-layout UNet: {n_params / 1e6:.2f}M params, {len(truth)} paper-student Linear layers; "
          f"true rank {a.true_rank}, angle std {a.angle_std}, norm noise {a.noise}, "
          f"{'fp16' if a.fp16 else 'fp32'} weights")
    dense_err = 0.0
    for name, theta in truth.items():
        d, _ = extract.pair_angles(base[name + ".weight"], merged[name + ".weight"])
        dense_err = max(dense_err, float(extract.angular_error(d, theta).max()))
    print(f"max angle error of the recovered dense angles (atan2): {dense_err:.3e} rad")
    print("columns: weight error = |stored reconstruction - merged| / |merged| (max, mean over layers); "
          "θ err = max |wrap(stored - recovered dense)|; θ vs truth = max |wrap(stored - true angles)|; "
          "resid = max rotation residual (what no rotation explains)")
    print(f"{'rank':>4} {'tol':>6} {'max w err':>10} {'mean w err':>10} {'max θ err':>10} {'θ vs truth':>10} "
          f"{'max resid':>10} {'dense':>7} {'secs':>5}")
    for rank in (4, 8, 16):
        for tol in (a.tol, math.inf):
            t0 = time.perf_counter()
            res = extract.extract_state(base, merged, rank=rank, tol=tol)
            dt = time.perf_counter() - t0
            s = res.summary()
            assert set(res.layers) == set(truth), "extraction missed or added layers"
            vs_truth = max(
                float(extract.angular_error(
                    t["theta"].double() if "theta" in t else functional.angles(t["A"].double(), t["B"].double()), truth[n]
                ).max())
                for n, t in res.layers.items()
            )
            print(f"{rank:>4} {tol:>6.0e} {s['max_weight_err']:>10.3e} {s['mean_weight_err']:>10.3e} "
                  f"{s['max_theta_err']:>10.3e} {vs_truth:>10.3e} {s['max_rotation_residual']:>10.3e} "
                  f"{s['dense_fallback']:>3}/{len(truth):<3}{dt:>5.1f}")
    others = extract.extract_state(base, merged, rank=8).others
    print(f"non-rotational tensors reported: {len(others)} (none changed by construction)")


if __name__ == "__main__":
    main()
