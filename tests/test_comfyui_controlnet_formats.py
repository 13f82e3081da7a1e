"""Which ControlNet files ComfyUI's Load ControlNet Model accepts (docs/comfyui.md names them; ComfyUI 0.3.64):
ldm keys (``control_model.*``) for any UNet layout, diffusers keys only for layouts ComfyUI knows by their exact
shapes (SD1.5 checked here, at full size); a diffusers-key ControlNet of another layout fails with a TypeError."""

from __future__ import annotations

import gc

import comfy_live
import pytest
import torch

pytestmark = [pytest.mark.comfyui]
_why = comfy_live.comfy_importable()
if _why:
    pytestmark.append(pytest.mark.skip(reason=_why))


@pytest.fixture(scope="module")
def tiny_controlnet():
    comfy_live.import_comfy()
    from diffusers import ControlNetModel

    torch.manual_seed(5)
    return {k: v.contiguous() for k, v in ControlNetModel.from_unet(comfy_live.diffusers_unet()).state_dict().items()}


def test_ldm_keys_load_for_any_layout(tiny_controlnet):
    import comfy.controlnet

    net = comfy.controlnet.load_controlnet_state_dict(comfy_live.controlnet_to_ldm(tiny_controlnet))
    assert type(net).__name__ == "ControlNet"


def test_diffusers_keys_of_an_unknown_layout_fail_with_a_type_error(tiny_controlnet):
    import comfy.controlnet

    with pytest.raises(TypeError, match="NoneType"):
        comfy.controlnet.load_controlnet_state_dict(dict(tiny_controlnet))


def test_diffusers_keys_of_the_sd15_layout_load():
    """A full-size SD1.5 ControlNet (diffusers' default config, 361M values, zeros in fp16: ~3 GB peak)."""
    comfy_live.import_comfy()
    import comfy.controlnet
    from diffusers import ControlNetModel

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ControlNetModel(cross_attention_dim=768).state_dict().items()}
    sd = {k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}
    assert "controlnet_cond_embedding.conv_in.weight" in sd and sum(v.numel() for v in sd.values()) > 3.6e8
    net = comfy.controlnet.load_controlnet_state_dict(sd)
    assert type(net).__name__ == "ControlNet"
    del net, sd
    gc.collect()
