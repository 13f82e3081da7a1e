"""``wadi eval`` generators on a random-init tiny folder, and the full pretrain pipeline end to end (slow)."""

from __future__ import annotations

import argparse

import pytest
import torch
from wadi_lorad.lorad.onestep import predict_x0
from wadi_lorad.trainer import evaluate, pretrain
from wadi_lorad.trainer.tinyworld import metrics, models


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = models.build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny", seed=1)
    return models.load_pipeline(folder)


def test_onestep_generator_is_the_x0_formula(pipe):
    prompts = metrics.fixed_eval_prompts(3)
    images = evaluate.onestep_generator(pipe)(prompts, 0)
    assert images.shape == (3, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    # Recompute by hand: eps at t=999 on the eval noise, x0 formula with the schedule's abar, VAE decode.
    noise = metrics.eval_noise(3, 0)
    with torch.no_grad():
        eps = pipe.unet(noise, torch.full((3,), 999), evaluate.encode_prompts(pipe, prompts)).sample
        x0 = predict_x0(noise, eps, float(pipe.scheduler.alphas_cumprod[999]))
    assert torch.allclose(images, evaluate.decode_latents(pipe, x0), atol=1e-5)


def test_onestep_generator_at_a_students_own_timestep(pipe):
    prompts = metrics.fixed_eval_prompts(2)
    noise = metrics.eval_noise(2, 0)
    with torch.no_grad():
        eps = pipe.unet(noise, torch.full((2,), 800), evaluate.encode_prompts(pipe, prompts)).sample
    for ab in (None, 0.03):  # the schedule's abar_800, or the file's own value
        images = evaluate.onestep_generator(pipe, timestep=800, alpha_bar=ab)(prompts, 0)
        want = predict_x0(noise, eps, float(pipe.scheduler.alphas_cumprod[800]) if ab is None else ab)
        assert torch.allclose(images, evaluate.decode_latents(pipe, want), atol=1e-5)


def test_multistep_generator_uses_the_shared_noise(pipe):
    gen = evaluate.multistep_generator(pipe, steps=2, guidance=3.0)
    a, b = gen(["a red circle", "a blue square"], 0), gen(["a red circle", "a blue square"], 0)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, gen(["a red circle", "a blue square"], 1))
    assert pipe.scheduler.config.clip_sample is False


def test_eval_modes_report_mean_and_spread(pipe):
    args = argparse.Namespace(seeds=[0, 1], classifier=None, steps=2, guidance=1.5, scheduler="ddim", onestep_cfg=False)
    prompts = metrics.fixed_eval_prompts(16)
    real = evaluate.run_mode("real", args, prompts, pipe)
    assert real["summary"]["alignment_mean"] > 0.9 and len(real["per_seed"]) == 2
    shuffled = evaluate.run_mode("shuffled", args, prompts, pipe)
    assert shuffled["summary"]["alignment_mean"] < 0.3
    with pytest.raises(ValueError, match="--mode"):
        evaluate.run_mode("bogus", args, prompts, pipe)


@pytest.mark.slow
def test_pretrain_end_to_end_writes_a_loadable_teacher(tmp_path):
    """VAE -> latent bank -> UNet + text encoder -> exported SD folder that diffusers loads and samples."""
    args = ["--output", str(tmp_path / "o"), "--export", str(tmp_path / "x"), "--threads", "1",
            "--vae_steps", "3", "--vae_batch", "4", "--unet_steps", "3", "--unet_batch", "4", "--unet_scenes", "64",
            "--clf_steps", "2", "--clf_batch", "4", "--checkpoint_every", "2", "--snapshot_every", "2"]  # fmt: skip
    pretrain.run(pretrain.load_config(None, args))
    teacher = models.load_pipeline(tmp_path / "x" / "teacher")
    assert teacher.vae.config.scaling_factor != 1.0
    from safetensors.torch import load_file

    snap = load_file(str(tmp_path / "o" / "unet" / "unet_ema.safetensors"))
    assert snap.keys() == teacher.unet.state_dict().keys()
    teacher.set_progress_bar_config(disable=True)
    out = teacher(["a red circle"], num_inference_steps=2, output_type="pt").images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    # Continue from the exported teacher: its weights are the starting point.
    more = args + ["--stage", "unet", "--output", str(tmp_path / "o2"), "--unet_init", str(tmp_path / "x" / "teacher"),
                   "--unet_steps", "1", "--force", "true"]  # fmt: skip
    pretrain.run(pretrain.load_config(None, more))
