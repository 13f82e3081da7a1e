"""Key maps: diffusers module names <-> .lorad file keys, proven with diffusers' own ldm converter."""

from __future__ import annotations

import pytest
import torch
from wadi_lorad.lorad import keymap
from wadi_lorad.lorad.archs import build_meta
from wadi_lorad.lorad.presets import PRESETS, match_modules


@pytest.mark.parametrize("arch", ["sd15", "sd21", "sdxl"])
def test_ldm_rules_survive_diffusers_converter(arch):
    """Rename every UNet key with our rules, convert back with diffusers: every original key returns."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    model = build_meta(arch)
    sd = model.state_dict()
    km = keymap.unet_keymap(arch)
    ldm = {"model.diffusion_model." + km.ldm(k): v for k, v in sd.items()}
    assert len(ldm) == len(sd)  # injective
    back = convert_ldm_unet_checkpoint(ldm, dict(model.config))
    assert set(back) == set(sd)
    # Same tensor object, not only the same shape: each key came back to its own weight.
    assert all(back[k] is sd[k] for k in sd)
    assert all(km.diffusers(km.ldm(k)) == k for k in sd)


def test_ldm_rules_from_a_shrunk_config_survive_the_converter():
    """Indices come from the config: a 2-level, 1-resnet UNet has its own ldm numbering."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with torch.device("meta"):
        model = UNet2DConditionModel(
            block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
        )
    sd = model.state_dict()
    km = keymap.unet_keymap(dict(model.config))
    back = convert_ldm_unet_checkpoint({"model.diffusion_model." + km.ldm(k): v for k, v in sd.items()},
                                       dict(model.config))
    assert set(back) == set(sd) and all(back[k] is sd[k] for k in sd)
    # Not the SD1.5 table: there input_blocks.2 is a resnet, here it is the first downsampler.
    assert km.ldm("down_blocks.0.downsamplers.0.conv") == "input_blocks.2.0.op"
    assert keymap.unet_keymap("sd15").ldm("down_blocks.0.downsamplers.0.conv") == "input_blocks.3.0.op"


@pytest.mark.parametrize(
    "arch, name, key",
    [
        ("sd15", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
         "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"),
        ("sd15", "down_blocks.1.resnets.1.time_emb_proj", "diffusion_model.input_blocks.5.0.emb_layers.1"),
        ("sd15", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
         "diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj"),
        ("sd15", "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0",
         "diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_out.0"),
        ("sd15", "up_blocks.0.upsamplers.0.conv", "diffusion_model.output_blocks.2.1.conv"),
        ("sd15", "up_blocks.1.upsamplers.0.conv", "diffusion_model.output_blocks.5.2.conv"),
        ("sd21", "down_blocks.2.attentions.1.proj_in", "diffusion_model.input_blocks.8.1.proj_in"),
        ("sdxl", "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k",
         "diffusion_model.input_blocks.8.1.transformer_blocks.9.attn2.to_k"),
        ("sdxl", "add_embedding.linear_2", "diffusion_model.label_emb.0.2"),
        ("sdxl", "up_blocks.0.attentions.2.proj_out", "diffusion_model.output_blocks.2.1.proj_out"),
        ("pixart-alpha", "transformer_blocks.27.attn1.to_v", "transformer.transformer_blocks.27.attn1.to_v"),
    ],
)
def test_known_spellings(arch, name, key):
    assert keymap.to_file_key(arch, name) == key
    assert keymap.to_module_name(arch, key) == ("transformer" if arch.startswith("pixart") else "unet", name)


@pytest.mark.parametrize("arch", ["sd15", "sd21", "sd21-base", "sdxl", "pixart-alpha"])
@pytest.mark.parametrize("preset", ["paper-student", "all-linear"])
def test_every_target_layer_round_trips_to_a_unique_key(arch, preset):
    model = build_meta(arch)
    fam = "dit" if arch.startswith("pixart") else "unet"
    names = [n for n, _ in match_modules(model, PRESETS[preset][fam])]
    keys = [keymap.to_file_key(arch, n) for n in names]
    assert len(set(keys)) == len(names) > 100
    assert [keymap.to_module_name(arch, k) for k in keys] == [(keymap.get_arch(arch).denoiser, n) for n in names]
    # ComfyUI's generic spelling: the model key is the file key + ".weight" (UNet) or a fused slice (PixArt).
    sd = model.state_dict()
    for n, k in zip(names, keys):
        target, offset = keymap.comfy_target(arch, k)
        if fam == "unet":
            assert target == k + ".weight" and offset is None
        else:
            assert target.startswith("diffusion_model.") and (offset is None or offset[2] == sd[n + ".weight"].shape[0])


@pytest.mark.parametrize("arch, component, clip", [("sd15", "text_encoder", "clip_l"), ("sd21", "text_encoder", "clip_h"),
                                                   ("sdxl", "text_encoder", "clip_l"),
                                                   ("sdxl", "text_encoder_2", "clip_g")])
def test_text_encoder_keys(arch, component, clip):
    model = build_meta(arch, component)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    keys = [keymap.to_file_key(arch, n, component) for n in names]
    assert len(set(keys)) == len(names)
    assert keys[0] == f"text_encoders.{clip}.transformer.text_model.encoder.layers.0.self_attn.k_proj"
    # Module names come back in the wrapped spelling (transformers 4, ComfyUI), whatever this model uses.
    assert all(keymap.to_module_name(arch, k) == (component, keymap._text_canonical(n)) for k, n in zip(keys, names))
    assert all(keymap.text_name_in(model, keymap.to_module_name(arch, k)[1]) == n for k, n in zip(keys, names))
    assert keymap.comfy_target(arch, keys[0])[0] == f"{clip}.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight"


def test_pixart_native_fusion_round_trip():
    """Build the native (fused qkv / kv) state from diffusers keys with our rules, then split it back."""
    model = build_meta("pixart-alpha")
    sd = model.state_dict()
    hidden = 1152
    native: dict[str, list] = {}
    for k, v in sd.items():
        nk, off = keymap.pixart_native(k, hidden)
        native.setdefault(nk, []).append((off, k, v.shape))
    for nk, parts in native.items():
        if parts[0][0] is None:
            assert len(parts) == 1, nk  # unfused keys are 1:1
            continue
        # Fused: slices tile the rows exactly, in order, with equal widths.
        parts.sort(key=lambda p: p[0][1])
        starts = [p[0][1] for p in parts]
        assert starts == [i * hidden for i in range(len(parts))], nk
        assert all(p[2][0] == hidden and p[2][1:] == parts[0][2][1:] for p in parts), nk
        assert len(parts) == (3 if ".attn.qkv." in nk else 2), nk
    assert sum(len(p) for p in native.values()) == len(sd)
    fused = [nk for nk in native if native[nk][0][0] is not None]
    assert len(fused) == 28 * 2 * 2  # qkv and kv_linear, weight and bias, per block
    assert keymap.pixart_native("adaln_single.linear.weight") == ("t_block.1.weight", None)
    assert keymap.pixart_native("proj_out.weight") == ("final_layer.linear.weight", None)


@pytest.mark.parametrize(
    "arch, bad",
    [
        ("sd15", "down_blocks.9.resnets.0.conv1"),
        ("sd15", "down_blocks.0.resnets.0.bogus"),
        ("sd15", "input_blocks.1.1.proj_in"),  # already ldm: not a diffusers name
        ("pixart-alpha", "transformer_blocks.28.attn1.to_q"),
        ("pixart-alpha", "blocks.0.attn.qkv"),
    ],
)
def test_unknown_names_are_errors(arch, bad):
    with pytest.raises(keymap.KeyMapError, match="not|unknown"):
        keymap.to_file_key(arch, bad)


def test_unknown_file_keys_are_errors():
    with pytest.raises(keymap.KeyMapError, match="no known prefix"):
        keymap.to_module_name("sd15", "unet.down_blocks.0.attentions.0.proj_in")
    with pytest.raises(keymap.KeyMapError):
        keymap.to_module_name("sd15", "diffusion_model.input_blocks.99.1.proj_in")
    with pytest.raises(keymap.KeyMapError, match="text_encoder_2"):
        keymap.file_prefix("sd15", "text_encoder_2")


def test_comfy_weight_shapes_for_fused_pixart_and_unet():
    """Shapes a ComfyUI loader would validate against: fused qkv rows are sliced to one projection."""
    model = build_meta("pixart-alpha")
    native: dict[str, list[int]] = {}
    for k, v in model.state_dict().items():  # native shapes, fused by our rules
        nk, off = keymap.pixart_native(k)
        shape = native.setdefault("diffusion_model." + nk, [0, *v.shape[1:]])
        shape[0] += v.shape[0] if off else 0
        if off is None:
            native["diffusion_model." + nk] = list(v.shape)
    keys = ["transformer.transformer_blocks.3.attn1.to_v", "transformer.transformer_blocks.3.attn2.to_k",
            "transformer.proj_out", "transformer.transformer_blocks.99.attn1.to_q"]
    shapes = keymap.comfy_weight_shapes("pixart-alpha", keys, {k: tuple(v) for k, v in native.items()})
    assert native["diffusion_model.blocks.3.attn.qkv.weight"] == [3456, 1152]
    assert shapes == {keys[0]: (1152, 1152), keys[1]: (1152, 1152), keys[2]: (32, 1152)}
    unet = build_meta("sd15")
    ldm = {"diffusion_model." + keymap.unet_keymap("sd15").ldm(k): tuple(v.shape) for k, v in unet.state_dict().items()}
    key = "diffusion_model.input_blocks.4.1.proj_in"
    assert keymap.comfy_weight_shapes("sd15", [key], ldm) == {key: (640, 640, 1, 1)}
