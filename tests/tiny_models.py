"""Tiny random-init diffusers folders for every backbone the trainer supports (tests only).

No downloads: each component is built from a small config and saved with
``save_pretrained``.  Kinds: ``sd`` (SD1.5-like, eps), ``sd-v`` (SD2.1-like,
v-prediction, Linear proj_in/out), ``sdxl`` (two text encoders, pooled embeds,
added time ids) and ``pixart`` (PixArt-alpha transformer with a learned-sigma
head and a T5 encoder).  The latent grid is 8x8 (pixels 16x16, VAE factor 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["a", "an", "red", "green", "blue", "yellow", "circle", "square", "triangle", "on", "left", "right",
         "top", "bottom", "small", "big", "the", "of", "in", "photo"]
CLIP_LEN = 16
T5_LEN = 12
_SCHED = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False,
    "steps_offset": 1,
}


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    # Merge every domain word into one token so prompts are short and words matter.
    for w in WORDS:
        cur = w[0]
        for ch in w[1:-1]:
            merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
        if len(w) > 1:
            merges.append((cur, w[-1] + "</w>"))
        vocab.setdefault(w + "</w>", len(vocab))
    seen, uniq = set(), []
    for m in merges:
        if m not in seen:
            seen.add(m)
            uniq.append(m)
    tok = CLIPTokenizer(vocab=vocab, merges=uniq)
    tok.model_max_length = CLIP_LEN
    return tok


def _clip_text(vocab_size: int, hidden: int, projection: int | None = None, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=CLIP_LEN, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        projection_dim=projection or hidden,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16,
    )


def _unet(seed: int, cross_dim: int, linear_proj: bool = False, sdxl: bool = False):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kw = {}
    if sdxl:
        kw = dict(addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=4, norm_num_groups=8, use_linear_projection=linear_proj,
        **kw,
    )


def _write(folder: Path, name: str, obj) -> None:
    obj.save_pretrained(folder / name)


def _model_index(folder: Path, cls: str, parts: dict[str, list[str]], extra: dict | None = None) -> None:
    idx = {"_class_name": cls, "_diffusers_version": "0.30.0", **parts, **(extra or {})}
    (folder / "model_index.json").write_text(json.dumps(idx, indent=2))


def _scheduler(folder: Path, **over) -> None:
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**_SCHED, **over}, indent=2))


def build_tiny(folder: str | Path, kind: str = "sd", seed: int = 0) -> Path:
    """Write a tiny random-init diffusers folder of ``kind`` to ``folder``; return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("sd", "sd-v"):
        tok = _clip_tokenizer()
        _write(folder, "tokenizer", tok)
        _write(folder, "text_encoder", _clip_text(len(tok), 16, seed=seed + 1))
        _write(folder, "unet", _unet(seed, 16, linear_proj=kind == "sd-v"))
        _write(folder, "vae", _vae(seed + 2))
        _scheduler(folder, prediction_type="v_prediction" if kind == "sd-v" else "epsilon")
        parts = {k: ["transformers", c] for k, c in (("tokenizer", "CLIPTokenizer"), ("text_encoder", "CLIPTextModel"))}
        parts.update(unet=["diffusers", "UNet2DConditionModel"], vae=["diffusers", "AutoencoderKL"],
                     scheduler=["diffusers", "DDPMScheduler"], safety_checker=[None, None],
                     feature_extractor=[None, None])
        _model_index(folder, "StableDiffusionPipeline", parts, {"requires_safety_checker": False})
    elif kind == "sdxl":
        tok = _clip_tokenizer()
        _write(folder, "tokenizer", tok)
        _write(folder, "tokenizer_2", tok)
        _write(folder, "text_encoder", _clip_text(len(tok), 8, seed=seed + 1))
        _write(folder, "text_encoder_2", _clip_text(len(tok), 8, projection=16, seed=seed + 3))
        _write(folder, "unet", _unet(seed, 16, linear_proj=True, sdxl=True))
        _write(folder, "vae", _vae(seed + 2))
        _scheduler(folder)
        parts = {
            "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", "DDPMScheduler"],
        }
        _model_index(folder, "StableDiffusionXLPipeline", parts, {"force_zeros_for_empty_prompt": True})
    elif kind == "pixart":
        from diffusers import PixArtTransformer2DModel
        from transformers import T5Config, T5EncoderModel, T5Tokenizer

        vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
        vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
        tok = T5Tokenizer(vocab=vocab, extra_ids=0)
        tok.model_max_length = T5_LEN
        _write(folder, "tokenizer", tok)
        torch.manual_seed(seed + 1)
        te = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                     decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
        _write(folder, "text_encoder", te)
        torch.manual_seed(seed)
        tr = PixArtTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=16, caption_channels=16, sample_size=8, patch_size=2, norm_num_groups=4,
        )
        _write(folder, "transformer", tr)
        _write(folder, "vae", _vae(seed + 2))
        _scheduler(folder, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
        parts = {"tokenizer": ["transformers", "T5Tokenizer"], "text_encoder": ["transformers", "T5EncoderModel"],
                 "transformer": ["diffusers", "PixArtTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
                 "scheduler": ["diffusers", "DDPMScheduler"]}
        _model_index(folder, "PixArtAlphaPipeline", parts)
    else:
        raise ValueError(f"unknown tiny kind {kind!r}")
    return folder
