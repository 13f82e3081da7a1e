"""A malformed-file corpus through both ComfyUI loaders: Load LoRaD and the stock Load LoRA.

Every bad file is refused as a whole before any weight is touched: Load LoRaD raises naming
the file (and the key, where there is one); the stock loader path
(``comfy.sd.load_lora_for_models``, what LoraLoader calls) gets no patch from the file and
ComfyUI's log gets one error naming it.  The stock loader is ComfyUI's LoraLoaderModelOnly
node reading from ``models/loras``.  The good file applied afterwards gives the same
bits as before the corpus.  Real ComfyUI modules (``COMFYUI_DIR``); the model is a
ComfyUI ModelPatcher over two real SD1.5 weights (an attention Linear and a 1x1 Conv2d).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = [pytest.mark.comfyui]

K1 = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"
K2 = "diffusion_model.output_blocks.11.1.proj_out"
SHAPES = {K1: (320, 320), K2: (320, 320, 1, 1)}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import comfy_live

    comfy_live.require_comfy("these run against a real ComfyUI")
    import folder_paths
    import wadi_lorad.nodes.pack  # noqa: F401  registers the weight adapter, as loading the pack does

    root = tmp_path_factory.mktemp("corpus")
    folder_paths.add_model_folder_path("loras", str(root))  # where LoraLoader reads LoRA files
    return {"root": root, "good": write_good(root)}


def write_good(root):
    from wadi_lorad.lorad.io import build_metadata, save_lorad

    g = torch.Generator().manual_seed(0)
    layers = {k: {"A": torch.randn(s[0], 3, generator=g), "B": torch.randn(3, s[1] // 2 * (s[2] if len(s) > 2 else 1),
                                                                           generator=g)} for k, s in SHAPES.items()}
    return save_lorad(root / "good.lorad.safetensors", layers,
                      build_metadata(arch="sd15", rank=3, target_preset="custom", title="good"))


def model():
    import comfy.model_patcher
    import comfy.ops
    import comfy.supported_models

    g = torch.Generator().manual_seed(1)
    root = torch.nn.Module()
    for k, shape in SHAPES.items():
        parent = root
        *path, leaf = k.split(".")
        for p in path:
            if not hasattr(parent, p):
                parent.add_module(p, torch.nn.Module())
            parent = getattr(parent, p)
        ops = comfy.ops.disable_weight_init
        m = ops.Linear(320, 320) if len(shape) == 2 else ops.Conv2d(320, 320, 1)
        with torch.no_grad():
            m.weight.copy_(torch.randn(shape, generator=g) * 0.05)
            m.bias.zero_()
        parent.add_module(leaf, m)
    root.model_config = comfy.supported_models.SD15(dict(comfy.supported_models.SD15.unet_config))
    return comfy.model_patcher.ModelPatcher(root, torch.device("cpu"), torch.device("cpu"))


def outputs(patcher) -> dict:
    """The weights the model computes with, and one forward of each layer."""
    g = torch.Generator().manual_seed(2)
    patcher.patch_model(device_to=torch.device("cpu"))
    try:
        out = {}
        for k, shape in SHAPES.items():
            mod = patcher.model.get_submodule(k)
            x = torch.randn((2, 320) if len(shape) == 2 else (1, 320, 2, 2), generator=g)
            with torch.no_grad():
                out[k] = (mod.weight.detach().clone(), mod(x))
        return out
    finally:
        patcher.unpatch_model(device_to=torch.device("cpu"))


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in SHAPES)


def load_lorad_node(path, base):
    from wadi_lorad.nodes import patching
    from wadi_lorad.nodes.lorad_file import read_lorad

    return patching.apply(read_lorad(str(path)), base, None, 1.0, 1.0)[0]


def stock_loader(path, base):
    """ComfyUI's own LoraLoaderModelOnly node (a fresh one: the node caches the last file it read)."""
    import nodes

    return nodes.LoraLoaderModelOnly().load_lora_model_only(base, path.name, 1.0)[0]


# -- the corpus: (name, edit of the good tensors/metadata, the key the error must name) ----------------
def _nan(t, md):
    t[K1 + ".lorad_A"][0, 0] = float("nan")


def _inf_theta(t, md):
    del t[K2 + ".lorad_A"], t[K2 + ".lorad_B"]
    theta = torch.zeros(320, 160)
    theta[3, 4] = float("inf")
    t[K2 + ".lorad_theta"] = theta
    md["lorad.rank"] = "mixed"
    md["lorad.rank_pattern"] = json.dumps({K1: 3, K2: "dense"})


def _rows(t, md):
    t[K1 + ".lorad_A"] = t[K1 + ".lorad_A"][:319].clone()


def _pairs(t, md):
    t[K1 + ".lorad_B"] = t[K1 + ".lorad_B"][:, :159].clone()


def _rank(t, md):
    t[K1 + ".lorad_B"] = torch.cat([t[K1 + ".lorad_B"], t[K1 + ".lorad_B"][:1]])


def _a_without_b(t, md):
    del t[K2 + ".lorad_B"]


def _int(t, md):
    t[K1 + ".lorad_A"] = t[K1 + ".lorad_A"].round().to(torch.int32)


def _unknown(t, md):
    key = "diffusion_model.middle_block.1.proj_in"  # a real SD1.5 layer this model does not have
    t[key + ".lorad_A"], t[key + ".lorad_B"] = torch.zeros(320, 3), torch.zeros(3, 160)


def _foreign(t, md):
    kohya = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"  # a spelling ComfyUI's key map knows
    t[kohya + ".lorad_A"], t[kohya + ".lorad_B"] = t.pop(K1 + ".lorad_A"), t.pop(K1 + ".lorad_B")


def _future(t, md):
    md["lorad.format_version"] = "2.0"


def _other_arch(t, md):
    md["lorad.architecture"] = "sd21"  # same key names as SD1.5, another model
    md["modelspec.architecture"] = "stable-diffusion-v2-768-v/lorad"


def _lora_mixed_in(t, md):
    t[K1 + ".lora_up.weight"], t[K1 + ".lora_down.weight"] = torch.ones(320, 2), torch.ones(2, 320)


def _edited(t, md):
    t[K1 + ".lorad_A"] = t[K1 + ".lorad_A"] * 1.01  # the metadata hash is kept: it no longer matches


CORPUS = [
    ("nan_angle", _nan, K1), ("inf_theta", _inf_theta, K2), ("wrong_A_rows", _rows, K1),
    ("wrong_B_pairs", _pairs, K1), ("rank_mismatch", _rank, K1), ("A_without_B", _a_without_b, K2),
    ("int_dtype", _int, K1), ("unknown_layer", _unknown, "middle_block.1.proj_in"),
    ("foreign_spelling", _foreign, "lora_unet_input_blocks"), ("future_version", _future, "lorad.format_version"),
    ("other_arch", _other_arch, "sd21"), ("edited_tensors", _edited, "modelspec.hash_sha256"),
    ("lora_keys_mixed_in", _lora_mixed_in, ".lora_down.weight"),
]


def write_bad(root, good, name, edit):
    from safetensors import safe_open

    tensors = load_file(str(good))
    with safe_open(str(good), framework="pt") as f:
        md = dict(f.metadata())
    edit(tensors, md)
    if edit is not _edited:
        md.pop("modelspec.hash_sha256", None)
    path = root / f"{name}.lorad.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=md)
    return path


def test_corpus_is_refused_whole_by_both_loaders(env, caplog):
    from wadi_lorad.nodes.lorad_file import LoRaDReadError
    from wadi_lorad.nodes.resolve import LoRaDMatchError

    base = model()
    untouched = outputs(base)
    good_ours, good_stock = outputs(load_lorad_node(env["good"], base)), outputs(stock_loader(env["good"], base))
    assert same(good_ours, good_stock) and not same(good_ours, untouched)
    for name, edit, key in CORPUS:
        path = write_bad(env["root"], env["good"], name, edit)
        with pytest.raises((LoRaDReadError, LoRaDMatchError)) as e:
            load_lorad_node(path, base)
        assert path.name in str(e.value) and key in str(e.value), (name, str(e.value))
        caplog.clear()
        m = stock_loader(path, base)
        applied = [p for ps in m.patches.values() for p in ps if getattr(p[1], "name", "") != "lorad_refused"]
        assert not applied, f"{name}: the stock loader applied {len(applied)} patch(es)"
        assert same(outputs(m), untouched), name
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" and r.name == "wadi"]
        assert len(errors) == 1 and path.name in errors[0] and key in errors[0], (name, errors)
        # the next good file gives the bits it gave before the bad one, through either loader
        assert same(outputs(load_lorad_node(env["good"], base)), good_ours), name
        assert same(outputs(stock_loader(env["good"], base)), good_stock), name
    assert same(outputs(base), untouched)
