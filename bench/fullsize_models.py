"""Full-size base models with random weights, and the adapter files for them, as
``bench/comfy_fullsize.py`` runs them in a live ComfyUI: the architectures (``RUNS``), single-file
checkpoints in the ldm layout ComfyUI detects, a paper-preset ``.lorad`` written by ``save_lorad``
and an equal-rank LoRA on the same layers."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import harness
import torch

harness.load_package()
sys.path.insert(0, str(harness.ROOT / "tests"))
import comfy_live  # noqa: E402  the live-server helpers the tests use (its SD VAE config)
from wadi_lorad.lorad import inject, keymap  # noqa: E402
from wadi_lorad.lorad import io as lorad_io  # noqa: E402
from wadi_lorad.lorad.archs import build_meta, load_config  # noqa: E402
from wadi_lorad.lorad.metadata import build_metadata  # noqa: E402
from wadi_lorad.lorad.onestep import scaled_linear_alphas_cumprod  # noqa: E402


@dataclass(frozen=True)
class ArchRun:
    arch: str  # lorad.archs id
    size: int  # image pixels (square)
    scale: float  # the latent format's scale factor (ComfyUI saves x0 / scale)
    # (component, checkpoint key prefix, ComfyUI tokenizer pad id, layers kept in the reference encoder)
    texts: tuple[tuple[str, str, int, int | None], ...]
    unet_dtype: str = "fp32"  # what ComfyUI holds the UNet in (--fp16-unet where fp32 would not fit in RAM)
    v_flag: bool = False  # SD2.1 768-v: ComfyUI reads v-prediction from this norm bias's spread
    pooled: bool = False  # SDXL: pooled text embeds + size ids


RUNS = {
    "sd15": ArchRun("sd15", 256, 0.18215, (("text_encoder", "cond_stage_model.transformer.", 49407, None),)),
    # SD2.1's checkpoint holds OpenCLIP-H with all 24 layers; ComfyUI and diffusers both use the output of
    # the 23rd with the final norm (diffusers ships 23 layers, lorad/archs/clip_h_sd2.json).
    "sd21": ArchRun("sd21", 256, 0.18215, (("text_encoder", "cond_stage_model.model.transformer.", 0, 23),),
                    v_flag=True),
    "sdxl": ArchRun("sdxl", 256, 0.13025, (("text_encoder", "conditioner.embedders.0.transformer.", 49407, None),
                                           ("text_encoder_2", "conditioner.embedders.1.model.transformer.", 0, None)),
                    unet_dtype="fp16", pooled=True),
}
V_FLAG_KEY = "up_blocks.3.attentions.2.transformer_blocks.0.norm1.bias"  # ldm output_blocks.11.1...norm1.bias


def text_model(arch: str, component: str, layers: int | None = None):
    import transformers

    cfg = load_config(arch, component)
    cls = getattr(transformers, cfg.pop("_class_name"))
    cfg.pop("architectures", None)
    if layers is not None:
        cfg["num_hidden_layers"] = layers
    return cls(transformers.CLIPTextConfig(**cfg))


def inner(te):
    """The CLIP text transformer (transformers 5's CLIPTextModel has no ``text_model`` level; WithProjection has)."""
    return getattr(te, "text_model", te)


def checkpoint_keys(te) -> dict[str, str]:
    """transformers key -> the name checkpoints store (``text_model.*``, ``text_projection.weight``)."""
    own = te.state_dict()
    flat = not hasattr(te, "text_model")
    return {k: ("text_model." + k if flat else k) for k in own if "position_ids" not in k}


def random_init_(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (norm weights around 1), so no adapter target or bias hides as a zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = 0.02 if p.dim() > 1 else 0.05
            val = torch.randn(p.shape, generator=g) * std
            if p.dim() == 1 and ("norm" in name and name.endswith("weight")):
                val += 1.0
            p.copy_(val.to(p.dtype))


def build_models(run: ArchRun, dtype: torch.dtype = torch.float16):
    """(unet, [text encoders as stored: SD2.1's with 24 layers], vae), random, in ``dtype``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built straight in fp16: no fp32 peak for SDXL's 2.6B
    try:
        cfg = {k: v for k, v in load_config(run.arch).items() if not k.startswith("_")}
        unet = UNet2DConditionModel(**cfg)
        texts = [text_model(run.arch, comp, 24 if keep == 23 else None) for comp, _, _, keep in run.texts]
        vae = comfy_live.sd_vae()
    finally:
        torch.set_default_dtype(previous)
    for i, m in enumerate([unet, *texts, vae]):
        random_init_(m, seed=100 + i)
    if run.v_flag:
        with torch.no_grad():
            b = unet.get_parameter(V_FLAG_KEY)
            b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(5)) * 0.2)
    assert isinstance(vae, AutoencoderKL)
    return unet.eval(), [t.eval() for t in texts], vae.eval()


def write_checkpoint(path: Path, run: ArchRun, unet, texts, vae) -> None:
    km = keymap.unet_keymap(run.arch)
    tensors = {"model.diffusion_model." + km.ldm(k): v.contiguous() for k, v in unet.state_dict().items()}
    for (_, prefix, _, _), te in zip(run.texts, texts):
        sd = te.state_dict()
        tensors.update({prefix + name: sd[k].contiguous() for k, name in checkpoint_keys(te).items()})
    if run.v_flag:  # SD2.x checkpoints carry OpenCLIP's text projection (ComfyUI's clip_h pools through it)
        g = torch.Generator().manual_seed(6)
        tensors["cond_stage_model.model.text_projection"] = (torch.randn(1024, 1024, generator=g) * 0.02).half()
    tensors.update({"first_stage_model." + k: v.to(torch.float16).contiguous() for k, v in vae.state_dict().items()})
    write_streaming(path, tensors)


def write_streaming(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file written tensor by tensor: ``save_file`` first makes a bytes copy of everything
    (another 7 GB for SDXL), which this 24 GB machine shared with training cannot spare."""
    names = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}
    header, offset = {}, 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for t in tensors.values():
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)


def adapter_shapes(arch: str, preset: str, rank: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """diffusers module name -> {A, B, weight} shapes of the preset at ``rank`` (meta device)."""
    model = build_meta(arch)
    inject.inject(model, "student", preset, rank=rank)
    out = {}
    for name, parts in inject.adapter_state(model, "student").items():
        w = model.get_submodule(name).weight  # the LoRaD layer's base weight
        out[name] = {"A": tuple(parts["A"].shape), "B": tuple(parts["B"].shape), "weight": tuple(w.shape)}
    return out


def one_step(run: ArchRun) -> dict:
    ab = float(scaled_linear_alphas_cumprod()[999])
    return {"timestep": 999, "alpha_bar_T": ab, "prediction_type": "v_prediction" if run.v_flag else "epsilon"}


def write_adapters(work: Path, run: ArchRun, preset: str, rank: int) -> dict:
    """The .lorad (save_lorad) and the equal-rank LoRA on the same layers; returns their value counts."""
    shapes = adapter_shapes(run.arch, preset, rank)
    g = torch.Generator().manual_seed(3)
    state = {n: {"A": torch.randn(s["A"], generator=g) * 0.02, "B": torch.randn(s["B"], generator=g) * 0.05}
             for n, s in shapes.items()}  # angles ~ N(0, 0.016 rad): non-zero everywhere
    layers = lorad_io.layers_from_adapter_state(run.arch, state)
    md = build_metadata(arch=run.arch, rank=rank, target_preset=preset, title=f"{run.arch} full-size random",
                        one_step=one_step(run), provenance={"seed": 3, "note": "random factors (benchmark)"})
    lorad_path = lorad_io.save_lorad(work / f"{run.arch}.lorad.safetensors", layers, md, force=True,
                                     dtype=torch.float16)
    lora = {}
    for name, s in shapes.items():
        key = keymap.to_file_key(run.arch, name)
        w = s["weight"]
        conv = len(w) == 4
        up = torch.randn((w[0], rank, 1, 1) if conv else (w[0], rank), generator=g) * 0.02
        down = torch.randn((rank, *w[1:]), generator=g) * 0.02
        lora[key + ".lora_up.weight"] = up.to(torch.float16)
        lora[key + ".lora_down.weight"] = down.to(torch.float16)
        lora[key + ".alpha"] = torch.tensor(float(rank), dtype=torch.float16)
    from safetensors.torch import save_file

    lora_path = work / f"{run.arch}_r{rank}.lora.safetensors"
    save_file(lora, str(lora_path))
    return {"lorad_values": sum(t.numel() for p in layers.values() for t in p.values()),
            "lora_values": sum(t.numel() for k, t in lora.items() if not k.endswith(".alpha")),
            "layers": len(layers), "lorad_mib": lorad_path.stat().st_size / 2**20,
            "lora_mib": lora_path.stat().st_size / 2**20}
