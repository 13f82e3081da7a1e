"""Our file keys against ComfyUI's own key maps, read from a ComfyUI source tree at test time.

ComfyUI is not a dependency: these tests run when ``COMFYUI_DIR`` points to a
ComfyUI checkout (or this pack sits in ``ComfyUI/custom_nodes/``) and are skipped
otherwise.  Only the plain data tables and the two pure mapping functions are
taken from ``comfy/utils.py`` (parsed with ``ast``, no ComfyUI import, nothing
copied into this repository).
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
from wadi_lorad.lorad import keymap
from wadi_lorad.lorad.archs import build_meta, load_config
from wadi_lorad.lorad.io import SUFFIXES
from wadi_lorad.lorad.presets import PRESETS, match_modules

pytestmark = pytest.mark.comfyui


def _comfy_dir() -> Path | None:
    for cand in (os.environ.get("COMFYUI_DIR"), Path(__file__).resolve().parents[3]):
        if cand and (Path(cand) / "comfy" / "utils.py").is_file():
            return Path(cand)
    return None


COMFY = _comfy_dir()
needs_comfy = pytest.mark.skipif(COMFY is None, reason="set COMFYUI_DIR to a ComfyUI checkout")


def _load(names: set[str]) -> dict:
    """Execute only the named top-level assignments/functions of comfy/utils.py in a fresh namespace."""
    tree = ast.parse((COMFY / "comfy" / "utils.py").read_text(encoding="utf-8"))
    keep = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            keep.append(node)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) in names for t in node.targets):
            keep.append(node)
    ns: dict = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), "comfy/utils.py", "exec"), ns)
    return ns


def _comfy_unet_config(cfg: dict) -> dict:
    """ComfyUI's unet_config fields that unet_to_diffusers reads, derived from a diffusers config."""
    levels = len(cfg["block_out_channels"])
    lpb = cfg.get("layers_per_block", 2)
    lpb = [lpb] * levels if isinstance(lpb, int) else list(lpb)
    tl = cfg.get("transformer_layers_per_block", 1)
    tl = [tl] * levels if isinstance(tl, int) else list(tl)
    attn_down = [t.startswith("CrossAttn") for t in cfg["down_block_types"]]
    depth = [tl[b] if attn_down[b] else 0 for b in range(levels) for _ in range(lpb[b])]
    depth_out = [tl[b] if attn_down[b] else 0 for b in range(levels) for _ in range(lpb[b] + 1)]
    return {"num_res_blocks": lpb, "channel_mult": [1] * levels, "transformer_depth": depth,
            "transformer_depth_output": depth_out, "transformer_depth_middle": tl[-1]}


@needs_comfy
@pytest.mark.parametrize("arch", ["sd15", "sd21", "sdxl"])
def test_unet_keys_equal_comfyui_unet_to_diffusers(arch):
    ns = _load({"UNET_MAP_ATTENTIONS", "TRANSFORMER_BLOCKS", "UNET_MAP_RESNET", "UNET_MAP_BASIC", "unet_to_diffusers"})
    comfy_map = ns["unet_to_diffusers"](_comfy_unet_config(load_config(arch)))
    model = build_meta(arch)
    sd = model.state_dict()
    km = keymap.unet_keymap(arch)
    checked = [k for k in comfy_map if k in sd]
    assert len(checked) > 0.9 * len(sd)
    assert all(km.ldm(k) == comfy_map[k] for k in checked)
    # Every paper-student layer is covered by ComfyUI's table and lands on our file key.
    for name, _ in match_modules(model, PRESETS["paper-student"]["unet"]):
        assert "diffusion_model." + comfy_map[name + ".weight"] == keymap.to_file_key(arch, name) + ".weight"


@needs_comfy
@pytest.mark.parametrize("arch", ["pixart-alpha", "pixart-alpha-512"])
def test_pixart_keys_resolve_through_comfyui_pixart_map(arch):
    ns = _load({"PIXART_MAP_BASIC", "PIXART_MAP_BLOCK", "pixart_to_diffusers"})
    cfg = load_config(arch)
    comfy_map = ns["pixart_to_diffusers"]({"depth": cfg["num_layers"], "hidden_size": 1152},
                                          output_prefix="diffusion_model.")
    model = build_meta(arch)
    for name, _ in match_modules(model, PRESETS["all-linear"]["dit"]):
        key = keymap.to_file_key(arch, name)
        # ComfyUI's model_lora_keys_unet registers "transformer.<diffusers path>" for every mapped weight.
        assert key == "transformer." + name and name + ".weight" in comfy_map
        want = comfy_map[name + ".weight"]
        target, offset = keymap.comfy_target(arch, key)
        assert (target, offset) == (want if isinstance(want, tuple) else (want, None))
    for k, v in comfy_map.items():  # the native rules agree on every key ComfyUI knows, biases included
        native, offset = keymap.pixart_native(k)
        assert ("diffusion_model." + native, offset) == (v if isinstance(v, tuple) else (v, None))


@needs_comfy
@pytest.mark.parametrize("arch, component, clip", [("sd15", "text_encoder", "clip_l"), ("sd21", "text_encoder", "clip_h"),
                                                   ("sdxl", "text_encoder_2", "clip_g")])
def test_text_encoder_keys_are_comfyui_clip_weights(arch, component, clip):
    src = (COMFY / "comfy" / "lora.py").read_text(encoding="utf-8")
    template = re.search(rf'"({clip}\.transformer\.text_model\.encoder\.layers\.{{}}\.{{}}\.weight)"', src).group(1)
    clip_map = ast.literal_eval(re.search(r"LORA_CLIP_MAP = (\{.*?\})", src, re.S).group(1))
    layers = load_config(arch, component)["num_hidden_layers"]
    for b in range(layers):
        for c in clip_map:
            key = keymap.to_file_key(arch, f"text_model.encoder.layers.{b}.{c}", component)
            assert keymap.comfy_target(arch, key) == (template.format(b, c), None)
            # ComfyUI's generic CLIP spelling is "text_encoders." + model key without ".weight".
            assert key == "text_encoders." + template.format(b, c)[: -len(".weight")]


@needs_comfy
def test_no_comfyui_adapter_claims_lorad_suffixes():
    claimed = set()
    for f in [COMFY / "comfy" / "lora.py", *(COMFY / "comfy" / "weight_adapter").glob("*.py")]:
        claimed |= set(re.findall(r'"\{\}([._][A-Za-z0-9_.]+)"', f.read_text(encoding="utf-8")))
    assert ".lora_A" in claimed and ".alpha" in claimed  # the scan works
    assert not set(SUFFIXES.values()) & claimed


# -- full size, through ComfyUI's own model object and key map ---------------------------------------------
# The tests above read ComfyUI's tables without importing it.  These import the real ComfyUI (skipped where
# it cannot be imported: run them with scripts/comfyui-tests.sh) and build its MODEL for each full-size
# architecture on the meta device: ComfyUI's own detection from the diffusers layout (what its Load Diffusion
# Model does with a diffusers folder), its own model class, its own ``comfy.lora.model_lora_keys_unet``.
# Names and shapes only: no weight is allocated, so SDXL's 2.6B parameters cost nothing.
def _real_comfy():
    import comfy_live

    why = comfy_live.comfy_importable()
    if why:
        pytest.skip(why)
    comfy_live.import_comfy()
    import comfy_env

    comfy_env.comfy_for_tests()  # the pack's ``nodes`` import against the real ComfyUI


def _comfy_model_meta(arch: str):
    import comfy.model_detection as detection
    from wadi_lorad.lorad.archs import get_arch

    sd = build_meta(arch).state_dict()
    if get_arch(arch).family == "dit":  # diffusers PixArt -> native keys, ComfyUI's own converter
        native = detection.convert_diffusers_mmdit(dict(sd), "")
        config = detection.model_config_from_unet(native, "")
    else:
        native, config = sd, detection.model_config_from_diffusers_unet(sd)
    assert config is not None, f"ComfyUI does not detect {arch}"
    return config.get_model(native, "", device="meta")


# (arch, preset, rank, layers): the paper's layer counts where the paper gives them (tests/test_archs_counts.py);
# SDXL's and the conv preset's counts are whatever the preset selects (checked against inject's own list).
FULL_SIZE = [
    ("sd15", "paper-student", 256, 182),
    ("sd15", "paper-fake", 32, 160),
    ("sd21", "paper-student", 256, 214),
    ("sdxl", "paper-student", 256, None),
    ("sdxl", "blocks-linear-conv", 256, None),
    ("pixart-alpha", "paper-student", 128, 283),
    ("pixart-alpha-512", "paper-student", 128, 283),
]


@pytest.mark.parametrize("arch, preset, rank, layers", FULL_SIZE)
def test_full_size_file_keys_resolve_through_comfyui_model_lora_keys_unet(arch, preset, rank, layers):
    _real_comfy()
    import comfy.lora
    from wadi_lorad.lorad import inject
    from wadi_lorad.lorad import io as lorad_io
    from wadi_lorad.nodes import resolve

    model = build_meta(arch)
    names = inject.inject(model, "student", preset, rank=rank)
    assert layers is None or len(names) == layers
    # The writer's key logic (save_lorad writes exactly these tensor names; only the values are missing).
    file_layers = lorad_io.layers_from_adapter_state(arch, inject.adapter_state(model, "student"))
    header = [key + SUFFIXES[part] for key, parts in file_layers.items() for part in parts]
    assert len(file_layers) == len(names) and len(header) == 2 * len(names)

    cmodel = _comfy_model_meta(arch)
    key_map = comfy.lora.model_lora_keys_unet(cmodel, {})
    shapes = {k: tuple(v.shape) for k, v in cmodel.state_dict().items()}
    # The Load LoRaD node's resolution (nodes/resolve.py) against ComfyUI's own key map: all or nothing.
    resolved, unknown = resolve.resolve(file_layers, key_map, shapes, f"{arch}.lorad")
    assert unknown == [] and len(resolved) == len(names)
    resolve.check_unique(resolved, f"{arch}.lorad")
    # The library's own view of each target (lorad/keymap.py) is ComfyUI's.
    for r in resolved:
        target, offset = keymap.comfy_target(arch, r.prefix)
        assert r.patch_key == (target if offset is None else (target, offset))
    # The library's validation with ComfyUI's shapes: every key matched, every A/B shape fits.
    file = lorad_io.LoRaDFile(None, file_layers, {})
    assert len(lorad_io.validate_layers(file, keymap.comfy_weight_shapes(arch, file_layers, shapes))) == len(names)
    print(f"{arch} {preset} r{rank}: {len(names)} layers, {len(header)} tensors, all resolve in ComfyUI "
          f"{type(cmodel.model_config).__name__}/{type(cmodel).__name__}")


@pytest.mark.slow
def test_full_size_sd15_file_written_read_back_and_resolved_by_the_pack(tmp_path):
    """One real full-size file (SD1.5 paper-student r256, fp16, 168 MB): written by ``save_lorad``, read by the
    pack's reader, every layer resolved against ComfyUI's own SD15 model and key map."""
    _real_comfy()
    import comfy.lora
    import torch
    from wadi_lorad.lorad import inject
    from wadi_lorad.lorad import io as lorad_io
    from wadi_lorad.lorad.metadata import build_metadata
    from wadi_lorad.nodes import resolve
    from wadi_lorad.nodes.lorad_file import read_lorad

    model = build_meta("sd15")
    inject.inject(model, "student", "paper-student", rank=256)
    shapes = {name: {k: t.shape for k, t in parts.items()} for name, parts in inject.adapter_state(model, "student").items()}
    g = torch.Generator().manual_seed(0)
    state = {name: {"A": torch.randn(s["A"], generator=g) * 1e-3, "B": torch.randn(s["B"], generator=g) * 0.05}
             for name, s in shapes.items()}  # random non-zero angles
    layers = lorad_io.layers_from_adapter_state("sd15", state)
    path = lorad_io.save_lorad(tmp_path / "sd15_student.lorad.safetensors", layers,
                               build_metadata(arch="sd15", rank=256, target_preset="paper-student", title="full size"),
                               dtype=torch.float16)
    info = read_lorad(str(path))
    assert len(info.layers) == 182 and info.rank == 256
    cmodel = _comfy_model_meta("sd15")
    model_shapes = {k: tuple(v.shape) for k, v in cmodel.state_dict().items()}
    resolved, unknown = resolve.resolve(info.layers, comfy.lora.model_lora_keys_unet(cmodel, {}), model_shapes,
                                        str(path))
    assert unknown == [] and len(resolved) == 182
    assert sum(t.numel() for parts in info.layers.values() for t in parts.values()) == 83_795_968
