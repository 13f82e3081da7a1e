"""Full-size SD1.5 through a live ComfyUI: every key of a real paper-preset r256 ``.lorad`` resolves,
and the rotated model's latent equals the project's diffusers path.

The checkpoint is the real SD1.5 layout (UNet, CLIP-L, VAE; 2 GB fp16, random weights) and the file
is written by ``save_lorad`` (182 layers, 83.8M values, fp16): ``bench/comfy_fullsize.py`` builds
both and runs the server, the full benchmark of the same code (docs/performance.md).  One server:
Load LoRaD at strength 1 (the node reports 182 patched layers), strength 0 == base and the stock
Load LoRA of the same file == Load LoRaD, bit for bit; then, with the server gone, the diffusers
UNet (fp32, the checkpoint's weights rotated by ``lorad.layer_spec``) on the same noise.  About
2 minutes and 6 GB of memory: slow, run by scripts/comfyui-tests.sh.
"""

from __future__ import annotations

import os
from pathlib import Path

import comfy_live
import pytest

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


@pytest.fixture(scope="module")
def bench(bench_import):
    why = comfy_live.comfy_importable()
    if why:
        pytest.skip(why)
    return bench_import("comfy_fullsize")


def test_full_size_sd15_live_keys_and_latent_equal_diffusers(bench, tmp_path):
    work = Path(os.environ.get("WADI_FULLSIZE_CACHE", tmp_path))  # a cache folder keeps the 2 GB checkpoint
    run = bench.RUNS["sd15"]
    files = bench.prepare(work, run)
    assert files["layers"] == 182 and files["lorad_values"] == 83_795_968
    size = 128  # 16x16 latents: the sampling is not what is tested, the patched weights are
    res = bench.measure_config(bench.server_root(work, run), run, size, "lorad", "test", checks=True)
    assert res["patched_layers"] == 182
    checks = res["checks"]
    assert checks["strength0_equals_base"] and checks["stock_loader_equals_load_lorad"]
    assert checks["stock_lorad_keys_not_loaded"] == 0
    latent = res["latent"]
    ref = bench.reference_latent(work, run, size)
    scale = max(1.0, float(ref.abs().max()))
    diff = float((latent - ref).abs().max())
    print(f"full-size SD1.5: 182 layers patched, max |ComfyUI - diffusers| {diff:.3g} (max |latent| {scale:.3g})")
    assert diff <= 1e-5 * scale
    assert checks["lorad_vs_base_max_abs"] > 100 * diff  # the rotation changed the output
