"""One-step wall time in ComfyUI: WaDi Sampler vs (one UNet forward + VAE decode) with core nodes.

    COMFYUI_DIR=/path/to/ComfyUI <ComfyUI's python> bench/comfyui_onestep.py [--full] [--size 256] [--reps 5]

Starts a headless ComfyUI (127.0.0.1) with this pack, a random SD1.5-architecture checkpoint
(tiny 2-level UNet by default; ``--full`` = the full 859.5M-parameter SD1.5 UNet) and a
random .lorad student.  Times whole prompts from ComfyUI's own execution_start/success
stamps, warm (checkpoint and text encoding cached; only the seed changes):
  A  WaDi Checkpoint Loader -> WaDi Sampler (1 step) -> VAE Decode -> Save Image
  B  Load Checkpoint -> Load LoRA (same .lorad) -> KSampler (steps 1, euler, cfg 1) -> VAE Decode -> Save Image
and the same two chains ending in SaveLatent (sampler only, no decode).  Prints medians and A/B.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import comfy_live  # noqa: E402
import conftest  # noqa: E402,F401  registers wadi_lorad


def full_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8).eval()


FULL_CONFIG = {"num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
               "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1,
               "model_channels": 320}


def _chain(ids: dict[str, str], loader: dict, model, clip, vae, onestep, sampler: str, size: int, seed: int,
           decode: bool) -> dict:
    """loader -> text encode -> empty latent -> sampler -> (decode + save | save latent)."""
    g = dict(loader)
    g[ids["text"]] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": clip}}
    g[ids["empty"]] = {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}
    common = {"model": model, "positive": [ids["text"], 0], "latent_image": [ids["empty"], 0], "seed": seed,
              "steps": 1, "cfg": 1.0, "denoise": 1.0}
    if sampler == "WaDiSampler":
        g[ids["sample"]] = {"class_type": "WaDiSampler", "inputs": {**common, "onestep": onestep}}
    else:
        g[ids["sample"]] = {"class_type": "KSampler", "inputs": {**common, "negative": [ids["text"], 0],
                                                                  "sampler_name": "euler", "scheduler": "simple"}}
    if decode:
        g[ids["decode"]] = {"class_type": "VAEDecode", "inputs": {"samples": [ids["sample"], 0], "vae": vae}}
        g[ids["save"]] = {"class_type": "SaveImage", "inputs": {"images": [ids["decode"], 0], "filename_prefix": "bench"}}
    else:
        g[ids["save"]] = {"class_type": "SaveLatent", "inputs": {"samples": [ids["sample"], 0],
                                                                  "filename_prefix": "latents/bench"}}
    return g


def graphs(size: int, seed: int, decode: bool) -> tuple[dict, dict]:
    """A and B with their own loaders (two copies of the weights), so interleaving never re-patches."""
    a_ids = {k: str(i) for i, k in enumerate(("loader", "text", "empty", "sample", "decode", "save"))}
    a = _chain(a_ids, {"0": {"class_type": "WaDiCheckpointLoader", "inputs": {
        "ckpt_name": "bench.safetensors", "lorad_name": "bench.lorad.safetensors", "strength": 1.0}}},
        ["0", 0], ["0", 1], ["0", 2], ["0", 3], "WaDiSampler", size, seed, decode)
    b_ids = {k: str(20 + i) for i, k in enumerate(("text", "empty", "sample", "decode", "save"))}
    b_loader = {
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "bench.safetensors"}},
        "11": {"class_type": "LoraLoader", "inputs": {"model": ["10", 0], "clip": ["10", 1], "strength_model": 1.0,
                                                      "strength_clip": 1.0, "lora_name": "bench.lorad.safetensors"}},
    }
    b = _chain(b_ids, b_loader, ["11", 0], ["11", 1], ["10", 2], None, "KSampler", size, seed, decode)
    return a, b


def seconds(entry: dict) -> float:
    stamps = {m[0]: m[1]["timestamp"] for m in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="full-size SD1.5 UNet (859.5M params) instead of the tiny one")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--log", type=Path, help="copy the ComfyUI server log here")
    args = ap.parse_args()
    why = comfy_live.comfy_importable()
    if why:
        print(why, file=sys.stderr)
        return 2
    comfy_live.import_comfy()
    if args.full:
        comfy_live.UNET_CONFIG.clear()
        comfy_live.UNET_CONFIG.update(FULL_CONFIG)
        unet = full_unet()
    else:
        unet = comfy_live.diffusers_unet()
    clip, vae = comfy_live.clip_text(), comfy_live.sd_vae()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("models/checkpoints", "models/loras"):
            (root / d).mkdir(parents=True)
        comfy_live.build_checkpoint(root / "models/checkpoints/bench.safetensors", unet, clip, vae)
        comfy_live.write_lorad(root / "models/loras/bench.lorad.safetensors", comfy_live.student_layers(unet, clip), unet)
        (root / "models/lorad").mkdir()
        (root / "models/lorad/bench.lorad.safetensors").symlink_to(root / "models/loras/bench.lorad.safetensors")
        unet_params = sum(p.numel() for p in unet.parameters()) / 1e6
        del unet, clip, vae  # the server loads its own copy; keep this process small
        gc.collect()
        srv = comfy_live.Server(root, HERE.parent)
        try:
            res = {}
            for decode in (True, False):
                for idx in (0, 1):
                    srv.run(graphs(args.size, 0, decode)[idx])  # warm-up: load, patch, encode
                times: dict[int, list[float]] = {0: [], 1: []}
                for s in range(args.reps):  # interleaved: load from other processes hits both alike
                    for idx in (0, 1):
                        times[idx].append(seconds(srv.run(graphs(args.size, s + 1, decode)[idx])))
                res[("A WaDi Sampler", decode)] = statistics.median(times[0])
                res[("B KSampler 1 step", decode)] = statistics.median(times[1])
            print(f"ComfyUI {srv.get('/system_stats')['system']['comfyui_version']}, CPU, fp32, {args.size}x{args.size}, "
                  f"UNet {unet_params:.1f}M params, median of {args.reps} interleaved warm prompts")
            for decode in (True, False):
                a, b = res[("A WaDi Sampler", decode)], res[("B KSampler 1 step", decode)]
                what = "sample + VAE decode + save" if decode else "sample + save latent"
                print(f"  {what:28s} WaDi {a:7.3f}s   1-step KSampler {b:7.3f}s   ratio {a / b:5.3f}")
        finally:
            srv.stop()
            if args.log:
                args.log.write_text(srv.read_log())
    return 0


if __name__ == "__main__":
    sys.exit(main())
