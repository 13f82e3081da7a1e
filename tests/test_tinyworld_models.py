"""The tiny SD1.5 family: domain tokenizer, random-init folders, the shipped teacher."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from wadi_lorad.trainer.tinyworld import domain, models
from wadi_lorad.trainer.tinyworld import tokenizer as tinyworld_tokenizer
from wadi_lorad.trainer.tinyworld.metrics import DEFAULT_TEACHER


def sd15_alpha_bar(t: int) -> float:
    """SD1.5's abar_t written out independently: betas = linspace(sqrt(b0), sqrt(b1), 1000)**2."""
    b0, b1, n = 0.00085, 0.012, 1000
    prod = 1.0
    for i in range(t + 1):
        beta = (math.sqrt(b0) + (math.sqrt(b1) - math.sqrt(b0)) * i / (n - 1)) ** 2
        prod *= 1.0 - beta
    return prod


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    folder = tinyworld_tokenizer.write_tokenizer(tmp_path_factory.mktemp("tok"), domain.caption_vocabulary())
    return CLIPTokenizer.from_pretrained(str(folder))


def test_every_domain_word_is_one_token(tokenizer):
    for word in domain.caption_vocabulary():
        ids = tokenizer(word).input_ids
        assert len(ids) == 3, (word, tokenizer.convert_ids_to_tokens(ids))  # BOS, word, EOS
        assert tokenizer.convert_ids_to_tokens(ids[1]) == word + "</w>"


def test_tokenizer_round_trip_on_captions(tokenizer):
    captions = domain.sample_captions(300, seed=5)
    enc = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    assert tokenizer.model_max_length == 77  # SD1.5's prompt length
    for cap, ids in zip(captions, enc.input_ids):
        assert len(ids) == 77
        assert ids[0] == tokenizer.bos_token_id
        assert len(ids) - ids[::-1].index(tokenizer.bos_token_id) == 1  # one BOS
        words = cap.split()
        assert ids[1 : 1 + len(words)] == [tokenizer.convert_tokens_to_ids(w + "</w>") for w in words]
        assert tokenizer.decode(ids, skip_special_tokens=True) == cap


def test_unknown_words_fall_back_to_characters(tokenizer):
    ids = tokenizer("a zebra").input_ids
    toks = tokenizer.convert_ids_to_tokens(ids)
    assert toks[1] == "a</w>" and toks[-2].endswith("</w>") and len(toks) > 4
    assert tokenizer.unk_token_id not in ids[1:-1]


def test_merges_file_is_clip_format(tmp_path):
    folder = tinyworld_tokenizer.write_tokenizer(tmp_path, ["red", "green"])
    lines = (folder / "merges.txt").read_text().splitlines()
    assert lines[0].startswith("#version")
    vocab = json.loads((folder / "vocab.json").read_text())
    assert vocab["red</w>"] > vocab["z</w>"] and "<|endoftext|>" in vocab
    assert all(len(line.split(" ")) == 2 for line in lines[1:])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return models.build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny", seed=0, dtype=torch.float16)


def test_random_tiny_folder_loads_offline_and_generates(tiny_folder, caplog):
    from diffusers import StableDiffusionPipeline

    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    with caplog.at_level(logging.WARNING):
        pipe = StableDiffusionPipeline.from_pretrained(str(tiny_folder), local_files_only=True)
    assert not [r for r in caplog.records if "safety" in r.getMessage().lower() or "missing" in r.getMessage().lower()]
    # fp16 files load into fp32 modules by default.
    assert pipe.unet.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a red circle", "a blue square left of a green cross"], num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="pt")  # fmt: skip
    assert out.images.shape == (2, 3, 32, 32)
    assert torch.isfinite(out.images).all()


def test_build_is_deterministic_and_refuses_to_overwrite(tmp_path):
    from safetensors.torch import load_file

    a = models.build_tiny_sd(tmp_path / "a", seed=3)
    b = models.build_tiny_sd(tmp_path / "b", seed=3)
    wa = load_file(str(a / "unet" / "diffusion_pytorch_model.safetensors"))
    wb = load_file(str(b / "unet" / "diffusion_pytorch_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(FileExistsError, match="overwrite"):
        models.build_tiny_sd(tmp_path / "a", seed=3)
    models.build_tiny_sd(tmp_path / "a", seed=4, overwrite=True, unet={"block_out_channels": (32, 32, 64)})
    cfg = json.loads((tmp_path / "a" / "unet" / "config.json").read_text())
    assert cfg["block_out_channels"] == [32, 32, 64]


def test_scheduler_is_sd15(tiny_folder):
    from diffusers import DDIMScheduler, PNDMScheduler

    cfg = json.loads((tiny_folder / "scheduler" / "scheduler_config.json").read_text())
    for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "steps_offset", "skip_prk_steps"):
        assert cfg[k] == models.SD15_SCHEDULER[k]
    sched = PNDMScheduler.from_pretrained(str(tiny_folder / "scheduler"))
    assert abs(float(sched.alphas_cumprod[999]) - sd15_alpha_bar(999)) < 1e-6
    # As with SD1.5's own file, swapping in DDIM must not clip x0 to [-1, 1] (latents have unit std).
    assert cfg["clip_sample"] is False
    assert DDIMScheduler.from_config(sched.config).config.clip_sample is False


def test_shipped_teacher_loads_with_sd15_schedule():
    from diffusers import StableDiffusionPipeline

    assert (DEFAULT_TEACHER / "model_index.json").is_file(), "assets/tinyworld/teacher is part of the repo"
    pipe = StableDiffusionPipeline.from_pretrained(str(DEFAULT_TEACHER), local_files_only=True)
    ab = float(pipe.scheduler.alphas_cumprod[999])
    assert abs(sd15_alpha_bar(999) - 0.0046601) < 5e-8  # the independent formula gives SD's number
    assert abs(ab - sd15_alpha_bar(999)) < 1e-6
    assert pipe.scheduler.config.prediction_type == "epsilon"
    from diffusers import DDIMScheduler

    assert DDIMScheduler.from_config(pipe.scheduler.config).config.clip_sample is False
    assert pipe.vae.config.scaling_factor != 1.0  # measured, not the placeholder
    # SD1.5's tokenizer layout, readable by every transformers version's CLIPTokenizer.
    names = {p.name for p in (DEFAULT_TEACHER / "tokenizer").iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= names and "tokenizer.json" not in names
    assert "_name_or_path" not in json.loads((DEFAULT_TEACHER / "model_index.json").read_text())
    size = sum(p.stat().st_size for p in DEFAULT_TEACHER.rglob("*") if p.is_file())
    assert size < 16e6  # small enough to live in git


@pytest.mark.slow
def test_shipped_teacher_follows_text():
    """Multi-step CFG samples of the teacher depend on the prompt: 'red' vs 'blue' shows in the pixels."""
    pipe = models.load_pipeline(DEFAULT_TEACHER)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn((8, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    reds = pipe(["a large red circle in the center on a white background"] * 8, latents=noise,
                num_inference_steps=20, guidance_scale=3.0, output_type="np").images  # fmt: skip
    blues = pipe(["a large blue circle in the center on a white background"] * 8, latents=noise,
                 num_inference_steps=20, guidance_scale=3.0, output_type="np").images  # fmt: skip
    red_minus_blue = lambda im: float(np.mean(im[..., 0] - im[..., 2]))  # noqa: E731
    assert red_minus_blue(reds) > red_minus_blue(blues) + 0.05
