"""Measure the on-disk size of full-size .lorad files (real files with zero tensors, written to a temp dir).

Usage: python bench/lorad_file_size.py [arch:preset:rank ...]
Default: the paper students (SD1.5/SD2.1 r=256, PixArt-alpha r=128) and the SD1.5 fake model (r=32), fp16.
Prints bytes, MiB, the trainable-parameter count and the size relative to the fp16 base denoiser.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script from a checkout
    import importlib.util

    _root = Path(__file__).resolve().parents[1]
    _spec = importlib.util.spec_from_file_location("_wadi_bootstrap", _root / "_bootstrap.py")
    _boot = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_boot)
    _boot.register()

from wadi_lorad.lorad.archs import build_meta  # noqa: E402
from wadi_lorad.lorad.inject import adapter_state, inject  # noqa: E402
from wadi_lorad.lorad.io import layers_from_adapter_state, load_lorad, save_lorad  # noqa: E402
from wadi_lorad.lorad.metadata import build_metadata  # noqa: E402

DEFAULT = ["sd15:paper-student:256", "sd21-base:paper-student:256", "pixart-alpha:paper-student:128",
           "sd15:paper-fake:32"]


def measure(arch: str, preset: str, rank: int, dtype: torch.dtype = torch.float16) -> tuple[int, int, int]:
    model = build_meta(arch)
    base_params = sum(p.numel() for p in model.parameters())
    inject(model, "a", preset, rank=rank)
    state = {n: {k: torch.zeros(v.shape, dtype=dtype) for k, v in t.items()}
             for n, t in adapter_state(model, "a").items()}
    layers = layers_from_adapter_state(arch, state)
    md = build_metadata(arch=arch, rank=rank, target_preset=preset, title=f"{arch} {preset} r{rank}",
                        one_step={"timestep": 999, "alpha_bar_T": 0.0047})
    with tempfile.TemporaryDirectory() as d:
        path = save_lorad(Path(d) / "x.lorad.safetensors", layers, md, dtype=dtype)
        size = path.stat().st_size
        params = load_lorad(path).num_params
    return size, params, base_params


def main(argv: list[str]) -> int:
    print(f"{'arch':<14}{'preset':<15}{'rank':>5}{'params':>13}{'bytes':>14}{'MiB':>9}{'vs fp16 base':>14}")
    for spec in argv or DEFAULT:
        arch, preset, rank = spec.split(":")
        size, params, base = measure(arch, preset, int(rank))
        print(f"{arch:<14}{preset:<15}{rank:>5}{params:>13,}{size:>14,}{size / 2**20:>9.1f}{size / (2 * base):>13.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
