"""Regenerate tests/data/comfy_core_nodes.json and tests/data/comfy_keymaps.json.gz from a real ComfyUI.

Usage: COMFYUI_DIR=/path/to/ComfyUI <ComfyUI's python> tests/tools/extract_comfy_core.py

* core node names with their input/output socket types (workflow tests use it when no
  ComfyUI is importable, e.g. in CI);
* ComfyUI's real LoRA key maps (``comfy.lora.model_lora_keys_unet``) and weight shapes for
  SD1.5, SD2.1, SDXL and PixArt-alpha models built on the meta device, restricted to the
  spellings a ``.lorad`` file uses (``diffusion_model.<ldm path>``; PixArt ``transformer.<diffusers path>``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import comfy_live  # noqa: E402

# Full-size ldm UNet configs as ComfyUI detects them (model_detection.py), and PixArt-alpha XL/2 512.
ARCHS = {
    "sd15": ("SD15", {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                      "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
                      "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                      "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
                      "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                      "use_temporal_attention": False, "use_temporal_resblock": False}),
    "sd21": ("SD20", {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                      "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
                      "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                      "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": True,
                      "context_dim": 1024, "num_head_channels": 64, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                      "use_temporal_attention": False, "use_temporal_resblock": False}),
    "sdxl": ("SDXL", {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                      "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
                      "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
                      "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
                      "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
                      "use_temporal_attention": False, "use_temporal_resblock": False}),
    "pixart": ("PixArtAlpha", {"image_model": "pixart_alpha", "patch_size": 2, "in_channels": 4, "hidden_size": 1152,
                               "depth": 28, "num_heads": 16, "pe_interpolation": 1.0, "micro_condition": False,
                               "model_max_length": 120, "lewei_scale": 1}),
}


def keymaps() -> dict:
    import comfy.lora
    import comfy.supported_models
    import torch

    out = {}
    for arch, (cls_name, unet_config) in ARCHS.items():
        cfg = getattr(comfy.supported_models, cls_name)(unet_config)
        model = cfg.get_model({}, device=torch.device("meta"))  # ComfyUI ops honour device=
        sd = model.state_dict()
        km = comfy.lora.model_lora_keys_unet(model, {})
        prefix = "transformer." if arch == "pixart" else "diffusion_model."
        kept = {k: (v if isinstance(v, str) else [v[0], list(v[1])]) for k, v in km.items() if k.startswith(prefix)}
        out[arch] = {"comfy_class": cls_name, "key_map": kept,
                     "shapes": {k: list(v.shape) for k, v in sd.items() if k.endswith(".weight")}}
    return out


def core_nodes() -> dict:
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    table = {}
    for name, cls in sorted(nodes.NODE_CLASS_MAPPINGS.items()):
        try:
            spec = cls.INPUT_TYPES()
        except Exception as e:  # a node whose inputs need files/models: keep the name, mark it
            table[name] = {"inputs": None, "outputs": list(getattr(cls, "RETURN_TYPES", ())), "error": str(e)[:200]}
            continue
        inputs = {}
        for group in ("required", "optional"):
            for k, v in (spec.get(group) or {}).items():
                t = v[0] if isinstance(v, (tuple, list)) else v
                inputs[k] = t if isinstance(t, str) else "COMBO"
        table[name] = {"inputs": inputs, "outputs": [t if isinstance(t, str) else "COMBO" for t in getattr(cls, "RETURN_TYPES", ())]}
    return table


def main() -> int:
    why = comfy_live.comfy_importable()
    if why:
        print(why, file=sys.stderr)
        return 2
    comfy_live.import_comfy()
    import comfyui_version

    data = HERE.parent / "data"
    core = {"comfyui_version": comfyui_version.__version__, "nodes": core_nodes()}
    (data / "comfy_core_nodes.json").write_text(json.dumps(core, indent=0, sort_keys=True) + "\n")
    maps = {"comfyui_version": comfyui_version.__version__, "archs": keymaps()}
    with gzip.open(data / "comfy_keymaps.json.gz", "wt") as f:
        json.dump(maps, f, sort_keys=True)
    print(f"{len(core['nodes'])} core nodes; key maps for {', '.join(maps['archs'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
