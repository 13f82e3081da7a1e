"""The single-file checkpoint loads in a real ComfyUI as SD1.5 with CLIP and VAE, weights intact.

Runs when ``COMFYUI_DIR`` points to a ComfyUI checkout and ``COMFYUI_PYTHON`` (default: this
interpreter) can import it; skipped otherwise.  The UNet is the smallest SD1.5-detectable shape
(one level of 320 channels, context 768, no middle block) with the full CLIP-L and SD VAE
(~450 MB in fp16), all random-init and built here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny
from wadi_lorad.lorad.archs import load_config
from wadi_lorad.trainer.singlefile import comfyui_refusal, single_file_state

COMFY = os.environ.get("COMFYUI_DIR")
PY = os.environ.get("COMFYUI_PYTHON", sys.executable)
pytestmark = [pytest.mark.comfyui, pytest.mark.slow,
              pytest.mark.skipif(not COMFY or not (Path(COMFY) / "comfy" / "sd.py").is_file(),
                                 reason="set COMFYUI_DIR (and COMFYUI_PYTHON) to run against a real ComfyUI")]

LOADER = r"""
import sys, torch
sys.argv = ["x", "--cpu"]
sys.path.insert(0, sys.argv_dir if hasattr(sys, "argv_dir") else "")
import comfy.options
comfy.options.enable_args_parsing()
import comfy.sd
m, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(CKPT, output_vae=True, output_clip=True)
ref = torch.load(REF)
sd = m.model.diffusion_model.state_dict()
pairs = [("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
          "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"),
         ("input_blocks.1.0.in_layers.2.weight", "down_blocks.0.resnets.0.conv1.weight"),
         ("out.2.weight", "conv_out.weight"), ("time_embed.0.weight", "time_embedding.linear_1.weight")]
ok = all(torch.equal(sd[a].float(), ref[b].half().float()) for a, b in pairs) and len(sd) == len(ref)
cond = clip.encode_from_tokens(clip.tokenize("a red circle"))
img = vae.decode(torch.randn(1, 4, 8, 8))
print("RESULT", type(m.model.model_config).__name__, clip is not None, vae is not None, ok, tuple(cond.shape),
      tuple(img.shape))
"""


def test_single_file_checkpoint_loads_in_comfyui(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    base = build_tiny(tmp_path / "base", "sd")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(320,), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                                mid_block_type=None, cross_attention_dim=768, attention_head_dim=8)
    te_cfg = {k: v for k, v in load_config("sd15", "text_encoder").items() if not k.startswith("_")}
    shutil.rmtree(base / "text_encoder")
    CLIPTextModel(CLIPTextConfig(**te_cfg)).save_pretrained(base / "text_encoder")
    shutil.rmtree(base / "vae")
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512).save_pretrained(
        base / "vae")
    assert comfyui_refusal(unet.config) is None  # the trainer's rule agrees: this UNet ComfyUI detects (below)
    sd = {k: v.half() for k, v in single_file_state(unet, base, "sd15").items()}
    ckpt, ref = tmp_path / "ckpt.safetensors", tmp_path / "ref.pt"
    save_file(sd, str(ckpt))
    torch.save(unet.state_dict(), ref)
    script = f"CKPT = {str(ckpt)!r}\nREF = {str(ref)!r}\n" + LOADER.replace(
        'sys.path.insert(0, sys.argv_dir if hasattr(sys, "argv_dir") else "")', f"sys.path.insert(0, {COMFY!r})")
    r = subprocess.run([PY, "-c", script], cwd=COMFY, capture_output=True, text=True, timeout=600)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
    assert line, r.stderr[-3000:]
    assert line[0] == "RESULT SD15 True True True (1, 77, 768) (1, 64, 64, 3)"
