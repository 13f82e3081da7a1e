"""Source of the example workflows: writes each graph as UI JSON (drag-and-drop) and API JSON.

``python workflows/build.py`` regenerates ``workflows/*.json`` (UI format, also served by
ComfyUI as this pack's templates) and ``workflows/api/*.json`` (headless ``POST /prompt``).
One description per graph keeps the twins identical; tests check the files match it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CNR_ID = "wadi-lorad"  # [project] name in pyproject.toml = the registry id
VERSION = "0.1.0"
CORE_VER = "0.3.64"

OURS = {"WaDiCheckpointLoader", "WaDiLoadLoRaD", "WaDiSampler", "WaDiScaleCrafter", "WaDiLoRaDInfo"}
OUTPUTS = {
    "CheckpointLoaderSimple": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "WaDiCheckpointLoader": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE"), ("ONESTEP", "WADI_ONESTEP")],
    "WaDiLoadLoRaD": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("ONESTEP", "WADI_ONESTEP")],
    "WaDiScaleCrafter": [("MODEL", "MODEL")],
    "WaDiSampler": [("LATENT", "LATENT")],
    "WaDiLoRaDInfo": [("info", "STRING")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "LatentUpscaleBy": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "LoadImage": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
    "ControlNetLoader": [("CONTROL_NET", "CONTROL_NET")],
    "ControlNetApplyAdvanced": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
    "LoraLoader": [("MODEL", "MODEL"), ("CLIP", "CLIP")],
}
INPUT_TYPES = {
    "model": "MODEL", "clip": "CLIP", "vae": "VAE", "positive": "CONDITIONING", "negative": "CONDITIONING",
    "samples": "LATENT", "latent_image": "LATENT", "images": "IMAGE", "image": "IMAGE",
    "control_net": "CONTROL_NET", "onestep": "WADI_ONESTEP",
}
# Widgets followed by the UI-only "control after generate" value in widgets_values.
CONTROL_AFTER = {("WaDiSampler", "seed")}

CKPT = "v1-5-pruned-emaonly.safetensors"
STUDENT = "wadi_sd15.lorad.safetensors"
POSITIVE = "a photo of a red fox in the snow, detailed fur, golden hour"


TITLES = {  # the nodes' display names (schema display_name / core names)
    "WaDiCheckpointLoader": "WaDi Checkpoint Loader", "WaDiLoadLoRaD": "Load LoRaD", "WaDiLoRaDInfo": "LoRaD Info",
    "WaDiSampler": "WaDi Sampler", "WaDiScaleCrafter": "WaDi ScaleCrafter",
    "CheckpointLoaderSimple": "Load Checkpoint", "EmptyLatentImage": "Empty Latent Image", "VAEDecode": "VAE Decode",
    "SaveImage": "Save Image", "LatentUpscaleBy": "Upscale Latent By", "LoadImage": "Load Image",
    "ControlNetLoader": "Load ControlNet Model", "ControlNetApplyAdvanced": "Apply ControlNet",
}


def n(id_: int, cls: str, widgets: list[tuple[str, object]] = (), links: dict | None = None, title: str | None = None):
    return {"id": id_, "class_type": cls, "widgets": list(widgets), "links": links or {},
            "title": title or TITLES.get(cls, cls)}


def sampler(id_, model, pos, latent, onestep, seed=0, steps=1, cfg=1.0, denoise=1.0, neg=None, title=None):
    links = {"model": model, "positive": pos, "latent_image": latent, "onestep": onestep}
    if neg is not None:
        links["negative"] = neg
    widgets = [("seed", seed), ("steps", steps), ("cfg", cfg), ("denoise", denoise), ("timesteps", "")]
    return n(id_, "WaDiSampler", widgets, links, title)


def _base(size=512, prompt=POSITIVE):
    return [
        n(1, "WaDiCheckpointLoader", [("ckpt_name", CKPT), ("lorad_name", STUDENT), ("strength", 1.0)]),
        n(2, "CLIPTextEncode", [("text", prompt)], {"clip": (1, 1)}, "Positive prompt"),
        n(3, "EmptyLatentImage", [("width", size), ("height", size), ("batch_size", 1)]),
    ]


def _decode_save(id_, latent, vae=(1, 2), prefix="WaDi"):
    return [
        n(id_, "VAEDecode", [], {"samples": latent, "vae": vae}),
        n(id_ + 1, "SaveImage", [("filename_prefix", prefix)], {"images": (id_, 0)}),
    ]


def graphs() -> dict[str, list[dict]]:
    g = {}
    g["wadi_onestep_txt2img"] = [*_base(), sampler(4, (1, 0), (2, 0), (3, 0), (1, 3)), *_decode_save(5, (4, 0))]
    g["wadi_controlnet"] = [
        *_base(),
        n(10, "CLIPTextEncode", [("text", "")], {"clip": (1, 1)}, "Negative prompt (unused at cfg 1)"),
        n(11, "LoadImage", [("image", "example.png")]),
        n(12, "ControlNetLoader", [("control_net_name", "control_v11p_sd15_canny.safetensors")]),
        n(13, "ControlNetApplyAdvanced", [("strength", 1.0), ("start_percent", 0.0), ("end_percent", 1.0)],
          {"positive": (2, 0), "negative": (10, 0), "control_net": (12, 0), "image": (11, 0), "vae": (1, 2)}),
        sampler(4, (1, 0), (13, 0), (3, 0), (1, 3), neg=(13, 1)),
        *_decode_save(5, (4, 0), prefix="WaDi_controlnet"),
    ]
    g["wadi_hires_fix"] = [
        *_base(),
        sampler(4, (1, 0), (2, 0), (3, 0), (1, 3), title="WaDi one-step base"),
        n(7, "LatentUpscaleBy", [("upscale_method", "bislerp"), ("scale_by", 2.0)], {"samples": (4, 0)}),
        sampler(8, (1, 0), (2, 0), (7, 0), (1, 3), seed=1, denoise=0.45, title="WaDi refine (exact t = 0.45 * T)"),
        *_decode_save(5, (8, 0), prefix="WaDi_hires"),
    ]
    g["wadi_scalecrafter_highres"] = [
        *_base(size=1024),
        n(9, "WaDiScaleCrafter", [("width", 1024), ("height", 1024), ("train_resolution", 512), ("above_t", 700.0),
                                  ("min_level", 1)], {"model": (1, 0)}),
        sampler(4, (9, 0), (2, 0), (3, 0), (1, 3)),
        *_decode_save(5, (4, 0), prefix="WaDi_scalecrafter"),
    ]
    g["wadi_personalization_stack"] = [
        n(1, "CheckpointLoaderSimple", [("ckpt_name", CKPT)]),
        n(14, "WaDiLoadLoRaD", [("lorad_name", STUDENT), ("strength_model", 1.0), ("strength_clip", 1.0)],
          {"model": (1, 0), "clip": (1, 1)}, "WaDi one-step student"),
        n(15, "WaDiLoadLoRaD", [("lorad_name", "my_style.lorad.safetensors"), ("strength_model", 0.8),
                                ("strength_clip", 0.8)], {"model": (14, 0), "clip": (14, 1)}, "Personal style (LoRaD)"),
        n(16, "WaDiLoRaDInfo", [("lorad_name", "my_style.lorad.safetensors")]),
        n(2, "CLIPTextEncode", [("text", "a portrait of sks dog, studio light")], {"clip": (15, 1)}, "Positive prompt"),
        n(3, "EmptyLatentImage", [("width", 512), ("height", 512), ("batch_size", 1)]),
        sampler(4, (15, 0), (2, 0), (3, 0), (14, 2)),
        *_decode_save(5, (4, 0), vae=(1, 2), prefix="WaDi_personal"),
    ]
    return g


def to_api(nodes: list[dict]) -> dict:
    api = {}
    for node in nodes:
        inputs = {k: v for k, v in node["widgets"]}
        inputs.update({k: [str(s), i] for k, (s, i) in node["links"].items()})
        api[str(node["id"])] = {"class_type": node["class_type"], "inputs": inputs, "_meta": {"title": node["title"]}}
    return api


def _topo(nodes: list[dict]) -> list[dict]:
    by_id = {x["id"]: x for x in nodes}
    depth: dict[int, int] = {}

    def d(i: int) -> int:
        if i not in depth:
            depth[i] = 1 + max((d(s) for s, _ in by_id[i]["links"].values()), default=-1)
        return depth[i]

    for x in nodes:
        d(x["id"])
    return sorted(nodes, key=lambda x: (depth[x["id"]], x["id"])), depth


def to_ui(nodes: list[dict]) -> dict:
    ordered, depth = _topo(nodes)
    links, out_links = [], {}
    link_id = 0
    for node in ordered:
        for slot, (name, (src, src_slot)) in enumerate(node["links"].items()):
            link_id += 1
            typ = INPUT_TYPES[name]
            links.append([link_id, src, src_slot, node["id"], slot, typ])
            out_links.setdefault((src, src_slot), []).append(link_id)
            node.setdefault("_in", []).append({"name": name, "type": typ, "link": link_id})
    rows: dict[int, int] = {}
    ui_nodes = []
    for order, node in enumerate(ordered):
        col = depth[node["id"]]
        row = rows.get(col, 0)
        rows[col] = row + 1
        widgets = []
        for name, value in node["widgets"]:
            widgets.append(value)
            if (node["class_type"], name) in CONTROL_AFTER:
                widgets.append("randomize")  # a new image per queue, as ComfyUI's own templates
        if node["class_type"] == "LoadImage":
            widgets.append("image")  # the upload widget's slot
        ours = node["class_type"] in OURS
        ui_nodes.append({
            "id": node["id"], "type": node["class_type"], "pos": [40 + 360 * col, 60 + 260 * row], "size": [320, 200],
            "flags": {}, "order": order, "mode": 0,
            "inputs": node.get("_in", []),
            "outputs": [
                {"name": nm, "type": tp, "links": out_links.get((node["id"], i), []), "slot_index": i}
                for i, (nm, tp) in enumerate(OUTPUTS[node["class_type"]])
            ],
            "title": node["title"],
            "properties": {"Node name for S&R": node["class_type"], "cnr_id": CNR_ID if ours else "comfy-core",
                           "ver": VERSION if ours else CORE_VER},
            "widgets_values": widgets,
        })
    return {
        "last_node_id": max(x["id"] for x in nodes), "last_link_id": link_id, "nodes": ui_nodes, "links": links,
        "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
    }


def render() -> dict[Path, str]:
    files = {}
    for name, nodes in graphs().items():
        files[HERE / f"{name}.json"] = json.dumps(to_ui([dict(x) for x in nodes]), indent=1) + "\n"
        files[HERE / "api" / f"{name}.json"] = json.dumps(to_api(nodes), indent=1) + "\n"
    return files


def main() -> int:
    for path, text in render().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path.relative_to(HERE.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
