"""The tiny SD1.5 family: component configs and the diffusers folder writer.

Same classes and folder layout as ``runwayml/stable-diffusion-v1-5`` (a
``StableDiffusionPipeline``: UNet2DConditionModel eps-prediction with cross-attention,
AutoencoderKL, CLIPTextModel, CLIPTokenizer, PNDM scheduler on SD's scaled-linear
1000-step DDPM schedule), only narrower and shallower:

* images 32x32 RGB; the VAE has 3 levels (x4 down-sampling) -> latents 4x8x8;
* the UNet keeps SD's pattern (cross-attention down blocks, a plain last level,
  a cross-attention mid block) over 8x8 / 4x4 / 2x2 feature maps.

Every size lives in the config functions below, so tests build random-init
folders from the same code that built the shipped teacher.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import domain
from .io import cast_safetensors_files
from .tokenizer import MODEL_MAX_LENGTH, vocab_size, write_tokenizer

IMAGE_SIZE = 32
LATENT_CHANNELS = 4

# SD1.5's scheduler/scheduler_config.json, value for value; diffusers adds its newer defaults.
# ``clip_sample`` is not a PNDM argument, but SD1.5's file carries it so that
# ``DDIMScheduler.from_config(pipe.scheduler.config)`` does NOT clip x0 to [-1, 1] (DDIM's
# default), which would wreck latents of unit std. It is written into the JSON after saving.
SD15_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "trained_betas": None,
    "clip_sample": False,
}


def text_encoder_config(**overrides: Any) -> dict[str, Any]:
    """CLIPTextConfig kwargs: 3 layers of width 128 over the domain vocabulary."""
    cfg = {
        "vocab_size": vocab_size(domain.caption_vocabulary()),
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "hidden_act": "quick_gelu",  # SD1.5's CLIP ViT-L/14 activation
        "projection_dim": 128,
        # Token ids the model uses to find the pooled (EOS) token; match our vocab.
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    cfg.update(overrides)
    return cfg


def unet_config(**overrides: Any) -> dict[str, Any]:
    """UNet2DConditionModel kwargs (SD1.5's block pattern, tiny widths)."""
    cfg: dict[str, Any] = {
        "sample_size": IMAGE_SIZE // 4,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "layers_per_block": 1,
        "block_out_channels": (64, 64, 128),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 128,
        "attention_head_dim": 8,  # SD1.5 spells the head COUNT this way
        "norm_num_groups": 32,
    }
    cfg.update(overrides)
    return cfg


def vae_config(**overrides: Any) -> dict[str, Any]:
    """AutoencoderKL kwargs: 3 levels (x4), 4 latent channels.

    ``scaling_factor`` is a placeholder until ``pretrain`` measures 1/std of the
    trained encoder's latents (SD's 0.18215 was measured the same way).
    """
    cfg: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        # Flat colours and sharp edges need few channels at full resolution; 16 there
        # keeps the VAE cheap to train.  4 groups, not 16: one channel per group would be an
        # instance norm that erases each image's absolute colours, which ARE the content here.
        "block_out_channels": (16, 32, 64),
        "layers_per_block": 1,
        "latent_channels": LATENT_CHANNELS,
        "norm_num_groups": 4,
        "sample_size": IMAGE_SIZE,
        "scaling_factor": 1.0,
    }
    cfg.update(overrides)
    return cfg


def make_unet(**overrides: Any) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(**overrides))


def make_vae(**overrides: Any) -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_config(**overrides))


def make_text_encoder(tokenizer: Any, **overrides: Any) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = text_encoder_config(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cfg.update(overrides)
    return CLIPTextModel(CLIPTextConfig(**cfg))


def make_scheduler(**overrides: Any) -> Any:
    from diffusers import PNDMScheduler

    cfg = {k: v for k, v in SD15_SCHEDULER.items() if not k.startswith("_") and k != "clip_sample"}
    cfg.update(overrides)
    return PNDMScheduler(**cfg)


def make_tokenizer(folder: Path) -> Any:
    """Write the domain tokenizer into ``folder`` and load it back."""
    from transformers import CLIPTokenizer

    write_tokenizer(folder, domain.caption_vocabulary())
    return CLIPTokenizer.from_pretrained(str(folder))


def make_pipeline(unet: Any, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any) -> Any:
    """Assemble a StableDiffusionPipeline without the safety checker (no such model here)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline_atomic(pipe: Any, folder: Path, overwrite: bool = False, dtype: torch.dtype | None = None) -> Path:
    """``pipe.save_pretrained`` into a temp sibling, then swap it in (never half-written).

    ``dtype`` (e.g. fp16) shrinks the weight files after saving; diffusers and
    transformers load them into fp32 models unless asked otherwise.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; pass overwrite=True (CLI: --force) to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        if dtype is not None:
            cast_safetensors_files(tmp, dtype)
        _drop_nulls_from_model_index(tmp / "model_index.json")
        _add_sd15_scheduler_keys(tmp / "scheduler" / "scheduler_config.json")
        # transformers 5 saves only tokenizer.json; SD1.5's layout (vocab.json + merges.txt) is what
        # every transformers version's CLIPTokenizer reads, so write that instead.
        shutil.rmtree(tmp / "tokenizer")
        write_tokenizer(tmp / "tokenizer", domain.caption_vocabulary())
        _make_readable(tmp)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _make_readable(folder: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; a model folder should be world-readable like any download."""
    os.chmod(folder, 0o755)
    for p in folder.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _add_sd15_scheduler_keys(path: Path) -> None:
    """Add SD1.5's keys that the scheduler class itself does not save (``clip_sample: false``)."""
    config = json.loads(path.read_text())
    for key, value in SD15_SCHEDULER.items():
        config.setdefault(key, value)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path)


def _drop_nulls_from_model_index(path: Path) -> None:
    """Keep ``safety_checker``/``feature_extractor`` as ``[null, null]`` as SD folders do.

    diffusers writes them that way already; we make sure the flag that stops the
    "you have disabled the safety checker" warning is present and drop the source path.
    """
    index = json.loads(path.read_text())
    index["requires_safety_checker"] = False
    index.pop("_name_or_path", None)  # where it was loaded from: a local path, meaningless elsewhere
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, path)


def build_tiny_sd(
    folder: Path,
    seed: int = 0,
    overwrite: bool = False,
    unet: dict[str, Any] | None = None,
    vae: dict[str, Any] | None = None,
    text_encoder: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a RANDOM-INIT tiny SD1.5 folder (for tests): same architecture as the teacher.

    ``unet`` / ``vae`` / ``text_encoder`` override config entries (e.g.
    ``unet={"block_out_channels": (32, 32, 64)}``).  Deterministic in ``seed``.
    """
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer = make_tokenizer(Path(tok_dir))
        torch.manual_seed(seed)
        pipe = make_pipeline(
            unet=make_unet(**(unet or {})),
            vae=make_vae(**(vae or {})),
            text_encoder=make_text_encoder(tokenizer, **(text_encoder or {})),
            tokenizer=tokenizer,
            scheduler=make_scheduler(),
        )
        return save_pipeline_atomic(pipe, folder, overwrite=overwrite, dtype=dtype)


def load_pipeline(folder: Path, dtype: torch.dtype = torch.float32) -> Any:
    """Load a tiny-world (or any SD1.5-layout) folder offline, in ``dtype``."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder}: no model_index.json; expected a diffusers StableDiffusionPipeline folder")
    kwargs: dict[str, Any] = {"local_files_only": True, "safety_checker": None, "feature_extractor": None}
    if dtype != torch.float32:  # fp32 is the default; the dtype keyword was renamed in diffusers 0.36
        kwargs["torch_dtype"] = dtype
    return StableDiffusionPipeline.from_pretrained(str(folder), **kwargs)
