"""Real ComfyUI modules in this process (``COMFYUI_DIR``; skipped otherwise): lowvram == normal patching,
patch/unpatch round trip, stacking order with a LoRA, and our loader == ComfyUI's load_lora path."""

from __future__ import annotations

import os
from pathlib import Path

import comfy_live
import pytest
import torch

pytestmark = [pytest.mark.comfyui]
_why = comfy_live.comfy_importable()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    comfy_live.import_comfy()
    import comfy.sd
    import comfy_env

    comfy_env.comfy_for_tests()
    import wadi_lorad.nodes.pack  # noqa: F401  what ComfyUI's pack loading does: registers the adapter
    cache = Path(os.environ.get("WADI_COMFY_CACHE", tmp_path_factory.mktemp("wadi_comfy_inproc")))
    cache.mkdir(parents=True, exist_ok=True)
    unet, clip, vae = comfy_live.diffusers_unet(), comfy_live.clip_text(), comfy_live.sd_vae()
    ckpt = cache / "tiny_sd15.safetensors"
    if not ckpt.exists():
        comfy_live.build_checkpoint(ckpt, unet, clip, vae)
    layers = comfy_live.student_layers(unet, clip)
    path = cache / "inproc_student.lorad.safetensors"
    comfy_live.write_lorad(path, layers, unet, one_step=None)
    model, clip_p, _vae = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=False, output_clip=True)[:3]
    return {"model": model, "clip": clip_p, "path": path}


def forward(patcher, x, t, ctx):
    with torch.no_grad():
        return patcher.model.diffusion_model(x, t, context=ctx)


def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 16, 16, generator=g), torch.tensor([999.0]), torch.randn(1, 77, 768, generator=g)


def test_lowvram_equals_normal_patching(loaded):
    from wadi_lorad.nodes import patching
    from wadi_lorad.nodes.lorad_file import read_lorad

    info = read_lorad(str(loaded["path"]))
    m = patching.apply(info, loaded["model"], loaded["clip"], 0.9, 0.9)[0]
    x, t, ctx = inputs()
    base = forward(loaded["model"], x, t, ctx)

    m.patch_model(device_to=torch.device("cpu"))
    normal = forward(m, x, t, ctx)
    m.unpatch_model(device_to=torch.device("cpu"))
    assert torch.equal(forward(m, x, t, ctx), base)  # unpatch restores the base exactly

    m.load(torch.device("cpu"), lowvram_model_memory=1, force_patch_weights=False)
    lowvram_mods = [mod for mod in m.model.modules() if getattr(mod, "weight_function", None)]
    assert lowvram_mods, "no module went through LowVramPatch"
    low = forward(m, x, t, ctx)
    m.unpatch_model(device_to=torch.device("cpu"))
    assert torch.equal(low, normal), (low - normal).abs().max()
    assert not torch.equal(normal, base)


def test_stacking_order_with_a_lora_diff(loaded):
    """A LoRA diff added before the LoRaD is rotated by it (patches apply in add order)."""
    from wadi_lorad.lorad import functional
    from wadi_lorad.nodes import patching
    from wadi_lorad.nodes.lorad_file import read_lorad

    info = read_lorad(str(loaded["path"]))
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    diff = torch.randn(320, 320) * 0.01
    m = loaded["model"].clone()
    m.add_patches({key: ("diff", (diff,))}, 1.0)
    m2, _c, _, _ = patching.apply(info, m, loaded["clip"], 1.0, 1.0)
    w0 = loaded["model"].model_state_dict()[key].float().clone()
    m2.patch_model(device_to=torch.device("cpu"))
    got = m2.model_state_dict()[key].float().clone()
    m2.unpatch_model(device_to=torch.device("cpu"))
    parts = info.layers[key[: -len(".weight")]]
    want = functional.rotate(w0 + diff, functional.angles(parts["A"], parts["B"]))
    assert torch.equal(got, want.to(got.dtype))


def test_load_lorad_node_equals_comfy_load_lora(loaded):
    import comfy.sd
    import comfy.utils
    import folder_paths
    from wadi_lorad.nodes import patching
    from wadi_lorad.nodes.lorad_file import read_lorad

    folder_paths.add_model_folder_path("loras", str(loaded["path"].parent))  # the stock loader's folder
    info = read_lorad(str(loaded["path"]))
    ours, ours_clip, n_unet, n_te = patching.apply(info, loaded["model"], loaded["clip"], 0.6, 0.6)
    sd = comfy.utils.load_torch_file(str(loaded["path"]), safe_load=True)
    stock, stock_clip = comfy.sd.load_lora_for_models(loaded["model"], loaded["clip"], sd, 0.6, 0.6)
    assert set(ours.patches) == set(stock.patches) and len(ours.patches) == n_unet
    assert set(ours_clip.patcher.patches) == set(stock_clip.patcher.patches) and n_te == 1
    x, t, ctx = inputs()
    ours.patch_model(device_to=torch.device("cpu"))
    a = forward(ours, x, t, ctx)
    ours.unpatch_model(device_to=torch.device("cpu"))
    stock.patch_model(device_to=torch.device("cpu"))
    b = forward(stock, x, t, ctx)
    stock.unpatch_model(device_to=torch.device("cpu"))
    assert torch.equal(a, b)


def test_scalecrafter_patch_dilates_only_above_t(loaded):
    from wadi_lorad.nodes.highres import scalecrafter

    base = loaded["model"]
    m, factor, n = scalecrafter(base, 128, 128, 64, 700.0, 1)
    assert factor == 2.0 and n > 0
    x, _t, ctx = inputs()

    def unet(patcher, t):
        opts = {"wrappers": patcher.wrappers}
        with torch.no_grad():
            return patcher.model.diffusion_model(x, torch.tensor([t]), context=ctx, transformer_options=opts)

    ref_hi, ref_lo = unet(base, 999.0), unet(base, 500.0)
    m.patch_model(device_to=torch.device("cpu"))
    try:
        hi, lo = unet(m, 999.0), unet(m, 500.0)
    finally:
        m.unpatch_model(device_to=torch.device("cpu"))
    assert torch.equal(lo, ref_lo)  # below above_t: untouched
    assert not torch.allclose(hi, ref_hi, atol=1e-4)  # dilated
    assert torch.equal(unet(base, 999.0), ref_hi)  # the original model is not modified


def test_one_step_is_one_unet_call(loaded):
    """The wall-time claim in deterministic form: steps=N costs exactly N UNet forwards (cfg 1)."""
    import comfy.patcher_extension
    from wadi_lorad.nodes.sampler import wadi_sample

    m = loaded["model"].clone()
    calls = []

    def count(executor, *args, **kwargs):
        calls.append(args[1])  # the timesteps the UNet sees
        return executor(*args, **kwargs)

    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "count", count)
    clip = loaded["clip"]
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red fox"))
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    out = wadi_sample(m, cond, None, latent, 0, 1, 1.0, 1.0, None)
    assert out["samples"].shape == (1, 4, 8, 8) and len(calls) == 1
    assert calls[0].tolist() == [999.0]
    calls.clear()
    wadi_sample(m, cond, None, latent, 0, 3, 1.0, 1.0, None)
    assert [c.item() for c in calls] == [999.0, 666.0, 333.0]
    calls.clear()
    wadi_sample(m, cond, None, {"samples": torch.randn(1, 4, 8, 8)}, 0, 1, 1.0, 0.45, None)
    assert [c.item() for c in calls] == [pytest.approx(0.45 * 999, abs=1e-3)]  # exact, not ComfyUI's t=499


def test_relation_token_file_is_an_embedding_comfyui_loads(loaded, tmp_path):
    """``wadi relation`` writes what ComfyUI's ``embedding:name`` reads: its own loader returns our
    vector, and a prompt that names it carries that vector in place of word tokens."""
    import comfy.sd1_clip
    from wadi_lorad.trainer.textinv import save_embedding

    vec = torch.randn(1, 768, generator=torch.Generator().manual_seed(0))
    save_embedding(tmp_path / "left_of.safetensors", vec, {"wadi.placeholder": "<R>"})
    got = comfy.sd1_clip.load_embed("left_of", str(tmp_path), 768, "clip_l")
    assert got is not None and torch.equal(got.float(), vec)
    tok = comfy.sd1_clip.SDTokenizer(embedding_directory=str(tmp_path))
    tokens = [t for t, _w in tok.tokenize_with_weights("a red circle embedding:left_of a blue square")[0]]
    embedded = [t for t in tokens if isinstance(t, torch.Tensor)]
    assert len(embedded) == 1 and torch.equal(embedded[0].float(), vec[0])
