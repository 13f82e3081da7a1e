"""One ``.lorad`` file, one meaning, in every path: a conformance matrix against a scalar reference.

The same files (factored with |A @ B| > pi, and dense with |theta| > pi) at strengths
0, 0.5, 1, -1, 2 on fp32 and fp16 bases, in the tiny-world layout (the shipped teacher's own
weights, ``lorad.layout`` in the file) and in the full-size SD1.5 layout (real keys and shapes,
random weights, a few layers), go through

* ``api``     ``lorad.checkpoint.merge_state`` (what ``lorad merge`` calls),
* ``cli``     ``lorad merge BASE FILE OUT --strength S``, read back from disk,
* ``inject``  the trainer's modules (``inject.load_adapter_state``): forward output and weight,
* ``sample``  ``wadi sample``'s loader (``cmd_sample.load_extra_adapters``, FILE:STRENGTH), and in
              the tiny world a one-step ``lorad.onestep.generate`` of the teacher UNet equal to the
              merged teacher's (full size: a meta UNet with the tested layers materialised),
* ``comfy_lorad``   ComfyUI Load LoRaD (``nodes.patching.apply``) then ComfyUI's own patching,
* ``comfy_stock``   ComfyUI's stock LoraLoader path (``comfy.sd.load_lora_for_models``),
* ``comfy_lowvram`` Load LoRaD under lowvram (``LowVramPatch`` on every forward),

and must give the bits of the canonical layer (``LayerSpec.rotated``) and lie within float
rounding of an independent reference: a plain Python loop over rows and pairs in float64
(``theta = s * wrap(theta_raw)`` with the floored modulo of the spec).  Tolerance: 1e-6 for
fp32 bases; for fp16 bases half an fp16 ulp of the reference (the cast every path must do)
plus 1e-6.  The ComfyUI rows (marked ``comfyui``; scripts/comfyui-tests.sh runs them) need
``COMFYUI_DIR`` (and fail, not skip, if that ComfyUI cannot be imported).  Max errors per path: printed at the end; with
``WADI_CONFORMANCE_JSON=path`` also written there (docs/perf/conformance.json).
"""

from __future__ import annotations

import json
import math
import os
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from wadi_lorad.lorad import inject
from wadi_lorad.lorad.checkpoint import merge_state
from wadi_lorad.lorad.io import build_metadata, save_lorad
from wadi_lorad.lorad.layer_spec import LayerSpec
from wadi_lorad.lorad.metadata import K_LAYOUT
from wadi_lorad.trainer.tinyworld.metrics import DEFAULT_TEACHER

STRENGTHS = (0.0, 0.5, 1.0, -1.0, 2.0)
FORMS = ("factored", "dense")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
LAYOUTS = ("tiny", "full")
PATHS = ("api", "cli", "inject", "sample", "comfy_lorad", "comfy_stock", "comfy_lowvram")

# Real keys of each layout: attention Linear, a ResBlock Linear and a 1x1 Conv2d (tiny);
# an attention Linear and a 1x1 Conv2d at full SD1.5 size (320 x 320).
KEYS = {
    "tiny": ("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q",
             "diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k",
             "diffusion_model.input_blocks.1.0.emb_layers.1",
             "diffusion_model.output_blocks.2.1.proj_in"),
    "full": ("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q",
             "diffusion_model.output_blocks.11.1.proj_out"),
}
RESULTS: dict[str, float] = {}
# fp16 bases: the share of elements that differ from the reference rounded to fp16 (the fp32
# arithmetic before the cast can land on the other side of a rounding boundary, nothing more).
ULPS16: dict[str, float] = {}


# -- the independent reference ------------------------------------------------------------
def scalar_rotate(weight: torch.Tensor, parts: dict, strength: float) -> list[list[float]]:
    """Spec section 3 as a plain loop: float64 Python numbers, no torch arithmetic."""
    rows = weight.reshape(weight.shape[0], -1).double().tolist()
    if "theta" in parts:
        raw = parts["theta"].double().tolist()
    else:
        a, b = parts["A"].double().tolist(), parts["B"].double().tolist()
        raw = [[sum(a[i][r] * b[r][k] for r in range(len(b))) for k in range(len(b[0]))] for i in range(len(a))]
    out = []
    for i, row in enumerate(rows):
        new = list(row)
        for k in range(len(row) // 2):
            t = strength * (((raw[i][k] + math.pi) % (2 * math.pi)) - math.pi)
            c, s = math.cos(t), math.sin(t)
            x, y = row[2 * k], row[2 * k + 1]
            new[2 * k], new[2 * k + 1] = c * x - s * y, s * x + c * y
        out.append(new)
    return out


def max_error(got: torch.Tensor, ref: list[list[float]], dtype: torch.dtype) -> float:
    """Max |got - ref| after checking it is within the rounding the weight dtype forces."""
    ref64 = torch.tensor(ref, dtype=torch.float64)
    err = (got.reshape(got.shape[0], -1).double() - ref64).abs()
    bound = torch.full_like(ref64, 1e-6)
    if dtype == torch.float16:
        bound += ulp16(ref64) / 2
    assert bool((err <= bound).all()), f"max error {float(err.max()):.3g} beyond dtype rounding"
    return float(err.max())


def ulp16(x: torch.Tensor) -> torch.Tensor:
    h = x.abs().to(torch.float16)
    return (torch.nextafter(h, torch.tensor(float("inf"), dtype=torch.float16)) - h).double()


# -- the files and bases --------------------------------------------------------------------
@cache
def layout_info(layout: str):
    """(file key -> (diffusers module name, weight shape), lorad.layout or None, base fp32 weights)."""
    from wadi_lorad.lorad import keymap
    from wadi_lorad.lorad.archs import build_meta

    if layout == "tiny":
        cfg = json.loads((DEFAULT_TEACHER / "unet" / "config.json").read_text())
        lay = keymap.layout_of(cfg, "unet")
        state = load_file(str(DEFAULT_TEACHER / "unet" / "diffusion_pytorch_model.safetensors"))
        names = {keymap.to_module_name("sd15", k, lay)[1]: k for k in KEYS["tiny"]}
        base = {k: state[n + ".weight"].float() for n, k in names.items()}
        return {k: (n, tuple(base[k].shape)) for n, k in names.items()}, lay, base
    meta = build_meta("sd15")
    g = torch.Generator().manual_seed(3)
    info, base = {}, {}
    for k in KEYS["full"]:
        name = keymap.to_module_name("sd15", k)[1]
        shape = tuple(meta.get_submodule(name).weight.shape)  # real SD1.5 shapes
        info[k] = (name, shape)
        base[k] = torch.randn(shape, generator=g) * 0.05
    return info, None, base


@cache
def layers_of(layout: str, form: str) -> dict:
    info, _, _ = layout_info(layout)
    g = torch.Generator().manual_seed(7 if form == "dense" else 5)
    layers = {}
    for k, (_, shape) in info.items():
        out, pairs = shape[0], math.prod(shape[1:]) // 2
        if form == "dense":
            layers[k] = {"theta": (torch.rand(out, pairs, generator=g) * 2 - 1) * 2.5 * math.pi}
        else:
            layers[k] = {"A": torch.randn(out, 3, generator=g), "B": torch.randn(3, pairs, generator=g)}
    return layers


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("conformance")
    out = {}
    for layout in LAYOUTS:
        _, lay, _ = layout_info(layout)
        for form in FORMS:
            layers = layers_of(layout, form)
            biggest = max(float(LayerSpec.from_parts(t, k).angles(1.0).abs().max()) for k, t in layers.items())
            raw = max(float((t["A"] @ t["B"] if "A" in t else t["theta"]).abs().max()) for t in layers.values())
            assert raw > math.pi and biggest <= math.pi  # the files exercise the wrap
            md = build_metadata(arch="sd15", rank=3 if form == "factored" else None, target_preset="custom",
                                title=f"{layout} {form}")
            if lay is not None:
                md[K_LAYOUT] = json.dumps(lay, sort_keys=True)
            path = root / f"{layout}_{form}.lorad.safetensors"
            save_lorad(path, layers, md)
            out[(layout, form)] = path
    return out


def base_weights(layout: str, dtype: torch.dtype) -> dict:
    return {k: w.to(dtype) for k, w in layout_info(layout)[2].items()}


@cache
def reference(layout: str, form: str, dname: str, strength: float) -> dict:
    base = base_weights(layout, DTYPES[dname])
    return {k: scalar_rotate(base[k], t, strength) for k, t in layers_of(layout, form).items()}


def canonical(layout: str, form: str, dtype: torch.dtype, strength: float) -> dict:
    base = base_weights(layout, dtype)
    return {k: LayerSpec.from_parts(t, k).rotated(base[k], strength) for k, t in layers_of(layout, form).items()}


def check(path: str, layout: str, dname: str, form: str, strength: float, got: dict) -> None:
    """``got``: file key -> the weight this path uses; bit-equal to the canonical layer, near the reference."""
    dtype = DTYPES[dname]
    want = canonical(layout, form, dtype, strength)
    ref = reference(layout, form, dname, strength)
    for k, w in got.items():
        assert w.dtype == dtype, (path, k, w.dtype)
        assert torch.equal(w, want[k]), f"{path} {layout} {dname} {form} s={strength} {k}: not the canonical bits"
        err = max_error(w, ref[k], dtype)
        key = f"{path}/{layout}/{dname}"
        RESULTS[key] = max(RESULTS.get(key, 0.0), err)
        if dtype == torch.float16:
            ref64 = torch.tensor(ref[k], dtype=torch.float64)
            off = w.reshape(w.shape[0], -1) != ref64.to(torch.float16)
            ULPS16[key] = max(ULPS16.get(key, 0.0), float(off.double().mean()))
    if strength == 0:
        base = base_weights(layout, dtype)
        assert all(torch.equal(got[k], base[k]) for k in got)  # s = 0 leaves the weight bit-exact


# -- paths ------------------------------------------------------------------------------------
def run_api(layout, dname, form, strength, files):
    base = base_weights(layout, DTYPES[dname])
    merged = merge_state(base, layers_of(layout, form), strength)
    return {k: merged[k] for k in base}


def run_cli(layout, dname, form, strength, files, tmp):
    from wadi_lorad.lorad.cli import main

    base = base_weights(layout, DTYPES[dname])
    src = tmp / f"base_{layout}_{dname}.safetensors"
    if not src.exists():
        save_file({"model." + k + ".weight": w.contiguous() for k, w in base.items()}, str(src))
    out = tmp / f"m_{layout}_{dname}_{form}_{strength}.safetensors"
    assert main(["merge", str(src), str(files[(layout, form)]), str(out), f"--strength={strength}", "-q"]) == 0
    merged = load_file(str(out))
    return {k: merged["model." + k + ".weight"] for k in base}


def module_tree(layout: str, dtype: torch.dtype, ops=torch.nn) -> torch.nn.Module:
    """Linear/Conv2d modules at the file keys' paths holding the base weights (zero bias)."""
    root = torch.nn.Module()
    for k, w in base_weights(layout, dtype).items():
        parent = root
        *path, leaf = k.split(".")
        for p in path:
            if not hasattr(parent, p):
                parent.add_module(p, torch.nn.Module())
            parent = getattr(parent, p)
        if w.dim() == 2:
            m = ops.Linear(w.shape[1], w.shape[0], dtype=dtype)
        else:
            m = ops.Conv2d(w.shape[1], w.shape[0], w.shape[2:], dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(w)
            m.bias.zero_()
        parent.add_module(leaf, m)
    return root


def probe(w: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    shape = (2, w.shape[1]) if w.dim() == 2 else (1, w.shape[1], 3, 3)
    return torch.randn(shape, generator=g).to(w.dtype)


def plain_forward(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w) if w.dim() == 2 else F.conv2d(x, w)


def run_inject(layout, dname, form, strength, files):
    dtype = DTYPES[dname]
    model = module_tree(layout, dtype)
    inject.load_adapter_state(model, "s", layers_of(layout, form))
    inject.set_strength(model, "s", strength)
    inject.set_active(model, "s")
    want = canonical(layout, form, dtype, strength)
    got = {}
    with torch.no_grad():
        for k in want:
            layer = model.get_submodule(k)
            x = probe(want[k])
            y = layer(x)
            assert torch.equal(y, plain_forward(x, want[k])), f"inject forward {k}"  # the bias is zero
            got[k] = layer.rotated_weight()
    return got


@cache
def tiny_unet(dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(DEFAULT_TEACHER / "unet")).to(dtype).eval()


def run_sample(layout, dname, form, strength, files):
    """``wadi sample --adapter FILE:S`` loading, then one step; equal to the merged teacher's step."""
    import copy

    from diffusers import DDPMScheduler
    from wadi_lorad.lorad.onestep import generate
    from wadi_lorad.trainer.cmd_sample import load_extra_adapters

    dtype = DTYPES[dname]
    if layout == "full":
        return full_size_sample_loader(dtype, files[(layout, form)], strength)
    unet = copy.deepcopy(tiny_unet(dtype))
    names = load_extra_adapters(SimpleNamespace(denoiser=unet), [f"{files[(layout, form)]}:{strength}"])
    inject.set_active(unet, names)
    info, _, _ = layout_info(layout)
    want = canonical(layout, form, dtype, strength)
    merged = copy.deepcopy(tiny_unet(dtype))
    with torch.no_grad():
        for k, (name, _) in info.items():
            merged.get_submodule(name).weight.copy_(want[k])
    ac = DDPMScheduler.from_pretrained(str(DEFAULT_TEACHER / "scheduler")).alphas_cumprod
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 8, 8, generator=g).to(dtype)
    cond = torch.randn(1, 4, unet.config.cross_attention_dim, generator=g).to(dtype)
    with torch.no_grad():
        a = generate(lambda x, t: unet(x, t, cond).sample, noise, ac, (999,))
        b = generate(lambda x, t: merged(x, t, cond).sample, noise, ac, (999,))
    assert torch.equal(a, b), "one step with the loaded file != one step with the merged weights"
    return {k: unet.get_submodule(info[k][0]).rotated_weight() for k in info}


def full_size_sample_loader(dtype: torch.dtype, path, strength: float) -> dict:
    """The same loader on a full-size SD1.5 UNet built on ``meta`` with only the tested layers
    materialised: the file's keys resolve through the real layout and rotate those weights
    (no full-size forward on a CPU test box, so no one-step comparison here)."""
    from wadi_lorad.lorad.archs import build_meta
    from wadi_lorad.trainer.cmd_sample import load_extra_adapters

    unet = build_meta("sd15")
    info, _, _ = layout_info("full")
    base = base_weights("full", dtype)
    for k, (name, _) in info.items():
        unet.get_submodule(name).weight = torch.nn.Parameter(base[k].clone(), requires_grad=False)
    names = load_extra_adapters(SimpleNamespace(denoiser=unet), [f"{path}:{strength}"])
    inject.set_active(unet, names)
    return {k: unet.get_submodule(name).rotated_weight() for k, (name, _) in info.items()}


# -- ComfyUI ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def comfy():
    import comfy_live

    comfy_live.require_comfy("the ComfyUI rows run where a real ComfyUI is present")
    import wadi_lorad.nodes.pack  # noqa: F401  registers the weight adapter, as loading the pack does

    return True


def comfy_model(layout: str, dtype: torch.dtype):
    """A ComfyUI ModelPatcher over the layers' weights at their real ``diffusion_model.`` keys (SD15 config)."""
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models

    tree = module_tree(layout, dtype, comfy.ops.disable_weight_init)
    model = torch.nn.Module()
    model.diffusion_model = tree.diffusion_model
    model.model_config = comfy.supported_models.SD15(dict(comfy.supported_models.SD15.unet_config))
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


def patched_weights(patcher, keys) -> dict:
    patcher.patch_model(device_to=torch.device("cpu"))
    try:
        return {k: patcher.model.get_submodule(k).weight.detach().clone() for k in keys}
    finally:
        patcher.unpatch_model(device_to=torch.device("cpu"))


def run_comfy_lorad(layout, dname, form, strength, files):
    from wadi_lorad.nodes import patching
    from wadi_lorad.nodes.lorad_file import read_lorad

    base = comfy_model(layout, DTYPES[dname])
    m, _, n, _ = patching.apply(read_lorad(str(files[(layout, form)])), base, None, strength, strength)
    assert n == len(KEYS[layout])
    got = patched_weights(m, KEYS[layout])
    assert all(torch.equal(base.model.get_submodule(k).weight, base_weights(layout, DTYPES[dname])[k])
               for k in KEYS[layout])  # the input model is untouched
    return got


def run_comfy_stock(layout, dname, form, strength, files):
    import comfy.sd
    import comfy.utils
    import folder_paths

    path = files[(layout, form)]
    if str(path.parent) not in folder_paths.get_folder_paths("loras"):
        folder_paths.add_model_folder_path("loras", str(path.parent))  # where LoraLoader finds LoRA files
    base = comfy_model(layout, DTYPES[dname])
    sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    m, _ = comfy.sd.load_lora_for_models(base, None, sd, strength, 0)
    assert len(m.patches) == len(KEYS[layout])
    return patched_weights(m, KEYS[layout])


def run_comfy_lowvram(layout, dname, form, strength, files):
    from wadi_lorad.nodes import patching
    from wadi_lorad.nodes.lorad_file import read_lorad

    dtype = DTYPES[dname]
    m = patching.apply(read_lorad(str(files[(layout, form)])), comfy_model(layout, dtype), None, strength, 0)[0]
    want = canonical(layout, form, dtype, strength)
    got = {}
    m.load(torch.device("cpu"), lowvram_model_memory=1, force_patch_weights=False)
    try:
        for k in KEYS[layout]:
            mod = m.model.get_submodule(k)
            if strength != 0:
                assert getattr(mod, "weight_function", None), f"{k}: not patched through LowVramPatch"
                # what comfy.ops.cast_bias_weight does on every forward: patch a copy of the weight
                w = mod.weight.detach().clone()
                for f in mod.weight_function:
                    w = f(w)
            else:
                w = mod.weight
            x = probe(want[k])
            with torch.no_grad():
                y = mod(x)
            assert torch.equal(y, plain_forward(x, want[k])), f"lowvram forward {k}"
            got[k] = w.detach().clone()
    finally:
        m.unpatch_model(device_to=torch.device("cpu"))
    return got


RUNNERS = {"api": run_api, "inject": run_inject, "sample": run_sample, "comfy_lorad": run_comfy_lorad,
           "comfy_stock": run_comfy_stock, "comfy_lowvram": run_comfy_lowvram}


@pytest.mark.parametrize("dname", list(DTYPES))
@pytest.mark.parametrize("layout", LAYOUTS)
# The ComfyUI rows carry the `comfyui` mark: scripts/comfyui-tests.sh runs them against a real
# ComfyUI, and there (and in CI) a skipped one is a failure (tests/conftest.py).
@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.comfyui) if p.startswith("comfy") else p
                                  for p in PATHS])
def test_conformance(path, layout, dname, files, tmp_path, request):
    if path.startswith("comfy"):
        request.getfixturevalue("comfy")
    for form in FORMS:
        for s in STRENGTHS:
            if path == "cli":
                got = run_cli(layout, dname, form, s, files, tmp_path)
            else:
                got = RUNNERS[path](layout, dname, form, s, files)
            check(path, layout, dname, form, s, got)


def test_reference_is_independent_and_catches_an_unwrapped_dense_reader():
    """The scalar loop itself: the spec's worked example, and raw-theta scaling differs from it."""
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    ref = scalar_rotate(w, {"A": torch.tensor([[0.5], [1.0]]), "B": torch.tensor([[math.pi]])}, 0.5)
    assert ref[0] == pytest.approx([-0.70711, 2.12132], abs=1e-5) and ref[1] == pytest.approx([4.0, -3.0], abs=1e-6)
    dense = {"theta": torch.tensor([[4.0]])}
    w1 = torch.tensor([[1.0, 2.0]])
    raw = LayerSpec.from_parts(dense, "k").rotated(w1, 1.0)  # s = 1: wrap changes nothing
    assert max_error(raw, scalar_rotate(w1, dense, 1.0), torch.float32) < 1e-6
    t = 0.5 * 4.0  # what a reader that scales the raw theta would apply
    unwrapped = torch.tensor([[math.cos(t) - 2 * math.sin(t), math.sin(t) + 2 * math.cos(t)]])
    with pytest.raises(AssertionError, match="beyond dtype rounding"):
        max_error(unwrapped, scalar_rotate(w1, dense, 0.5), torch.float32)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if not RESULTS:
        return
    rows = "\n".join(f"  {k:32s} {v:.3g}" + (f"  ({100 * ULPS16[k]:.3g}% of values != reference rounded to fp16)"
                                              if k in ULPS16 else "") for k, v in sorted(RESULTS.items()))
    print(f"\nLoRaD conformance: max |weight - scalar reference| per path/layout/base dtype\n{rows}")
    out = os.environ.get("WADI_CONFORMANCE_JSON")
    if out:
        Path(out).write_text(json.dumps({
            "what": "max |weight - float64 scalar reference| over factored and dense files (|theta| > pi) at "
                    "strengths 0, 0.5, 1, -1, 2; every path is also bit-equal to lorad.layer_spec.LayerSpec",
            "max_abs_error": dict(sorted(RESULTS.items())),
            "fp16_share_differing_from_rounded_reference": dict(sorted(ULPS16.items())),
            "strengths": STRENGTHS, "forms": FORMS, "keys": KEYS}, indent=2) + "\n")
