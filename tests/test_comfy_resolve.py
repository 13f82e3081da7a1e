"""File keys -> ComfyUI model keys for SD1.5, SD2.1, SDXL and PixArt (meta-device models).

The key maps and shapes are ComfyUI's own (``comfy.lora.model_lora_keys_unet`` on meta
models), committed in tests/data by tests/tools/extract_comfy_core.py; with COMFYUI_DIR
they are recomputed live and must equal the committed copy.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import comfy_env
import pytest
import torch
from wadi_lorad.nodes.resolve import (
    LoRaDMatchError,
    arch_family,
    check_arch,
    check_unique,
    report_unmatched,
    resolve,
)

DATA = json.load(gzip.open(Path(__file__).parent / "data" / "comfy_keymaps.json.gz", "rt"))["archs"]
# Student layer counts of the paper's preset (every Linear in the UNet blocks; PixArt: all but adaln_single).
EXPECTED_LAYERS = {"sd15": 182, "sd21": 214, "pixart": 283}


def student_layers(arch: str) -> dict[str, dict[str, torch.Tensor]]:
    """Layers a WaDi student file holds, spelled as the .lorad format does, with meta factors."""
    a = DATA[arch]
    shapes, km = a["shapes"], a["key_map"]
    layers = {}
    if arch == "pixart":
        for k, v in km.items():
            if k.startswith("transformer.adaln_single"):
                continue
            key, off = (v, None) if isinstance(v, str) else (v[0], v[1])
            s = list(shapes.get(key, ()))
            if len(s) != 2:
                continue
            if off:
                s[off[0]] = off[2]
            layers[k] = {"A": torch.empty(s[0], 4, device="meta"), "B": torch.empty(4, s[1] // 2, device="meta")}
        return layers
    for k, s in shapes.items():
        if re.match(r"diffusion_model\.(input_blocks|middle_block|output_blocks)\.", k) and len(s) == 2:
            layers[k[: -len(".weight")]] = {"A": torch.empty(s[0], 4, device="meta"),
                                            "B": torch.empty(4, s[1] // 2, device="meta")}
    return layers


@pytest.mark.parametrize("arch", ["sd15", "sd21", "sdxl", "pixart"])
def test_every_student_layer_maps_to_exactly_one_weight(arch):
    layers = student_layers(arch)
    if arch in EXPECTED_LAYERS:
        assert len(layers) == EXPECTED_LAYERS[arch]
    done, unknown = resolve(layers, DATA[arch]["key_map"], DATA[arch]["shapes"], f"{arch}.lorad")
    assert unknown == [] and len(done) == len(layers)
    check_unique(done, arch)
    assert len({r.prefix for r in done}) == len(done)
    if arch == "pixart":  # q/k/v rows of each fused qkv tile it exactly, without overlap
        fused = {}
        for r in done:
            if isinstance(r.patch_key, (tuple, list)):
                fused.setdefault(r.model_key, []).append(tuple(r.patch_key[1]))
        assert len(fused) == 2 * 28  # attn.qkv and cross_attn.kv_linear per block
        for key, offs in fused.items():
            rows = DATA[arch]["shapes"][key][0]
            spans = sorted((o[1], o[1] + o[2]) for o in offs)
            assert spans[0][0] == 0 and spans[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    else:
        assert all(r.patch_key == r.prefix + ".weight" for r in done)


def test_wrong_shapes_and_unknown_keys_are_refused_before_anything():
    layers = student_layers("sd15")
    key = next(iter(layers))
    bad = dict(layers)
    bad[key] = {"A": torch.empty(3, 4), "B": torch.empty(4, 5)}
    with pytest.raises(LoRaDMatchError, match=re.escape(key)):
        resolve(bad, DATA["sd15"]["key_map"], DATA["sd15"]["shapes"], "f.lorad")
    # an SDXL file on SD1.5: most keys match no weight -> one error listing them
    xl = student_layers("sdxl")
    done, unknown = resolve({k: v for k, v in xl.items() if k not in DATA["sd15"]["key_map"]},
                            DATA["sd15"]["key_map"], DATA["sd15"]["shapes"], "xl.lorad")
    with pytest.raises(LoRaDMatchError, match="match no weight"):
        report_unmatched(unknown, len(xl), "xl.lorad", "model")


def test_architecture_names():
    assert arch_family("stable-diffusion-v1/lorad") == arch_family("SD15") == "sd1"
    assert arch_family("stable-diffusion-v2-1") == arch_family("SD21UnclipL") == arch_family("SD20") == "sd2"
    assert arch_family("stable-diffusion-xl-v1-base") == arch_family("SDXL") == "sdxl"
    assert arch_family("PixArtAlpha") == arch_family("pixart-alpha") == "pixart"
    assert arch_family("SD15_instructpix2pix") == "sd1"
    check_arch("stable-diffusion-v1", "SD15", "f")
    check_arch(None, "SDXL", "f")  # no arch recorded: the key check decides
    with pytest.raises(LoRaDMatchError) as e:
        check_arch("stable-diffusion-xl-v1-base", "SD15", "f.lorad")
    assert "stable-diffusion-xl-v1-base" in str(e.value) and "SD15" in str(e.value)
    with pytest.raises(LoRaDMatchError, match="Flux"):
        check_arch("stable-diffusion-v1", "Flux", "f.lorad")


@pytest.mark.comfyui
@pytest.mark.skipif(comfy_env.comfy_for_tests() != "real", reason="COMFYUI_DIR not importable: committed key maps only")
def test_committed_key_maps_equal_live_comfyui():
    import importlib.util

    spec = importlib.util.spec_from_file_location("extract", Path(__file__).parent / "tools" / "extract_comfy_core.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    live = json.loads(json.dumps(mod.keymaps(), sort_keys=True))
    assert live == DATA


@pytest.mark.parametrize("arch,comfy_arch", [("sd15", "sd15"), ("sd21", "sd21"), ("sdxl", "sdxl"),
                                             ("pixart-alpha-512", "pixart")])
def test_trainer_file_keys_resolve_in_comfyui(arch, comfy_arch):
    """The keys the trainer writes (paper-student on the diffusers model, spelled by lorad.keymap)
    land 1:1 on ComfyUI weights of the same shape (fused PixArt qkv: on their rows)."""
    from wadi_lorad.lorad import keymap as KM
    from wadi_lorad.lorad.archs import build_meta
    from wadi_lorad.lorad.presets import match_modules, resolve_targets

    model = build_meta(arch)
    layers = {}
    for name, mod in match_modules(model, resolve_targets(model, "paper-student")):
        out, width = mod.weight.shape[0], mod.weight[0].numel()
        layers[KM.to_file_key(arch, name)] = {"A": torch.empty(out, 4, device="meta"),
                                              "B": torch.empty(4, width // 2, device="meta")}
    done, unknown = resolve(layers, DATA[comfy_arch]["key_map"], DATA[comfy_arch]["shapes"], arch)
    assert unknown == [] and len(done) == len(layers)
    check_unique(done, arch)
    if comfy_arch in EXPECTED_LAYERS:
        assert len(layers) == EXPECTED_LAYERS[comfy_arch]
