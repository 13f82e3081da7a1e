"""Live tests against a real ComfyUI (``COMFYUI_DIR``; skipped otherwise).

Run: ``COMFYUI_DIR=/path/to/ComfyUI <its python> -m pytest tests/test_comfyui_live.py -m comfyui``
(``COMFYUI_PYTHON`` picks the server's interpreter; default: the one running pytest).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import comfy_live
import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
_why = comfy_live.comfy_importable()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "workflows" / "api"
META = {"lorad.arch": "stable-diffusion-v1", "wadi.timestep": "999", "wadi.alpha_bar_T": "0.0047",
        "wadi.prediction_type": "epsilon", "wadi.provenance": "test: random factors"}
SIZE = 128  # the SD VAE decodes 256px in ~15 s on this 2-core CPU; 128px keeps the suite short
REPORT: dict[str, float] = {}


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """Tiny checkpoint, .lorad files and the diffusers twins (built once per session)."""
    comfy_live.import_comfy()
    cache = Path(os.environ.get("WADI_COMFY_CACHE", tmp_path_factory.mktemp("wadi_comfy")))
    cache.mkdir(parents=True, exist_ok=True)
    unet, clip, vae = comfy_live.diffusers_unet(), comfy_live.clip_text(), comfy_live.sd_vae()
    ckpt = cache / "tiny_sd15.safetensors"
    if not ckpt.exists():
        comfy_live.build_checkpoint(ckpt, unet, clip, vae)
    comfy_live.upcast_fp16_(unet, clip, vae)
    layers = comfy_live.student_layers(unet, clip)
    files = cache / "files"
    files.mkdir(exist_ok=True)
    comfy_live.write_lorad(files / "student.lorad.safetensors", layers, unet)
    comfy_live.write_lorad(files / "student_plain.lorad.safetensors", layers, unet, one_step=None)
    style = comfy_live.student_layers(unet, clip, seed=11, scale=0.2)
    comfy_live.write_lorad(files / "style.lorad.safetensors", style, unet, one_step=None, title="test style")
    comfy_live.write_lorad(files / "sdxl.lorad.safetensors", layers, unet, arch="sdxl")
    bad = dict(layers)
    bad["diffusion_model.input_blocks.1.1.proj_in"] = {"A": torch.zeros(320, 4), "B": torch.zeros(4, 7)}
    comfy_live.write_lorad(files / "mismatched.lorad.safetensors", bad, unet)
    (files / "corrupt.lorad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + b"\0" * 64)
    nan_file(files / "student_plain.lorad.safetensors", files / "nan.lorad.safetensors")
    return {"cache": cache, "ckpt": ckpt, "files": files, "unet": unet, "clip": clip, "vae": vae,
            "layers": layers, "style": style}


@pytest.fixture(scope="session")
def server(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_root")
    for d in ("models/checkpoints", "models/lorad", "models/loras", "models/controlnet", "input"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.link(world["ckpt"], root / "models/checkpoints/tiny_sd15.safetensors")
    for f in world["files"].iterdir():
        os.link(f, root / "models/lorad" / f.name)
    for name in ("student_plain", "sdxl", "mismatched", "nan"):  # what the stock LoraLoader lists
        os.link(world["files"] / f"{name}.lorad.safetensors", root / f"models/loras/{name}.lorad.safetensors")
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((SIZE, SIZE, 3)) * 255).astype("uint8")).save(root / "input/example.png")
    controlnet_file(world, root / "models/controlnet/tiny_controlnet.safetensors")
    srv = comfy_live.Server(root, ROOT)
    yield srv
    srv.stop()
    if REPORT:
        print("\nComfyUI live report:", json.dumps(REPORT, indent=1))


def nan_file(good: Path, path: Path) -> None:
    """``good`` with one NaN angle (written around the writer's checks, as a damaged file would be)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(good))
    with safe_open(str(good), framework="pt") as f:
        md = {k: v for k, v in f.metadata().items() if k != "modelspec.hash_sha256"}
    first = sorted(k for k in tensors if k.endswith(".lorad_A"))[0]
    tensors[first][0, 0] = float("nan")
    save_file(tensors, str(path), metadata=md)


def controlnet_file(world, path: Path) -> None:
    """An ldm-format ControlNet (``control_model.*``) built from the tiny UNet (non-zero zero-convs)."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    torch.manual_seed(5)
    cn = ControlNetModel.from_unet(world["unet"])
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if torch.count_nonzero(p) == 0 and name.endswith("weight"):
                p.normal_(0, 0.02)
    save_file(comfy_live.controlnet_to_ldm(cn.state_dict()), str(path))


def api(name: str, **names) -> dict:
    g = json.loads((API / f"{name}.json").read_text())
    for node in g.values():
        inp = node["inputs"]
        if "ckpt_name" in inp:
            inp["ckpt_name"] = "tiny_sd15.safetensors"
        if inp.get("lorad_name") == "wadi_sd15.lorad.safetensors":
            inp["lorad_name"] = names.get("student", "student.lorad.safetensors")
        if inp.get("lorad_name") == "my_style.lorad.safetensors":
            inp["lorad_name"] = "style.lorad.safetensors"
        if node["class_type"] == "EmptyLatentImage":
            inp["width"] = inp["height"] = names.get("size", SIZE)
        if node["class_type"] == "ControlNetLoader":
            inp["control_net_name"] = "tiny_controlnet.safetensors"
    return g


def add_save_latent(g: dict, src: str, prefix: str) -> str:
    nid = str(max(int(k) for k in g) + 100)
    g[nid] = {"class_type": "SaveLatent", "inputs": {"samples": [src, 0], "filename_prefix": f"latents/{prefix}"}}
    return nid


def run_latent(server, g: dict, src: str, prefix: str) -> torch.Tensor:
    nid = add_save_latent(g, src, prefix)
    entry = server.run(g)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    return comfy_live.load_latent(comfy_live.output_file(server, entry, nid, "latents"))


def error_of(entry: dict) -> str:
    msgs = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
    return json.dumps(msgs)


def test_txt2img_equals_diffusers_reference(server, world):
    g = api("wadi_onestep_txt2img")
    got = run_latent(server, g, "4", "ref")
    unet, clip = copy.deepcopy(world["unet"]), copy.deepcopy(world["clip"])
    comfy_live.rotate_reference_(world["layers"], unet, clip)
    ref = comfy_live.reference_latent(unet, clip, g["2"]["inputs"]["text"], 0, got.shape, alpha_bar_first=0.0047)
    diff = (got - ref).abs().max().item()
    REPORT["max|comfy-diffusers| latent (x0/0.18215)"] = diff
    REPORT["max|latent|"] = ref.abs().max().item()
    assert diff <= 1e-5 * max(1.0, ref.abs().max().item()), diff
    base = comfy_live.reference_latent(world["unet"], world["clip"], g["2"]["inputs"]["text"], 0, got.shape, alpha_bar_first=0.0047)
    assert (got - base).abs().max() > 100 * diff  # the LoRaD did something


@pytest.mark.parametrize("steps,timesteps,expect", [(2, "", (999, 499)), (1, "999, 600, 250", (999, 600, 250)),
                                                     (1, "800", (800,))])
def test_few_steps_equal_diffusers_reference(server, world, steps, timesteps, expect):
    # (800,): one step from pure noise below 999, as a student trained with vsd.timestep 800 samples;
    # away from the file's own timestep the sampler takes abar from the schedule
    g = api("wadi_onestep_txt2img")
    g["4"]["inputs"].update(steps=steps, timesteps=timesteps, seed=7)
    got = run_latent(server, g, "4", f"steps{len(expect)}")
    unet, clip = copy.deepcopy(world["unet"]), copy.deepcopy(world["clip"])
    comfy_live.rotate_reference_(world["layers"], unet, clip)
    ref = comfy_live.reference_latent(unet, clip, g["2"]["inputs"]["text"], 7, got.shape, timesteps=expect,
                             alpha_bar_first=0.0047 if expect[0] == 999 else None)
    diff = (got - ref).abs().max().item()
    REPORT[f"max|comfy-diffusers| timesteps {expect}"] = diff
    assert diff <= 1e-5 * max(1.0, ref.abs().max().item()), diff


def test_strength_zero_is_base(server, world):
    g = api("wadi_onestep_txt2img")
    g["1"]["inputs"]["strength"] = 0.0
    zero = run_latent(server, g, "4", "zero")
    b = api("wadi_onestep_txt2img")
    b["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}}
    b["4"]["inputs"]["onestep"] = ["20", 2]  # same one-step settings, from an unpatched load
    b["20"] = {"class_type": "WaDiLoadLoRaD", "inputs": {"model": ["1", 0], "clip": ["1", 1], "strength_model": 0.0,
                                                        "strength_clip": 0.0, "lorad_name": "student.lorad.safetensors"}}
    base = run_latent(server, b, "4", "base")
    assert torch.equal(zero, base)
    ref = comfy_live.reference_latent(world["unet"], world["clip"], g["2"]["inputs"]["text"], 0, base.shape, alpha_bar_first=0.0047)
    assert (base - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_stock_loraloader_equals_load_lorad(server):
    ours = api("wadi_onestep_txt2img")
    ours["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}}
    ours["20"] = {"class_type": "WaDiLoadLoRaD", "inputs": {"model": ["1", 0], "clip": ["1", 1], "strength_model": 0.7,
                                                           "strength_clip": 0.7, "lorad_name": "student_plain.lorad.safetensors"}}
    ours["2"]["inputs"]["clip"] = ["20", 1]
    ours["4"]["inputs"]["model"] = ["20", 0]
    ours["4"]["inputs"]["onestep"] = ["20", 2]
    stock = copy.deepcopy(ours)
    stock["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "strength_model": 0.7,
                                                         "strength_clip": 0.7, "lora_name": "student_plain.lorad.safetensors"}}
    stock["4"]["inputs"].pop("onestep")  # no metadata in this file: both use the defaults (t=999, schedule)
    a = run_latent(server, ours, "4", "ours")
    b = run_latent(server, stock, "4", "stock")
    assert torch.equal(a, b)
    assert "lora key not loaded" not in server.read_log()


def test_stock_loraloader_refuses_bad_files_whole(server):
    """Stock Load LoRA: a bad .lorad applies nothing (the output is the plain checkpoint's, bit for bit),
    the console names the file; the good file's output is the same before and after."""
    plain = api("wadi_onestep_txt2img")
    plain["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}}
    plain["4"]["inputs"].pop("onestep")

    def with_lora(name: str) -> dict:
        g = copy.deepcopy(plain)
        g["20"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "strength_model": 1.0,
                                                         "strength_clip": 1.0, "lora_name": name}}
        g["2"]["inputs"]["clip"] = ["20", 1]
        g["4"]["inputs"]["model"] = ["20", 0]
        return g

    base = run_latent(server, plain, "4", "stock_plain")
    good = run_latent(server, with_lora("student_plain.lorad.safetensors"), "4", "stock_good")
    assert not torch.equal(good, base)
    for name, why in (("sdxl.lorad.safetensors", "made for 'sdxl'"),
                      ("mismatched.lorad.safetensors", "diffusion_model.input_blocks.1.1.proj_in"),
                      ("nan.lorad.safetensors", "non-finite")):
        got = run_latent(server, with_lora(name), "4", "stock_" + name.split(".")[0])
        assert torch.equal(got, base), f"{name}: something of the file was applied"
        log = server.read_log()
        line = [ln for ln in log.splitlines() if name in ln and "Nothing of this file was applied" in ln]
        assert line and why in line[-1], (name, log[-2000:])
        assert torch.equal(run_latent(server, with_lora("student_plain.lorad.safetensors"), "4", "stock_again"), good)


@pytest.mark.parametrize("name,expect", [
    ("corrupt.lorad.safetensors", "not a valid safetensors file"),
    ("sdxl.lorad.safetensors", "made for 'sdxl'"),
    ("mismatched.lorad.safetensors", "diffusion_model.input_blocks.1.1.proj_in"),
])
def test_bad_file_is_a_node_error_and_server_lives(server, name, expect):
    g = api("wadi_onestep_txt2img", student=name)
    entry = server.run(g)
    assert entry["status"]["status_str"] == "error"
    err = error_of(entry)
    assert expect in err and name.split(".")[0] in err, err
    if name.startswith("sdxl"):
        assert "SD15" in err  # both architectures named
    ok = run_latent(server, api("wadi_onestep_txt2img"), "4", "after_error")
    assert torch.isfinite(ok).all()


def test_hires_refine_is_exact_partial_denoise(server, world):
    g = api("wadi_hires_fix")
    g["7"]["inputs"].update(upscale_method="nearest-exact", scale_by=1.5)
    base = run_latent(server, copy.deepcopy(g), "4", "hires_base")
    got = run_latent(server, g, "8", "hires")
    unet, clip = copy.deepcopy(world["unet"]), copy.deepcopy(world["clip"])
    comfy_live.rotate_reference_(world["layers"], unet, clip)
    side = round(base.shape[-1] * 1.5)  # LatentUpscaleBy: size = round(side * scale), then interpolate
    up = torch.nn.functional.interpolate(base, size=(side, side), mode="nearest-exact")
    denoise = g["8"]["inputs"]["denoise"]
    ref = comfy_live.reference_latent(unet, clip, g["2"]["inputs"]["text"], 1, up.shape, timesteps=(denoise * 999,),
                             start_latent=up)
    diff = (got - ref).abs().max().item()
    REPORT["max|comfy-diffusers| hires refine at t=0.45*999"] = diff
    assert diff <= 1e-5 * max(1.0, ref.abs().max().item()), diff


@pytest.mark.parametrize("name", ["wadi_controlnet", "wadi_scalecrafter_highres", "wadi_personalization_stack"])
def test_workflow_runs(server, name):
    g = api(name)
    if name == "wadi_scalecrafter_highres":
        g["9"]["inputs"].update(width=SIZE, height=SIZE, train_resolution=SIZE // 2)
    entry = server.run(g)
    assert entry["status"]["status_str"] == "success", error_of(entry)[:3000]
    img = [v for v in entry["outputs"].values() if "images" in v]
    assert img, entry["outputs"]
